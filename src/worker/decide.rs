//! The lane's decisions as pure functions: given what the provider said and
//! how the job stands, what the lane does next. The async lane code only
//! carries a decision out, so every branch here is tested without a
//! database or a provider (vector's `RetryLogic` is the model).

use std::time::Duration;

use crate::config::{OnPermanentError, WorkerConfig};
use crate::providers::{Accepted, Outcome, Reconciled};
use crate::store::{OpenJob, Park};

/// Why a lane stopped before it ran out of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Give the lane back (retry later, shutdown, halted target).
    Release,
    /// Park the lane at this failed job (`on_permanent_error = "block"`).
    Block(i64),
    /// Park the lane: its next job's batch is paused.
    Paused(i64),
    /// The lease is gone: touch nothing.
    Lost,
}

impl Stop {
    /// How the lane is given back; None when it is not ours to give.
    pub fn park(self) -> Option<Park> {
        match self {
            Stop::Lost => None,
            Stop::Release => Some(Park::No),
            Stop::Block(job) => Some(Park::Blocked(job)),
            Stop::Paused(batch) => Some(Park::Paused(batch)),
        }
    }

    /// The stop a lane ends with when two of its calls stopped it: a lost
    /// lease wins over a plain stop.
    pub fn or_lost(self, other: Stop) -> Stop {
        if other == Stop::Lost {
            Stop::Lost
        } else {
            self
        }
    }
}

/// The limits and policy the decisions follow.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Attempts before a job is given up (0: never).
    pub max_attempts: u32,
    /// Undecided reconciles before a job is given up.
    pub max_reconcile_attempts: u32,
    /// What a failed job does to its lane.
    pub on_permanent_error: OnPermanentError,
}

impl Policy {
    /// The policy of the worker's configuration.
    pub fn new(cfg: &WorkerConfig) -> Policy {
        Policy {
            max_attempts: cfg.max_attempts,
            max_reconcile_attempts: cfg.max_reconcile_attempts,
            on_permanent_error: cfg.on_permanent_error,
        }
    }

    /// How a lane goes on after a job of it failed: under "skip" it goes
    /// on (`Release` where it must stop anyway), under "block" it parks.
    fn after_fail(&self, job: i64) -> Stop {
        match self.on_permanent_error {
            OnPermanentError::Skip => Stop::Release,
            OnPermanentError::Block => Stop::Block(job),
        }
    }

    /// Calls in flight at once in a lane of a provider that orders by the
    /// messages' own time, or None: one at a time. Under "block" a refused
    /// message must stop its lane before anything later leaves, which a
    /// window cannot promise.
    pub fn window(&self, orders_by_time: bool, lane_window: usize) -> Option<usize> {
        let skip = matches!(self.on_permanent_error, OnPermanentError::Skip);
        (orders_by_time && lane_window > 1 && skip).then_some(lane_window)
    }
}

/// The checks every open job passes before its mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Mark it and send it.
    Send,
    /// The provider may hold it already: reconcile it first.
    Reconcile,
    /// The lane stops here.
    Stop(Stop),
}

/// Stop signals, a paused batch, a retry time, and an in-doubt head.
/// `stopping`: the lane was told to stop or its target is halted.
pub fn gate(stopping: bool, job: &OpenJob) -> Gate {
    if stopping {
        Gate::Stop(Stop::Release)
    } else if job.paused {
        Gate::Stop(Stop::Paused(job.batch_id))
    } else if job.wait_ms > 0 {
        Gate::Stop(Stop::Release)
    } else if job.needs_reconcile() {
        Gate::Reconcile
    } else {
        Gate::Send
    }
}

/// What the lane does with a job after its gate (and reconcile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it.
    Send,
    /// Settled by a reconcile: go on to the next.
    Skip,
    /// The lane stops here.
    Stop(Stop),
}

