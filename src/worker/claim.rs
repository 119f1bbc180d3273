//! Claiming lanes: how many slots are free (live lanes first past the cap),
//! the claim itself, and what wakes the claim loop: a lane task ending,
//! work falling due, the `LISTEN` for live work, or the sweep for lanes
//! nothing would wake.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::db::WORKER_RETRY;
use super::heartbeat::Leases;
use super::Worker;
use crate::store::{self, Store};

/// The lane tasks of one run, each also tracked by the run's [`TaskTracker`].
pub(crate) struct LaneTasks {
    set: JoinSet<i64>,
    lanes: HashMap<Id, i64>,
    tracker: TaskTracker,
}

impl LaneTasks {
    /// No lane tasks yet.
    pub(crate) fn new(tracker: TaskTracker) -> LaneTasks {
        LaneTasks {
            set: JoinSet::new(),
            lanes: HashMap::new(),
            tracker,
        }
    }

    /// Runs lane `lane_id` as a task.
    pub(crate) fn spawn(&mut self, lane_id: i64, lane: impl Future<Output = ()> + Send + 'static) {
        let task = self.tracker.track_future(async move {
            lane.await;
            lane_id
        });
        let handle = self.set.spawn(task);
        self.lanes.insert(handle.id(), lane_id);
    }

    /// Lane tasks running.
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether no lane task runs.
    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The lanes running.
    fn running(&self) -> Vec<i64> {
        self.lanes.values().copied().collect()
    }

    /// Takes in every lane task that has ended, without waiting.
    pub(crate) fn reap(&mut self, leases: &Leases) {
        while let Some(done) = self.set.try_join_next_with_id() {
            self.finished(done, leases);
        }
    }

    /// Waits for every lane task to end.
    pub(crate) async fn join_all(&mut self, leases: &Leases) {
        while let Some(done) = self.set.join_next_with_id().await {
            self.finished(done, leases);
        }
    }

    /// Cuts every lane task short and waits until they are gone.
    pub(crate) async fn abort_all(&mut self) {
        self.set.abort_all();
        while self.set.join_next().await.is_some() {}
        self.lanes.clear();
    }

    /// Drops a finished lane task's lease from the heartbeat. A lane task
    /// that panicked is logged and its lease left to expire, so another
    /// worker reconciles whatever it had in flight.
    fn finished(&mut self, done: Result<(Id, i64), JoinError>, leases: &Leases) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        let Some(lane_id) = self.lanes.remove(&id) else {
            return;
        };
        if let Err(e) = &done {
            if e.is_panic() {
                tracing::error!(
                    lane = lane_id,
                    "lane task panicked; its lease will expire and the lane resume elsewhere"
                );
            }
        }
        leases.forget(lane_id);
    }
}

/// How many lanes to claim with `running` of them running under a cap of
/// `cap`, and the least priority they need. Past the cap, as many slots
/// again for lanes holding live work: backfill lanes run until empty and
/// must not make it wait, and live lanes are short (a message or two each).
fn slots(cap: usize, running: usize, concurrency: usize) -> (usize, Option<i32>) {
    if running < cap {
        (cap - running, None)
    } else {
        let extra = concurrency.max(4);
        ((cap + extra).saturating_sub(running), Some(store::LIVE_PRIORITY))
    }
}

