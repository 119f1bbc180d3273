//! ZIM, and any provider that places messages by arrival: a lane sends one
//! call at a time. An accepted job's checkpoint is committed together with
//! the next job's in-flight mark when the next job may go at once, so a
//! lane waits for one commit per message instead of two.
//!
//! Where the provider's reconcile reads what it holds (ZIM), the lane's
//! writes also overlap its calls: while job k is in flight, the next job's
//! mark is committed (with k−1's checkpoint, when k−1 was accepted), so
//! k+1 leaves the moment k is accepted and k's checkpoint commits while
//! k+1 is in flight: no commit of the lane's own between two calls, nor a
//! read (the next page is read while the last job of a full one is in
//! flight). ZEGO's import order holds: k+1 leaves only once k is accepted.
//! If k is not accepted, k+1's mark is taken back in the transaction that
//! records k's outcome. A crash meanwhile leaves k and k+1 in doubt;
//! reconciling finds what landed, in order. A provider that deduplicates
//! instead resends whatever is in doubt, which would repeat k after k+1:
//! there the lane keeps one job in doubt at most.

use std::collections::VecDeque;

use super::decide::{Call, Step, Stop};
use super::lane::{self, Lane, Marked};
use crate::providers::Accepted;
use crate::store::OpenJob;

/// The next job, marked in flight before its call.
struct Ahead {
    marked: Marked,
    /// Its predecessor's acceptance, when that checkpoint is still to
    /// write: it rides with the next mark while this job is in flight.
    owed: Option<(i64, Accepted)>,
}

/// Where a lane goes after one call.
enum Then {
    /// On to the next job (marked already if the lane holds one ahead).
    Go,
    /// Read the lane again (a rate-limit answer: the job is due now).
    Reread,
    Stop(Stop),
}

/// The lane's open jobs as read, a page at a time.
struct Page {
    jobs: VecDeque<OpenJob>,
    /// The read filled its limit: the lane may hold more.
    full: bool,
}

impl Page {
    /// Reads the lane's next `limit` open jobs, but those in `handled`
    /// (still open, as their writes have not committed yet).
    async fn read(lane: &Lane, limit: i64, handled: &[i64]) -> Result<Page, Stop> {
        let jobs = lane.read(limit).await?;
        let full = jobs.len() as i64 >= limit;
        let jobs = jobs.into_iter().filter(|j| !handled.contains(&j.id)).collect();
        Ok(Page { jobs, full })
    }

    /// Reads the next page ahead if this one ran out but was full.
    async fn read_on(&mut self, lane: &Lane, handled: &[i64]) -> Result<(), Stop> {
        if self.jobs.is_empty() && self.full {
            *self = Page::read(lane, lane.ctx.cfg.prefetch, handled).await?;
        }
        Ok(())
    }
}

/// Runs a lane one call at a time until it is empty, must wait, or stops.
pub(crate) async fn run(lane: &Lane) -> Stop {
    let mut ahead: Option<Ahead> = None;
    loop {
        if lane.stopping() {
            return Stop::Release;
        }
        let mut page = match Page::read(lane, lane.ctx.cfg.prefetch, &[]).await {
            Ok(page) if page.jobs.is_empty() => return Stop::Release,
            Ok(page) => page,
            Err(stop) => return stop,
        };
        if let Some(stop) = send_page(lane, &mut page, &mut ahead).await {
            return stop;
        }
    }
}

/// Sends the lane's open jobs in order, page after page; None: read again.
async fn send_page(lane: &Lane, page: &mut Page, ahead: &mut Option<Ahead>) -> Option<Stop> {
    while let Some(job) = page.jobs.pop_front() {
        // Live work arrived: read again, so the lane is paced as live
        // (ZIM keeps its send-time order).
        if ahead.is_none() && lane.news() {
            return None;
        }
        let (m, owed) = match ahead.take() {
            Some(a) if a.marked.job.id == job.id => (a.marked, a.owed),
            // Marked but not next after all (cannot happen: the lane is
            // ours); it stays in doubt and is reconciled.
            Some(_) => return Some(Stop::Release),
            None => match lane::admit_and_mark(lane, job).await {
                Ok(Some(m)) => (m, None),
                Ok(None) => continue,
                Err(stop) => return Some(stop),
            },
        };
        match call(lane, m, owed, page, ahead).await {
            Then::Go => {}
            Then::Reread => return None,
            Then::Stop(stop) => return Some(stop),
        }
    }
    None
}

/// Sends `m` while the writes that ride along commit (see
/// [`marks_ahead`]), then settles `m`'s outcome; a next job marked for the
/// lane to send is left in `ahead`.
async fn call(
    lane: &Lane,
    m: Marked,
    owed: Option<(i64, Accepted)>,
    page: &mut Page,
    ahead: &mut Option<Ahead>,
) -> Then {
    let (step, premarked) = tokio::join!(lane::send_one(lane, &m), marks_ahead(lane, &m, owed, page));
    // Either way `m` and a premarked job stay in flight, settled by the
    // next holder as after a crash (a premarked job was never sent); but
    // an acceptance already in hand is still checkpointed (lease-checked),
    // so the next holder need not reconcile a job that is known done.
    let (step, premarked) = match (step, premarked) {
        (Ok(Step::Checkpoint(ids)), Err(stop)) => {
            let _ = lane.done(m.job.id, ids).await;
            return Then::Stop(stop);
        }
        (_, Err(stop)) | (Err(stop), _) => return Then::Stop(stop),
        (Ok(step), Ok(premarked)) => (step, premarked),
    };
    match (step, premarked) {
        (Step::Checkpoint(ids), Some(next)) if !lane.stopping() => {
            lane.ctx.rates.record_cycle(m.cycle());
            let owed = Some((m.job.id, ids));
            *ahead = Some(Ahead { marked: next, owed });
            Then::Go
        }
        (Step::Checkpoint(ids), None) => {
            // Nothing marked ahead: the checkpoint takes the next job's
            // mark along if it may go now (one commit per message).
            let next = page.jobs.front().filter(|n| lane::may_premark(lane, n)).cloned();
            let marked = match lane.accepted(m.job.id, ids, next).await {
                Ok(marked) => marked,
                Err(stop) => return Then::Stop(stop),
            };
            lane.ctx.rates.record_cycle(m.cycle());
            *ahead = marked.map(|marked| Ahead { marked, owed: None });
            Then::Go
        }
        (step, premarked) => match lane::settle(lane, &m, step, premarked.map(|n| n.job.id)).await {
            Call::Accepted { .. } | Call::Next => Then::Go,
            Call::Again(_) => Then::Reread,
            Call::Stop(stop) => Then::Stop(stop),
        },
    }
}

/// What rides along while `m` is in flight, where the provider's
/// reconcile reads what it holds: the next page if this one ran out, the
/// predecessor's checkpoint (`owed`), and the next job's mark when it may
/// go at once; the next job, if marked. Elsewhere only `owed` (never set
/// there).
async fn marks_ahead(
    lane: &Lane,
    m: &Marked,
    owed: Option<(i64, Accepted)>,
    page: &mut Page,
) -> Result<Option<Marked>, Stop> {
    if !lane.ctx.target.provider.reconcile_settles() {
        return lane.write_ahead(owed, None).await;
    }
    let handled: Vec<i64> = owed.iter().map(|(job, _)| *job).chain([m.job.id]).collect();
    page.read_on(lane, &handled).await?;
    let next = page.jobs.front().filter(|n| lane::may_premark(lane, n)).cloned();
    lane.write_ahead(owed, next).await
}