/// What an answer to a send leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Accepted: checkpoint it done with these ids.
    Checkpoint(Accepted),
    /// A rate-limit answer: the limit is known, so this was a slight
    /// overshoot. Pending again, due now; resent at once (paced again).
    Resend { code: Option<i64>, reason: String },
    /// Not applied: pending again after `delay`.
    Retry {
        code: Option<i64>,
        reason: String,
        delay: Duration,
    },
    /// May have been applied: kept in flight, reconciled after `delay`.
    InDoubt {
        code: Option<i64>,
        reason: String,
        delay: Duration,
    },
    /// Refused for good: failed.
    Refused { code: Option<i64>, reason: String },
    /// Out of attempts: failed.
    GaveUp { code: Option<i64>, reason: String },
    /// The target is unusable: back to pending untouched, target halted.
    Halt { code: Option<i64>, reason: String },
}

/// Longest wait before an in-doubt job's reconcile, settle time aside.
const IN_DOUBT_MAX: Duration = Duration::from_secs(5);

/// What `outcome`, the answer to attempt `attempt`, leads to. `backoff` is
/// the retry delay for this attempt (`crate::backoff`); `settle` is how
/// long an in-doubt job waits before its reconcile at a provider that does
/// not deduplicate (None at one that does).
pub fn after_send(
    outcome: Outcome,
    attempt: i32,
    policy: &Policy,
    backoff: Duration,
    settle: Option<Duration>,
) -> Step {
    match outcome {
        Outcome::Accepted(a) => Step::Checkpoint(a),
        Outcome::RetryLater {
            code,
            reason,
            delay,
            throttled,
        } => {
            if policy.max_attempts > 0 && attempt as u32 >= policy.max_attempts {
                let reason = format!("gave up after {attempt} attempts: {reason}");
                Step::GaveUp { code, reason }
            } else if throttled {
                Step::Resend { code, reason }
            } else {
                let delay = delay.unwrap_or(backoff);
                Step::Retry { code, reason, delay }
            }
        }
        Outcome::Permanent { code, reason } => Step::Refused { code, reason },
        Outcome::Unknown { code, reason } => {
            // Without dedup, the reconcile waits the settle time from now,
            // when the answer came: a request the provider still holds
            // lands before it reads the view.
            let delay = backoff.min(IN_DOUBT_MAX).max(settle.unwrap_or(Duration::ZERO));
            let reason = format!("outcome unknown: {reason}");
            Step::InDoubt { code, reason, delay }
        }
        Outcome::Halt { code, reason } => Step::Halt { code, reason },
    }
}

/// What a call came to once its step is recorded (an acceptance's
/// checkpoint may still be to write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// Accepted; the done checkpoint is the caller's to write (a ZIM lane
    /// groups it with the next job's in-flight mark).
    Accepted { job: i64, ids: Accepted },
    /// Recorded; the lane goes on.
    Next,
    /// A rate-limit answer: the job is pending again, due now: re-read
    /// the lane and resend.
    Again(i64),
    /// Recorded; the lane stops.
    Stop(Stop),
}

/// Where the lane goes once `step` for `job` was written (`recorded`:
/// the lease still held; otherwise the lane is lost).
pub fn after_record(step: &Step, job: i64, recorded: bool, policy: &Policy) -> Call {
    if !recorded {
        return Call::Stop(Stop::Lost);
    }
    match step {
        Step::Checkpoint(_) => Call::Next,
        Step::Resend { .. } => Call::Again(job),
        Step::Retry { .. } | Step::InDoubt { .. } | Step::Halt { .. } => Call::Stop(Stop::Release),
        Step::Refused { .. } | Step::GaveUp { .. } => match policy.after_fail(job) {
            Stop::Release => Call::Next,
            stop => Call::Stop(stop),
        },
    }
}

/// How long an in-doubt head must still settle before its reconcile may
/// look (None: reconcile now). `settles`: the provider does not
/// deduplicate, so a late landing must be visible first.
pub fn settle_first(settles: bool, job: &OpenJob) -> Option<Duration> {
    (settles && job.settle_wait_ms > 0).then(|| Duration::from_millis(job.settle_wait_ms as u64))
}