impl Worker {
    /// Claims lanes while there is room and work, until shutdown or, with
    /// `exit_when_idle`, until no lane of a live target has work left;
    /// returns whether it stopped for that.
    pub(super) async fn claim_loop(
        &self,
        shutdown: &CancellationToken,
        exit_when_idle: bool,
        run: &mut super::Running,
    ) -> bool {
        let mut failures = 0u32;
        loop {
            run.tasks.reap(&self.leases);
            if shutdown.is_cancelled() {
                return false;
            }
            let cap = self.rates.lane_cap(&self.cfg, &self.halts);
            let (free, min_priority) = slots(cap, run.tasks.len(), self.cfg.concurrency);
            let live = self.halts.live(&self.targets);
            let mut claimed = 0;
            if free > 0 && !live.is_empty() {
                match self.claim(free, min_priority, &live, run).await {
                    Ok(n) => (failures, claimed) = (0, n),
                    // Never exit on a claim error: after a failover or a
                    // server restart the next claim may well work.
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        claim_failed(&e, WORKER_RETRY.delay(failures), shutdown).await;
                        continue;
                    }
                }
            }
            if claimed > 0 && run.tasks.len() < cap {
                continue;
            }
            if claimed == 0 && run.tasks.is_empty() && exit_when_idle && self.nothing_left(&live).await {
                return true;
            }
            self.wait_for_work(cap, &live, run, shutdown).await;
        }
    }

    /// Claims up to `free` lanes and starts them; returns how many.
    async fn claim(
        &self,
        free: usize,
        min_priority: Option<i32>,
        live: &[String],
        run: &mut super::Running,
    ) -> Result<usize, sqlx::Error> {
        let running = run.tasks.running();
        // The local deadline counts from before the claim: the database's
        // lease may have started any time after this.
        let claim_started = self.clock.now_ms();
        let lanes = self
            .store
            .claim_lanes(self.id, free as i64, self.lease(), live, &running, min_priority)
            .await?;
        let claimed = lanes.len();
        for lane in lanes {
            self.start_lane(lane, claim_started, run);
        }
        // After the lanes are in `leases`, so a concurrent refresh does not
        // see this worker idle.
        if claimed > 0 {
            self.rates.activate().await;
        }
        Ok(claimed)
    }

    /// Whether no lane of the `live` targets has work left (waking, before
    /// saying so, any lane with work that is asleep).
    async fn nothing_left(&self, live: &[String]) -> bool {
        let open = if live.is_empty() {
            Ok(false)
        } else {
            self.store.has_open_lanes(live).await
        };
        let open = match open {
            Ok(false) => self.store.wake_stranded_lanes().await.map(|w| {
                log_woken(&w);
                !w.is_empty()
            }),
            other => other,
        };
        match open {
            Ok(open) => !open,
            Err(e) => {
                if !store::is_transient(&e) {
                    tracing::error!(error = %e, "cannot read the backlog; retrying");
                }
                false
            }
        }
    }

    /// Sleeps until a lane frees a slot, work may be due, live work
    /// arrives, or shutdown.
    async fn wait_for_work(
        &self,
        cap: usize,
        live: &[String],
        run: &mut super::Running,
        shutdown: &CancellationToken,
    ) {
        let poll = Duration::from_millis(self.cfg.poll_interval_ms.max(10));
        let wait = if run.tasks.len() >= cap {
            Duration::from_secs(3600)
        } else {
            match self.store.next_claim_in_ms(live).await {
                Ok(Some(ms)) => Duration::from_millis(ms.clamp(5, poll.as_millis() as i64) as u64),
                _ => poll,
            }
        };
        let tasks = &mut run.tasks;
        tokio::select! {
            Some(done) = tasks.set.join_next_with_id(), if !tasks.set.is_empty() => {
                tasks.finished(done, &self.leases);
            }
            _ = tokio::time::sleep(wait) => {}
            _ = run.live_wake.notified() => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Logs a failed claim and waits `delay` (or until shutdown).
async fn claim_failed(e: &sqlx::Error, delay: Duration, shutdown: &CancellationToken) {
    if store::is_transient(e) {
        tracing::warn!(error = %e, retry_in = ?delay, "database unavailable; waiting");
    } else {
        tracing::error!(error = %e, retry_in = ?delay, "cannot claim lanes; retrying");
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Most woken lanes logged one by one per sweep; the rest are counted.
const WOKEN_LOGGED: usize = 50;

/// Warns about each lane found with work and nothing to wake it: that is
/// a bug (or a loader killed between its commit and its wake-up).
pub(crate) fn log_woken(woken: &[store::StrandedLane]) {
    for l in woken.iter().take(WOKEN_LOGGED) {
        tracing::warn!(
            lane = l.lane_id,
            target_name = %l.target,
            was_blocked_at = ?l.blocked_job,
            was_paused_by = ?l.paused_batch,
            "woke a lane that had work and nothing to wake it"
        );
    }
    if woken.len() > WOKEN_LOGGED {
        tracing::warn!(
            more = woken.len() - WOKEN_LOGGED,
            "woke more lanes that had work and nothing to wake them"
        );
    }
}

/// Every `every`, wakes lanes that have work and nothing to wake them. The
/// races that stranded lanes are closed; this is the net under whatever is
/// not yet known, and it says so loudly.
pub(crate) async fn sweep(store: Store, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match store.wake_stranded_lanes().await {
            Ok(woken) => log_woken(&woken),
            Err(e) => tracing::warn!(error = %e, "cannot look for stranded lanes"),
        }
    }
}

/// `LISTEN`s for live work (the ingest API's `NOTIFY` after its commit)
/// and wakes the claim loop at once instead of at its next poll. After a
/// lost connection it wakes the loop too: a notice may have been missed.
pub(crate) async fn listen_live(
    store: Store,
    leases: Arc<Leases>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut retry = 0u32;
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect_with(store.pool()).await?;
            l.listen(store::LIVE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let l = tokio::select! {
            l = listener => l,
            _ = stop.cancelled() => return,
        };
        retry = retry.saturating_add(1);
        let delay = match l {
            Ok(mut l) => {
                if !relay_notices(&mut l, &leases, &wake, &stop).await {
                    return;
                }
                retry = 1;
                WORKER_RETRY.delay(retry)
            }
            Err(e) => {
                let delay = WORKER_RETRY.delay(retry);
                tracing::warn!(error = %e, retry_in = ?delay, "cannot listen for live work; polling meanwhile");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Hands every notice to the lanes it names and wakes the claim loop;
/// false at `stop`, true once the connection is lost.
async fn relay_notices(
    l: &mut sqlx::postgres::PgListener,
    leases: &Leases,
    wake: &Notify,
    stop: &CancellationToken,
) -> bool {
    loop {
        wake.notify_one();
        tokio::select! {
            n = l.recv() => match n {
                Ok(n) => leases.news(n.payload()),
                Err(e) => {
                    tracing::warn!(error = %e, "live work notices lost; listening again");
                    return true;
                }
            },
            _ = stop.cancelled() => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_the_cap_then_as_many_again_for_live_lanes() {
        assert_eq!(slots(10, 4, 8), (6, None));
        assert_eq!(slots(10, 10, 8), (8, Some(store::LIVE_PRIORITY)));
        assert_eq!(slots(10, 15, 2), (0, Some(store::LIVE_PRIORITY)));
        assert_eq!(slots(10, 12, 2), (2, Some(store::LIVE_PRIORITY)));
    }
}
