//! Test hooks: points in a lane's life where a test may hold the worker, to
//! drive a race with an operator command deterministically. Production code
//! never installs one.

use std::sync::{Arc, OnceLock};

use crate::store::Park;

/// A point in a lane's life where a test may hold the lane (see
/// [`Worker::set_hook`](super::Worker::set_hook)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// The lane stopped and is about to give its lease back, parked this way.
    BeforeRelease { lane: i64, park: Park },
    /// The lane is about to mark this job in flight (its lease checked locally).
    BeforeMark { lane: i64, job: i64 },
    /// The provider accepted this job; its done checkpoint is next.
    BeforeCheckpoint { lane: i64, job: i64 },
    /// The heartbeat is about to renew this process's leases.
    BeforeRenew,
}

/// What a test runs at a [`HookPoint`]; the lane waits for it.
pub type Hook = Arc<dyn Fn(HookPoint) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// The hook a test installed, if any.
#[derive(Default)]
pub(crate) struct Hooks(OnceLock<Hook>);

impl Hooks {
    /// Installs the hook (once).
    pub(crate) fn set(&self, hook: Hook) {
        let _ = self.0.set(hook);
    }

    /// Runs the hook at `point`, if one is installed, and waits for it.
    pub(crate) async fn at(&self, point: HookPoint) {
        if let Some(h) = self.0.get() {
            h(point).await;
        }
    }
}