/// What a reconcile of a lane's head leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadStep {
    /// The provider holds it: checkpoint it done, go on to the next job.
    Checkpoint(Accepted),
    /// The provider does not hold it: send it.
    Send,
    /// Could not tell: count the reconcile, look again after `delay`.
    Undecided { reason: String, delay: Duration },
    /// Could not tell too often: fail it, with what the operator should do.
    GiveUp { reason: String },
    /// Reconcile cannot work for this target now: halt it.
    Halt { reason: String },
}

/// What reconciling `job` found leads to; `backoff` is the retry delay
/// for its next reconcile (`crate::backoff`, attempt `reconcile_attempts + 1`).
pub fn after_reconcile(result: Reconciled, job: &OpenJob, policy: &Policy, backoff: Duration) -> HeadStep {
    let tries = job.reconcile_attempts + 1;
    match result {
        Reconciled::Applied(a) => HeadStep::Checkpoint(a),
        Reconciled::NotApplied => HeadStep::Send,
        Reconciled::Unknown { reason } if tries as u32 >= policy.max_reconcile_attempts => HeadStep::GiveUp {
            reason: format!(
                "could not tell whether the provider holds this message after {tries} reconciles ({reason}); \
                 it was not sent again. Check the conversation at the provider, then `chatferry skip` it \
                 if it is there or `chatferry retry` it if not"
            ),
        },
        Reconciled::Unknown { reason } => HeadStep::Undecided {
            reason: format!("reconcile {tries}: {reason}"),
            delay: backoff,
        },
        Reconciled::Halt { reason, .. } => HeadStep::Halt { reason },
    }
}

/// Where the lane goes once a head step was written (`recorded`: the
/// lease still held).
pub fn after_head(step: &HeadStep, job: i64, recorded: bool, policy: &Policy) -> Admit {
    match step {
        HeadStep::Send => Admit::Send,
        // Halting writes nothing.
        HeadStep::Halt { .. } => Admit::Stop(Stop::Release),
        _ if !recorded => Admit::Stop(Stop::Lost),
        HeadStep::Checkpoint(_) => Admit::Skip,
        HeadStep::Undecided { .. } => Admit::Stop(Stop::Release),
        // Even under "skip" the lane stops here; its next claim goes on.
        HeadStep::GiveUp { .. } => Admit::Stop(policy.after_fail(job)),
    }
}

/// How a windowed lane sends one read of its open jobs.
#[derive(Debug, Clone, Copy)]
pub struct WindowPlan {
    /// The read filled its limit: its last job may not be the lane's last.
    full: bool,
    last: usize,
    /// Calls in flight at once for this read.
    width: usize,
}

impl WindowPlan {
    /// The plan for a read of `read` jobs out of `limit`, in a lane of
    /// window `window`. Calls in flight grow with the lane's backlog:
    /// every call waits for the shared rate alike, so the lanes that will
    /// take longest get the most of it, and a hot conversation does not
    /// finish alone long after the rest (a short lane sends one at a time).
    pub fn new(read: usize, limit: i64, window: usize) -> WindowPlan {
        WindowPlan {
            full: read as i64 >= limit,
            last: read.saturating_sub(1),
            width: (read / 8).clamp(1, window),
        }
    }

