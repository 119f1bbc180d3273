//! Database calls that may meet a failover, retried on the one backoff
//! (`crate::backoff`): the worker's own bookkeeping until it works or
//! shutdown, a lane's writes only while its lease lasts.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::clock::Deadline;
use crate::backoff::Backoff;
use crate::store;

/// The worker's retries: from 200 ms up to 5 s.
pub(crate) const WORKER_RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
/// A lane's retries: from 100 ms up to 2 s, inside its lease.
const LANE_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// Retries a database call on any error until it works, or None at shutdown.
pub(crate) async fn retry_forever<T, F, Fut>(shutdown: &CancellationToken, what: &str, f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let go_on = |e: &sqlx::Error, delay: Duration| {
        let _ = store::is_transient(e); // notes a failover
        tracing::warn!(error = %e, retry_in = ?delay, "cannot {what}; retrying");
        true
    };
    retrying(WORKER_RETRY, f, go_on, Some(shutdown)).await
}

/// Retries a lane's database call on transient errors while its lease is
/// still ours; None when it could not be done in time (the lease will
/// expire and whatever is in flight is reconciled by the next holder).
pub(crate) async fn within_lease<T, F, Fut>(deadline: &Deadline, what: &str, f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let go_on = |e: &sqlx::Error, delay: Duration| {
        if store::is_transient(e) && deadline.outlasts(delay) {
            tracing::warn!(error = %e, retry_in = ?delay, "database unavailable; cannot {what} yet");
            true
        } else {
            tracing::warn!(error = %e, "cannot {what}; leaving the lane to its lease");
            false
        }
    };
    retrying(LANE_RETRY, f, go_on, None).await
}

/// Calls `f` until it works, waiting `schedule`'s delays between calls
/// while `go_on(error, next delay)` says so; None when it says not, or at
/// `stop`.
async fn retrying<T, F, Fut>(
    schedule: Backoff,
    mut f: F,
    mut go_on: impl FnMut(&sqlx::Error, Duration) -> bool,
    stop: Option<&CancellationToken>,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut retry = 0u32;
    loop {
        let e = match f().await {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        retry = retry.saturating_add(1);
        let delay = schedule.delay(retry);
        if !go_on(&e, delay) {
            return None;
        }
        let stopped = async {
            match stop {
                Some(stop) => stop.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::clock::Clock;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::time::Instant;

    /// Fails with a lost connection `failures` times, then answers 42.
    fn flaky(
        failures: u32,
        calls: &AtomicU32,
    ) -> impl FnMut() -> std::future::Ready<Result<i32, sqlx::Error>> + '_ {
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if n < failures {
                Err(sqlx::Error::PoolTimedOut)
            } else {
                Ok(42)
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_write_is_retried_while_the_lease_lasts() {
        let clock = Clock::new();
        let deadline = Deadline::new(clock, clock.now_ms(), Duration::from_secs(30));
        let calls = AtomicU32::new(0);
        let got = within_lease(&deadline, "write", flaky(3, &calls)).await;
        assert_eq!((got, calls.load(Ordering::SeqCst)), (Some(42), 4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_write_gives_up_before_the_lease_would_run_out() {
        let clock = Clock::new();
        let deadline = Deadline::new(clock, clock.now_ms(), Duration::from_secs(3));
        let start = Instant::now();
        let calls = AtomicU32::new(0);
        let got = within_lease(&deadline, "write", flaky(u32::MAX, &calls)).await;
        assert_eq!(got, None);
        assert!(calls.load(Ordering::SeqCst) > 1, "transient errors are retried");
        // No retry was scheduled past the deadline.
        assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
        assert!(deadline.left_ms() > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_write_gives_up_at_once_on_a_lasting_error() {
        let clock = Clock::new();
        let deadline = Deadline::new(clock, clock.now_ms(), Duration::from_secs(30));
        let mut calls = 0;
        let got: Option<()> = within_lease(&deadline, "write", || {
            calls += 1;
            std::future::ready(Err(sqlx::Error::RowNotFound))
        })
        .await;
        assert_eq!((got, calls), (None, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_workers_own_writes_retry_until_they_work_or_shutdown() {
        let calls = AtomicU32::new(0);
        let got = retry_forever(&CancellationToken::new(), "write", flaky(5, &calls)).await;
        assert_eq!(got, Some(42));
        let stop = CancellationToken::new();
        stop.cancel();
        let calls = AtomicU32::new(0);
        let got = retry_forever(&stop, "write", flaky(u32::MAX, &calls)).await;
        assert_eq!((got, calls.load(Ordering::SeqCst)), (None, 1));
    }
}
