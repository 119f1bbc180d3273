//! The provider targets as the worker sees them: each one's provider, send
//! bucket and settle time, and which of them are halted.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::providers::Provider;
use crate::ratelimit;
use crate::store::Store;

/// One provider target as the worker sees it.
pub struct Target {
    pub provider: Arc<dyn Provider>,
    /// The send API's bucket; the provider holds its other APIs' buckets.
    pub bucket: ratelimit::Bucket,
    /// How long an in-doubt job settles before its reconcile, ms: the
    /// configured time, raised by a probe's measured visibility delay.
    settle_ms: AtomicU64,
    /// How long after its in-flight mark a job may still be sent: one
    /// request timeout where lanes mark the next job while the one before
    /// it is in flight (`in_order.rs`, providers whose reconcile settles),
    /// else zero. The settle counts from the mark, so it is this longer.
    mark_lead: Duration,
}

/// The targets by name.
pub(crate) type Targets = HashMap<String, Arc<Target>>;

impl Target {
    /// A target sending at `rate` calls/s whose in-doubt jobs settle
    /// `settle` after the call that left them in doubt, which may start up
    /// to `request_timeout` after its mark (see `mark_lead`).
    pub(crate) fn new(
        provider: Arc<dyn Provider>,
        rate: f64,
        settle: Duration,
        request_timeout: Duration,
    ) -> Target {
        let mark_lead = if provider.reconcile_settles() {
            request_timeout
        } else {
            Duration::ZERO
        };
        Target {
            provider,
            bucket: ratelimit::Bucket::new(rate),
            settle_ms: AtomicU64::new(settle.as_millis() as u64),
            mark_lead,
        }
    }

    /// Sets this process's share of every bucket of the target.
    pub(crate) fn set_share(&self, live: u32, factor: f64) {
        self.bucket.set_share(live, factor);
        for b in self.provider.buckets() {
            b.set_share(live, factor);
        }
    }

    /// How long an in-doubt job settles before its reconcile.
    pub(crate) fn settle(&self) -> Duration {
        Duration::from_millis(self.settle_ms.load(Ordering::Acquire)) + self.mark_lead
    }

    /// The settle time an in-doubt job waits before its reconcile, for a
    /// provider that does not deduplicate (None for one that does).
    pub(crate) fn settle_before_reconcile(&self) -> Option<Duration> {
        self.provider.reconcile_settles().then(|| self.settle())
    }
}

/// Hands each target what `chatferry probe` measured for it. A measured
/// visibility delay can only lengthen the settle time.
pub(crate) async fn apply_probe_findings(store: &Store, targets: &Targets, request_timeout_ms: u64) {
    for (name, t) in targets {
        let found = match store.probe_findings(name).await {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(target_name = name, error = %e, "cannot read probe findings; using defaults");
                continue;
            }
        };
        let Ok(f) = serde_json::from_value::<crate::probe::Findings>(found) else {
            tracing::warn!(
                target_name = name,
                "stored probe findings are unreadable; run `chatferry probe` again"
            );
            continue;
        };
        t.provider.apply_findings(&f);
        if let Some(vis) = f.visibility_ms {
            let floor = request_timeout_ms + 3 * vis;
            t.settle_ms.fetch_max(floor, Ordering::AcqRel);
        }
        tracing::info!(target_name = name, findings = %f.summary(), "using probe findings");
    }
}

/// Targets stopped on an auth or config error, with the reason: no more
/// calls to them until restart.
#[derive(Default)]
pub(crate) struct Halts(Mutex<HashMap<String, String>>);

impl Halts {
    /// Halts `target` (the first reason stays).
    pub(crate) fn halt(&self, target: &str, reason: &str) {
        let mut h = self.0.lock();
        if !h.contains_key(target) {
            tracing::error!(
                target_name = target,
                reason,
                "target halted: no more calls to it until restart"
            );
            h.insert(target.to_string(), reason.to_string());
        }
    }

    /// Whether `target` is halted.
    pub(crate) fn is_halted(&self, target: &str) -> bool {
        self.0.lock().contains_key(target)
    }

    /// The halted targets, with why.
    pub(crate) fn list(&self) -> Vec<(String, String)> {
        let h = self.0.lock();
        h.iter().map(|(t, r)| (t.clone(), r.clone())).collect()
    }

    /// The names of the targets not halted.
    pub(crate) fn live(&self, targets: &Targets) -> Vec<String> {
        let h = self.0.lock();
        targets.keys().filter(|t| !h.contains_key(*t)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{tencent_target, zim_target};
    use crate::providers::{http, tencent::TencentClient, zim::ZimClient};

    /// A ZIM lane marks its next job while the one before it is in flight,
    /// and sends it up to one request timeout later: reconciling an
    /// in-doubt job must wait that much past the settle, or a call still
    /// on its way could be read as "not applied" and sent twice.
    #[test]
    fn the_settle_covers_a_job_marked_ahead_of_its_call() {
        let http = http::client(Duration::from_secs(1)).unwrap();
        let (settle, timeout) = (Duration::from_secs(60), Duration::from_secs(5));
        let zim = ZimClient::new("zim", &zim_target(""), http.clone(), Duration::from_secs(120)).unwrap();
        let zim = Target::new(Arc::new(zim), 10.0, settle, timeout);
        assert_eq!(zim.settle(), Duration::from_secs(65));
        let tim = TencentClient::new("tim", &tencent_target(""), http).unwrap();
        let tim = Target::new(Arc::new(tim), 10.0, settle, timeout);
        assert_eq!(tim.settle(), settle, "Tencent marks no job ahead of its call");
    }
}
