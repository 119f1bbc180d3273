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