    /// How many calls may stay in flight when the read's job `i` leaves;
    /// None: read on first (the last of a full read may not be the lane's
    /// last). A head in doubt, and the newest message, wait for the window
    /// to empty: the API updates the conversation with the newest.
    pub fn room(&self, i: usize, needs_reconcile: bool) -> Option<usize> {
        if self.full && i == self.last {
            None
        } else if needs_reconcile || i == self.last {
            Some(0)
        } else {
            Some(self.width - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JobStatus;

    fn job() -> OpenJob {
        OpenJob {
            id: 7,
            source_id: "s7".into(),
            body: "{}".into(),
            status: JobStatus::Pending,
            attempts: 0,
            wait_ms: 0,
            sent_at_ms: 0,
            batch_id: 3,
            paused: false,
            in_doubt: false,
            reconcile_attempts: 0,
            first_mark_ms: None,
            settle_wait_ms: 0,
            live: false,
            lane_live: false,
        }
    }

    fn policy(on: OnPermanentError) -> Policy {
        Policy {
            max_attempts: 3,
            max_reconcile_attempts: 4,
            on_permanent_error: on,
        }
    }

    const SKIP: OnPermanentError = OnPermanentError::Skip;
    const BLOCK: OnPermanentError = OnPermanentError::Block;
    const SEC: Duration = Duration::from_secs(1);

    fn retry_later(delay: Option<Duration>, throttled: bool) -> Outcome {
        Outcome::RetryLater {
            code: Some(429),
            reason: "busy".into(),
            delay,
            throttled,
        }
    }

    #[test]
    fn the_gate_stops_waits_reconciles_or_sends() {
        assert_eq!(gate(true, &job()), Gate::Stop(Stop::Release));
        let paused = OpenJob {
            paused: true,
            ..job()
        };
        assert_eq!(gate(false, &paused), Gate::Stop(Stop::Paused(3)));
        let later = OpenJob { wait_ms: 5, ..job() };
        assert_eq!(gate(false, &later), Gate::Stop(Stop::Release));
        let marked = OpenJob {
            status: JobStatus::InFlight,
            ..job()
        };
        assert_eq!(gate(false, &marked), Gate::Reconcile);
        let doubted = OpenJob {
            in_doubt: true,
            ..job()
        };
        assert_eq!(gate(false, &doubted), Gate::Reconcile);
        assert_eq!(gate(false, &job()), Gate::Send);
    }

    #[test]
    fn an_acceptance_is_checkpointed_with_its_ids() {
        let a = Accepted {
            msg_id: Some("m".into()),
            msg_seq: Some(9),
            request_id: Some("r".into()),
        };
        let step = after_send(Outcome::Accepted(a), 1, &policy(SKIP), SEC, None);
        let Step::Checkpoint(ids) = &step else {
            panic!("{step:?}")
        };
        assert_eq!((ids.msg_id.as_deref(), ids.msg_seq), (Some("m"), Some(9)));
        assert_eq!(after_record(&step, 7, true, &policy(SKIP)), Call::Next);
    }

    #[test]
    fn a_rate_limit_answer_is_resent_at_once() {
        let step = after_send(retry_later(None, true), 1, &policy(SKIP), SEC, None);
        assert!(matches!(step, Step::Resend { code: Some(429), .. }), "{step:?}");
        assert_eq!(after_record(&step, 7, true, &policy(SKIP)), Call::Again(7));
    }

    #[test]
    fn a_retry_waits_the_providers_delay_or_the_backoff() {
        let p = policy(SKIP);
        let step = after_send(retry_later(Some(3 * SEC), false), 1, &p, SEC, None);
        assert!(
            matches!(step, Step::Retry { delay, .. } if delay == 3 * SEC),
            "{step:?}"
        );
        let step = after_send(retry_later(None, false), 2, &p, SEC, None);
        assert!(
            matches!(step, Step::Retry { delay, .. } if delay == SEC),
            "{step:?}"
        );
        assert_eq!(after_record(&step, 7, true, &p), Call::Stop(Stop::Release));
    }

    #[test]
    fn the_last_attempt_gives_up_even_when_throttled() {
        for throttled in [false, true] {
            let step = after_send(retry_later(None, throttled), 3, &policy(SKIP), SEC, None);
            let Step::GaveUp { reason, .. } = &step else {
                panic!("{step:?}")
            };
            assert_eq!(reason, "gave up after 3 attempts: busy");
            assert_eq!(after_record(&step, 7, true, &policy(SKIP)), Call::Next);
            assert_eq!(
                after_record(&step, 7, true, &policy(BLOCK)),
                Call::Stop(Stop::Block(7))
            );
        }
        // No limit: attempts go on.
        let endless = Policy {
            max_attempts: 0,
            ..policy(SKIP)
        };
        let step = after_send(retry_later(None, false), 99, &endless, SEC, None);
        assert!(matches!(step, Step::Retry { .. }), "{step:?}");
    }

    #[test]
    fn a_refusal_fails_the_job_and_the_policy_moves_the_lane() {
        let refused = || Outcome::Permanent {
            code: Some(1),
            reason: "bad".into(),
        };
        let step = after_send(refused(), 1, &policy(SKIP), SEC, None);
        assert!(matches!(step, Step::Refused { code: Some(1), .. }), "{step:?}");
        assert_eq!(after_record(&step, 7, true, &policy(SKIP)), Call::Next);
        assert_eq!(
            after_record(&step, 7, true, &policy(BLOCK)),
            Call::Stop(Stop::Block(7))
        );
    }

    #[test]
    fn an_unknown_outcome_is_reconciled_after_the_settle_time() {
        let unknown = || Outcome::Unknown {
            code: None,
            reason: "timeout".into(),
        };
        let p = policy(SKIP);
        let step = after_send(unknown(), 1, &p, SEC, None);
        assert_eq!(
            step,
            Step::InDoubt {
                code: None,
                reason: "outcome unknown: timeout".into(),
                delay: SEC
            }
        );
        // The backoff is capped; a provider without dedup waits the settle time.
        let step = after_send(unknown(), 9, &p, 60 * SEC, None);
        assert!(
            matches!(step, Step::InDoubt { delay, .. } if delay == 5 * SEC),
            "{step:?}"
        );
        let step = after_send(unknown(), 1, &p, SEC, Some(20 * SEC));
        assert!(
            matches!(step, Step::InDoubt { delay, .. } if delay == 20 * SEC),
            "{step:?}"
        );
        assert_eq!(after_record(&step, 7, true, &p), Call::Stop(Stop::Release));
    }

    #[test]
    fn a_halt_puts_the_job_back_and_stops_the_lane() {
        let halt = Outcome::Halt {
            code: Some(70001),
            reason: "bad key".into(),
        };
        let step = after_send(halt, 1, &policy(BLOCK), SEC, None);
        assert!(
            matches!(
                step,
                Step::Halt {
                    code: Some(70001),
                    ..
                }
            ),
            "{step:?}"
        );
        assert_eq!(
            after_record(&step, 7, true, &policy(BLOCK)),
            Call::Stop(Stop::Release)
        );
    }

    #[test]
    fn a_write_refused_for_the_lease_loses_the_lane() {
        let step = after_send(retry_later(None, true), 1, &policy(SKIP), SEC, None);
        assert_eq!(
            after_record(&step, 7, false, &policy(SKIP)),
            Call::Stop(Stop::Lost)
        );
        let done = Step::Checkpoint(Accepted::default());
        assert_eq!(
            after_record(&done, 7, false, &policy(SKIP)),
            Call::Stop(Stop::Lost)
        );
    }

    #[test]
    fn a_head_settles_before_its_reconcile_only_without_dedup() {
        let settling = OpenJob {
            settle_wait_ms: 1500,
            ..job()
        };
        assert_eq!(settle_first(true, &settling), Some(Duration::from_millis(1500)));
        assert_eq!(settle_first(false, &settling), None);
        assert_eq!(settle_first(true, &job()), None);
    }

    #[test]
    fn reconcile_results_lead_to_their_steps() {
        let p = policy(BLOCK);
        let applied = Reconciled::Applied(Accepted {
            msg_id: Some("m".into()),
            ..Default::default()
        });
        let step = after_reconcile(applied, &job(), &p, SEC);
        assert!(matches!(&step, HeadStep::Checkpoint(ids) if ids.msg_id.as_deref() == Some("m")));
        assert_eq!(after_head(&step, 7, true, &p), Admit::Skip);
        assert_eq!(after_head(&step, 7, false, &p), Admit::Stop(Stop::Lost));

        let step = after_reconcile(Reconciled::NotApplied, &job(), &p, SEC);
        assert_eq!(
            (step.clone(), after_head(&step, 7, true, &p)),
            (HeadStep::Send, Admit::Send)
        );

        let halt = Reconciled::Halt {
            code: None,
            reason: "auth".into(),
        };
        let step = after_reconcile(halt, &job(), &p, SEC);
        assert_eq!(
            step,
            HeadStep::Halt {
                reason: "auth".into()
            }
        );
        assert_eq!(after_head(&step, 7, false, &p), Admit::Stop(Stop::Release));
    }

    #[test]
    fn an_undecided_reconcile_backs_off_then_gives_up() {
        let unknown = || Reconciled::Unknown {
            reason: "no answer".into(),
        };
        let p = policy(SKIP);
        let step = after_reconcile(unknown(), &job(), &p, SEC);
        assert_eq!(
            step,
            HeadStep::Undecided {
                reason: "reconcile 1: no answer".into(),
                delay: SEC
            }
        );
        assert_eq!(after_head(&step, 7, true, &p), Admit::Stop(Stop::Release));
        assert_eq!(after_head(&step, 7, false, &p), Admit::Stop(Stop::Lost));

        let tired = OpenJob {
            reconcile_attempts: 3,
            ..job()
        };
        let step = after_reconcile(unknown(), &tired, &p, SEC);
        let HeadStep::GiveUp { reason } = &step else {
            panic!("{step:?}")
        };
        assert!(reason.starts_with(
            "could not tell whether the provider holds this message after 4 reconciles (no answer)"
        ));
        assert_eq!(after_head(&step, 7, true, &p), Admit::Stop(Stop::Release));
        assert_eq!(
            after_head(&step, 7, true, &policy(BLOCK)),
            Admit::Stop(Stop::Block(7))
        );
    }

    #[test]
    fn stops_park_the_lane_and_a_lost_lease_wins() {
        assert_eq!(Stop::Release.park(), Some(Park::No));
        assert_eq!(Stop::Block(4).park(), Some(Park::Blocked(4)));
        assert_eq!(Stop::Paused(2).park(), Some(Park::Paused(2)));
        assert_eq!(Stop::Lost.park(), None);
        assert_eq!(Stop::Release.or_lost(Stop::Lost), Stop::Lost);
        assert_eq!(Stop::Block(4).or_lost(Stop::Release), Stop::Block(4));
    }

    #[test]
    fn only_skipping_lanes_of_time_ordered_providers_get_a_window() {
        assert_eq!(policy(SKIP).window(true, 16), Some(16));
        assert_eq!(policy(SKIP).window(true, 1), None);
        assert_eq!(policy(SKIP).window(false, 16), None);
        assert_eq!(policy(BLOCK).window(true, 16), None);
    }

    #[test]
    fn a_window_grows_with_the_read_and_sends_the_newest_alone() {
        // 40 jobs of at most 64: five calls at once; the last goes alone.
        let plan = WindowPlan::new(40, 64, 16);
        assert_eq!(plan.room(0, false), Some(4));
        assert_eq!(plan.room(0, true), Some(0));
        assert_eq!(plan.room(39, false), Some(0));
        // A full read: its last job waits for the next read.
        let plan = WindowPlan::new(64, 64, 4);
        assert_eq!(plan.room(10, false), Some(3));
        assert_eq!(plan.room(63, false), None);
        // A short lane sends one at a time.
        assert_eq!(WindowPlan::new(3, 64, 16).room(0, false), Some(0));
    }
}
