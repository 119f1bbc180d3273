//! Tencent: up to `window` calls in flight in one lane. Tencent shows a
//! conversation by MsgTimeStamp then MsgSeq and deduplicates on the triple
//! (see `Provider::orders_by_time`), so arrival order does not change
//! what users see; but the API updates the conversation, so the lane's
//! last open job (its newest message) is sent only once every earlier one
//! is done. Checkpoints stay per job and exact; the first call that does
//! not succeed stops new sends, the window drains, and the lane stops.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::decide::{Admit, Call, Stop, WindowPlan};
use super::lane::{self, Lane};
use crate::store::OpenJob;

/// A lane's calls in flight.
struct Window {
    /// Jobs sent in this run that are in flight or done: a re-read skips them.
    launched: HashSet<i64>,
    /// Calls run as tasks of their own, each paced, marked and sent while
    /// the others are; dropping the set (the lane cut short) aborts them.
    flight: JoinSet<Call>,
}

/// What waiting for the window decided.
enum Room {
    /// At most the asked number of calls are in flight.
    Yes,
    /// A call was rate-limited: its job is open again, read the lane anew.
    Reread,
    /// A call stopped the lane.
    Stop(Stop),
}

/// Runs a lane with up to `window` calls in flight.
pub(crate) async fn run(lane: &Arc<Lane>, window: usize) -> Stop {
    let mut w = Window {
        launched: HashSet::new(),
        flight: JoinSet::new(),
    };
    let limit = lane.ctx.cfg.prefetch.max(8 * window as i64);
    let stop = loop {
        if lane.stopping() {
            break Stop::Release;
        }
        let jobs = match lane.read(limit).await {
            Ok(jobs) => jobs,
            Err(stop) => break stop,
        };
        let plan = WindowPlan::new(jobs.len(), limit, window);
        if let Some(stop) = w.send_read(lane, jobs, plan).await {
            break stop;
        }
    };
    w.drain(stop).await
}

impl Window {
    /// Sends what it may of one read; None: read again.
    async fn send_read(&mut self, lane: &Arc<Lane>, jobs: Vec<OpenJob>, plan: WindowPlan) -> Option<Stop> {
        let fresh: Vec<(usize, OpenJob)> = jobs
            .into_iter()
            .enumerate()
            .filter(|(_, j)| !self.launched.contains(&j.id))
            .collect();
        if fresh.is_empty() && self.flight.is_empty() {
            return Some(Stop::Release);
        }
        for (i, job) in fresh {
            // Live work arrived: read again, so it goes first.
            if lane.news() {
                return None;
            }
            let Some(room) = plan.room(i, job.needs_reconcile()) else {
                break;
            };
            match self.wait_for_room(room).await {
                Room::Yes => {}
                Room::Reread => return None,
                Room::Stop(stop) => return Some(stop),
            }
            match lane::admit(lane, &job).await {
                Admit::Send => self.launch(lane, job),
                Admit::Skip => {}
                Admit::Stop(stop) => return Some(stop),
            }
        }
        // Nothing more to send from this read: let one call finish first.
        let room = self.flight.len().saturating_sub(1);
        match self.wait_for_room(room).await {
            Room::Stop(stop) => Some(stop),
            Room::Yes | Room::Reread => None,
        }
    }

    /// Starts one call: paced, marked, sent in its slot, and its outcome
    /// checkpointed, acceptance too. The marks of a window's calls
    /// overlap, so a hot lane is not held to one commit round trip per call.
    fn launch(&mut self, lane: &Arc<Lane>, job: OpenJob) {
        self.launched.insert(job.id);
        let tracker = lane.ctx.tracker.clone();
        let lane = lane.clone();
        let call = async move {
            let m = match lane::pace_and_mark(&lane, job).await {
                Ok(m) => m,
                Err(stop) => return Call::Stop(stop),
            };
            let step = match lane::send_one(&lane, &m).await {
                Ok(step) => step,
                Err(stop) => return Call::Stop(stop),
            };
            match lane::settle(&lane, &m, step, None).await {
                Call::Accepted { job, ids } => match lane.done(job, ids).await {
                    Ok(()) => {
                        lane.ctx.rates.record_cycle(m.cycle());
                        Call::Next
                    }
                    Err(stop) => Call::Stop(stop),
                },
                other => other,
            }
        };
        self.flight.spawn(tracker.track_future(call));
    }

    /// Waits until at most `room` calls are in flight.
    async fn wait_for_room(&mut self, room: usize) -> Room {
        while self.flight.len() > room {
            match self.flight.join_next().await.map(joined) {
                Some(Call::Next) | Some(Call::Accepted { .. }) | None => {}
                Some(Call::Again(id)) => {
                    self.launched.remove(&id);
                    return Room::Reread;
                }
                Some(Call::Stop(stop)) => return Room::Stop(stop),
            }
        }
        Room::Yes
    }

    /// Lets the calls still in flight finish (each records its own
    /// outcome); a lost lease among them wins over a plain stop.
    async fn drain(mut self, stop: Stop) -> Stop {
        let mut stop = stop;
        while let Some(c) = self.flight.join_next().await.map(joined) {
            if let Call::Stop(other) = c {
                stop = stop.or_lost(other);
            }
        }
        stop
    }
}

/// A call task that panicked (a bug) loses the lane: its job stays in
/// flight and the next holder settles it.
fn joined(r: Result<Call, tokio::task::JoinError>) -> Call {
    r.unwrap_or_else(|e| {
        tracing::error!(error = %e, "a call task failed");
        Call::Stop(Stop::Lost)
    })
}
