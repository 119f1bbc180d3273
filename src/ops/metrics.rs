//! Prometheus metrics: names in one place, and the recorder.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Provider calls by target, api, code and outcome.
pub const CALLS: &str = "chatferry_calls_total";
/// Provider call latency in seconds, by target and api.
pub const CALL_SECONDS: &str = "chatferry_call_duration_seconds";
/// Lanes this process is running.
pub const LANES_ACTIVE: &str = "chatferry_lanes_active";
/// Jobs by status (all batches), refreshed periodically.
pub const BACKLOG: &str = "chatferry_backlog_jobs";
/// Milliseconds spent waiting for a rate-limit token, by target.
pub const RATE_WAIT_MS: &str = "chatferry_rate_limit_wait_milliseconds_total";
/// The share of a target's rate this process uses now (calls/s).
pub const RATE_SHARE: &str = "chatferry_rate_share_per_second";
/// Reconciles of in-doubt calls, by target and result.
pub const RECONCILES: &str = "chatferry_reconciles_total";
/// QueryPeerMsg pages read by reconciles, by target.
pub const RECONCILE_READS: &str = "chatferry_reconcile_reads_total";
/// Leases this process lost.
pub const LEASES_LOST: &str = "chatferry_leases_lost_total";

/// Jobs in doubt (in flight with no live lease, or for over a minute);
/// the same figure from every replica.
pub const IN_DOUBT: &str = "chatferry_jobs_in_doubt";
/// Lanes stopped by `on_permanent_error = "block"`.
pub const LANES_BLOCKED: &str = "chatferry_lanes_blocked";
/// Workers whose heartbeat is recent, and those silent past `SILENT_SECS`.
pub const WORKERS_LIVE: &str = "chatferry_workers_live";
pub const WORKERS_SILENT: &str = "chatferry_workers_silent";
/// 1 while this process has halted a target (until restart), else 0.
pub const TARGET_HALTED: &str = "chatferry_target_halted";

/// Live (cut-over) messages stored by the ingest API, by target.
pub const LIVE_RECEIVED: &str = "chatferry_live_received_total";
/// Live calls received and delivered, per live batch (from the database).
pub const LIVE_JOBS: &str = "chatferry_live_jobs";
/// Live delivery latency (commit to done checkpoint, last 5 minutes), by
/// batch and quantile (0.5, 0.99).
pub const LIVE_LATENCY: &str = "chatferry_live_delivery_latency_seconds";
/// Age of the oldest live call not delivered yet, by batch.
pub const LIVE_OLDEST: &str = "chatferry_live_oldest_undelivered_seconds";

/// A worker heartbeats every 2 s; five missed beats make it silent.
const SILENT_SECS: f64 = 10.0;
/// How often the alerting gauges are read from the database.
const GAUGES_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(CALL_SECONDS.into()),
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            )
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // A second install (tests) keeps the first recorder; the handle
        // still renders this one's (empty) registry, which is harmless.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Records one provider call.
pub fn call(target: &str, api: &'static str, code: Option<i64>, outcome: &'static str, took: Duration) {
    let code = code.map(|c| c.to_string()).unwrap_or_else(|| "none".into());
    metrics::counter!(CALLS, "target" => target.to_string(), "api" => api, "code" => code, "outcome" => outcome)
        .increment(1);
    metrics::histogram!(CALL_SECONDS, "target" => target.to_string(), "api" => api)
        .record(took.as_secs_f64());
}

/// Keeps the alerting gauges current until `stop` (every replica reports
/// the database-wide figures; the alert rules take the max). The counters
/// are exported at 0 at once; the returned loop refreshes the gauges.
pub fn gauges(
    store: crate::store::Store,
    worker: std::sync::Arc<crate::worker::Worker>,
    stop: tokio_util::sync::CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    zero_series(&worker);
    async move {
        loop {
            // A refresh waits on the database; shutdown does not.
            tokio::select! {
                _ = refresh_gauges(&store, &worker) => {}
                _ = stop.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(GAUGES_EVERY) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

async fn refresh_gauges(store: &crate::store::Store, worker: &crate::worker::Worker) {
    metrics::gauge!(LANES_ACTIVE).set(worker.lanes_held() as f64);
    let halted = worker.halted_targets();
    for (name, _) in worker.rate_shares().1 {
        let on = halted.iter().any(|(t, _)| *t == name);
        metrics::gauge!(TARGET_HALTED, "target" => name).set(if on { 1.0 } else { 0.0 });
    }
    if let Ok(crate::store::dashboard::AlertCounts { in_doubt, blocked }) = store.alert_counts().await {
        metrics::gauge!(IN_DOUBT).set(in_doubt as f64);
        metrics::gauge!(LANES_BLOCKED).set(blocked as f64);
    }
    if let Ok(live) = store.live_progress().await {
        for l in live {
            let b = || l.batch.clone();
            metrics::gauge!(LIVE_JOBS, "batch" => b(), "state" => "received").set(l.received as f64);
            metrics::gauge!(LIVE_JOBS, "batch" => b(), "state" => "delivered").set(l.delivered as f64);
            for (q, v) in [("0.5", l.latency_p50_secs), ("0.99", l.latency_p99_secs)] {
                metrics::gauge!(LIVE_LATENCY, "batch" => b(), "quantile" => q).set(v.unwrap_or(0.0));
            }
            metrics::gauge!(LIVE_OLDEST, "batch" => b()).set(l.oldest_undelivered_secs.unwrap_or(0.0));
        }
    }
    if let Ok(rows) = store.worker_rows().await {
        let silent = rows.iter().filter(|w| w.silent_secs > SILENT_SECS).count();
        metrics::gauge!(WORKERS_LIVE).set((rows.len() - silent) as f64);
        metrics::gauge!(WORKERS_SILENT).set(silent as f64);
    }
}

/// Exports every counter at 0 from the start: a series that appears only
/// on its first event makes `rate()` and `increase()` miss that event, and
/// alert rules and dashboards cannot tell "none yet" from "not exported".
fn zero_series(worker: &crate::worker::Worker) {
    metrics::counter!(LEASES_LOST).increment(0);
    for (name, _) in worker.rate_shares().1 {
        metrics::counter!(LIVE_RECEIVED, "target" => name.clone()).increment(0);
        metrics::counter!(RATE_WAIT_MS, "target" => name.clone()).increment(0);
        for result in ["applied", "not_applied", "unknown", "halt"] {
            metrics::counter!(RECONCILES, "target" => name.clone(), "result" => result).increment(0);
        }
    }
}
