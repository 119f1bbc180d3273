//! The leases this process holds: renewed a few times per lease period,
//! and the lane of a lease found lost told to stop. Also the drain at
//! shutdown, when lanes finish the call they are in while their leases are
//! still renewed.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::claim::LaneTasks;
use super::clock::{Clock, Deadline};
use super::hook::{HookPoint, Hooks};
use crate::store::{self, ClaimedLane, Store};

/// One lease held, as the heartbeat sees it.
struct Held {
    token: i64,
    cancel: CancellationToken,
    deadline: Arc<Deadline>,
    /// The lane's [`ClaimedLane::news`].
    news: Arc<AtomicBool>,
}

/// The leases this process holds, by lane.
#[derive(Default)]
pub(crate) struct Leases(Mutex<HashMap<i64, Held>>);

impl Leases {
    /// Holds a claimed lane: its lane task stops on `cancel`.
    pub(crate) fn hold(&self, lane: &ClaimedLane, cancel: CancellationToken, deadline: Arc<Deadline>) {
        let held = Held {
            token: lane.lease.token,
            cancel,
            deadline,
            news: lane.news.clone(),
        };
        self.0.lock().insert(lane.lease.lane_id, held);
    }

    /// Forgets a lane whose task ended.
    pub(crate) fn forget(&self, lane_id: i64) {
        self.0.lock().remove(&lane_id);
    }

    /// Forgets every lane (their tasks were cut short).
    pub(crate) fn clear(&self) {
        self.0.lock().clear();
    }

    /// Lanes held now.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether no lane is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }

    /// Tells the lanes held that live work arrived for them (a notice's
    /// payload: lane ids, comma-separated).
    pub(crate) fn news(&self, payload: &str) {
        let held = self.0.lock();
        for id in payload.split(',').filter_map(|s| s.parse::<i64>().ok()) {
            if let Some(h) = held.get(&id) {
                h.news.store(true, Ordering::Release);
            }
        }
    }

    /// Lane ids and lease tokens, for a renewal.
    fn tokens(&self) -> Vec<(i64, i64)> {
        self.0.lock().iter().map(|(id, x)| (*id, x.token)).collect()
    }

    /// Applies a renewal of `asked` begun at `started_ms`: the leases
    /// `kept` move on, the others' lanes stop (a lane that is finishing
    /// set its deadline so; it is left alone).
    fn renewed(&self, asked: &[(i64, i64)], kept: &HashSet<i64>, started_ms: i64, lease: Duration) {
        let h = self.0.lock();
        for (id, token) in asked {
            let Some(x) = h.get(id).filter(|x| x.token == *token) else {
                continue;
            };
            if kept.contains(id) {
                x.deadline.renew(started_ms, lease);
            } else if !x.deadline.is_finishing() {
                tracing::warn!(lane = id, "lease lost; stopping that lane");
                metrics::counter!(crate::ops::metrics::LEASES_LOST).increment(1);
                x.cancel.cancel();
            }
        }
    }
}

/// Renews every lease this process holds.
pub(crate) struct Heartbeat {
    pub store: Store,
    pub worker: Uuid,
    pub leases: Arc<Leases>,
    pub lease: Duration,
    pub hooks: Arc<Hooks>,
    pub clock: Clock,
}

impl Heartbeat {
    /// Renews a few times per lease period until `done`; `drain` (the
    /// lanes told to stop) brings one renewal forward.
    pub(crate) async fn run(self, drain: CancellationToken, done: CancellationToken) {
        let every = self.lease / 3;
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = self.wait(every, &drain) => {}
            }
            tokio::select! {
                _ = done.cancelled() => return,
                _ = self.beat() => {}
            }
        }
    }

    async fn wait(&self, every: Duration, drain: &CancellationToken) {
        // Once draining, `drain` stays cancelled: renew on the clock only,
        // or this loop would renew back to back all the grace.
        if drain.is_cancelled() {
            tokio::time::sleep(every).await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = drain.cancelled() => {}
            }
        }
    }

    async fn beat(&self) {
        self.hooks.at(HookPoint::BeforeRenew).await;
        let asked = self.leases.tokens();
        let started = self.clock.now_ms();
        match self.store.renew_leases(self.worker, &asked, self.lease).await {
            Ok(kept) => {
                let kept: HashSet<i64> = kept.into_iter().collect();
                self.leases.renewed(&asked, &kept, started, self.lease);
            }
            Err(e) => {
                let _ = store::is_transient(&e); // notes a failover
                tracing::warn!(error = %e, "cannot renew leases; lanes stop sending before their leases run out")
            }
        }
    }
}

/// The drain: lanes, told to stop through `lanes_stop`, finish the call
/// they are in and checkpoint it, for up to `grace`; what is left is cut
/// short.
pub(crate) async fn drain(
    tasks: &mut LaneTasks,
    leases: &Leases,
    lanes_stop: &CancellationToken,
    grace: Duration,
) {
    let active = tasks.len();
    if active > 0 {
        tracing::info!(
            lanes = active,
            grace_secs = grace.as_secs(),
            "stopping: letting in-flight calls finish"
        );
    }
    lanes_stop.cancel();
    if tokio::time::timeout(grace, tasks.join_all(leases)).await.is_err() {
        // An aborted call may still land at the provider. Its lane is
        // not released: it stays leased until its lease runs out, and
        // the lease outlives the call's timeout (the fence, on both
        // clocks), so nobody reconciles it before it can have landed.
        tracing::warn!(
            lanes = tasks.len(),
            "grace period over: cutting calls short; their lanes stay leased until the lease \
             runs out, then are reconciled"
        );
        tasks.abort_all().await;
        leases.clear();
    }
}
