//! Issue 12: no lane left behind. Operator commands racing a worker that
//! parks a lane, stranded lanes, and what `run --exit-when-idle` reports.
//! Each race is driven through the worker's test hook: the operator's
//! command commits exactly between the worker's decision and its release.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use chatferry::config::OnPermanentError;
use chatferry::store::Park;
use chatferry::worker::HookPoint;
use common::*;
use futures::FutureExt;

/// One conversation of `n` messages, texts `m0..`.
fn one_conversation(n: i64) -> Vec<String> {
    let now = now_ms() - 600_000;
    (0..n)
        .map(|k| text_line(&format!("m{k}"), "a", "b", now + k, &format!("m{k}")))
        .collect()
}

/// A hook that runs `op` once, the first time a lane is about to be
/// released parked the way `want` says.
fn once_at<F>(want: fn(Park) -> bool, op: F) -> chatferry::worker::Hook
where
    F: Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync + 'static,
{
    let fired = Arc::new(AtomicBool::new(false));
    Arc::new(move |p: HookPoint| {
        let HookPoint::BeforeRelease { park, .. } = p else {
            return async {}.boxed();
        };
        if want(park) && !fired.swap(true, Ordering::SeqCst) {
            op()
        } else {
            async {}.boxed()
        }
    })
}

#[tokio::test]
async fn resume_committed_while_a_lane_parks_as_paused_does_not_strand_it() {
    let app = TestApp::recording(|_, _| Reply::Ok).await;
    let (db, rec) = (&app.db, &app.provider);
    // Paused before its jobs arrive: the loader wakes the lane, a worker
    // claims it and finds the batch paused.
    db.store.ensure_batch("b", "tim").await.unwrap();
    db.store.set_paused("b", true).await.unwrap();
    app.load("b", &one_conversation(20)).await;
    let store = db.store.clone();
    let hook = once_at(
        |p| matches!(p, Park::Paused(_)),
        move || {
            let store = store.clone();
            async move {
                store.set_paused("b", false).await.unwrap();
            }
            .boxed()
        },
    );
    let report = app.run_until_idle_with(hook).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
            .await,
        20,
        "the resumed batch is sent in full; stuck: {:?}",
        report.stuck
    );
    assert!(report.stuck.is_empty());
    assert_eq!(rec.received(), 20);
}

/// Message m3 is refused for good the first time, accepted afterwards.
async fn blocked_run(op: &'static str) -> (TestApp<Recorder>, chatferry::worker::RunReport) {
    let app = TestApp::builder()
        .tencent(TencentTarget::default())
        .worker(|w| w.on_permanent_error = Some(OnPermanentError::Block))
        .recorder(|v, nth| {
            let text = v["MsgBody"][0]["MsgContent"]["Text"].as_str().unwrap_or_default();
            if text == "m3" && nth == 1 {
                Reply::Code(90001)
            } else {
                Reply::Ok
            }
        })
        .spawn()
        .await;
    app.load("b", &one_conversation(10)).await;
    let store = app.db.store.clone();
    let hook = once_at(
        |p| matches!(p, Park::Blocked(_)),
        move || {
            let store = store.clone();
            async move {
                if op == "retry" {
                    assert_eq!(store.retry_failed("b", None).await.unwrap(), 1);
                } else {
                    let job: i64 =
                        sqlx::query_scalar("SELECT id FROM chatferry.jobs WHERE status = 'failed'")
                            .fetch_one(store.pool())
                            .await
                            .unwrap();
                    store.skip_job(job).await.unwrap();
                }
            }
            .boxed()
        },
    );
    let report = app.run_until_idle_with(hook).await;
    (app, report)
}

#[tokio::test]
async fn retry_committed_while_a_lane_blocks_does_not_strand_it() {
    let (app, report) = blocked_run("retry").await;
    let (db, rec) = (&app.db, &app.provider);
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
            .await,
        10,
        "the retried job and the rest of the lane are sent; stuck: {:?}",
        report.stuck
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.lanes WHERE blocked_job IS NOT NULL")
            .await,
        0
    );
    let applied = rec.applied();
    let texts: Vec<String> = (0..10).map(|k| format!("m{k}")).collect();
    assert_eq!(applied[&("a".to_string(), "b".to_string())], texts);
}

#[tokio::test]
async fn skip_committed_while_a_lane_blocks_does_not_strand_it() {
    let (app, report) = blocked_run("skip").await;
    let (db, rec) = (&app.db, &app.provider);
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
            .await,
        9,
        "the lane goes on past the skipped job; stuck: {:?}",
        report.stuck
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'skipped'")
            .await,
        1
    );
    assert_eq!(rec.applied()[&("a".to_string(), "b".to_string())].len(), 9);
}

#[tokio::test]
async fn the_daemon_wakes_a_stranded_lane_on_its_own() {
    let app = TestApp::builder()
        .tencent(TencentTarget::default())
        .worker(|w| w.sweep_secs = Some(1))
        .recorder(|_, _| Reply::Ok)
        .spawn()
        .await;
    let (db, rec) = (&app.db, &app.provider);
    let worker = app.start_worker();
    db.store.ensure_batch("b", "tim").await.unwrap();
    db.store.set_paused("b", true).await.unwrap();
    app.load("b", &one_conversation(5)).await;
    let parked = "SELECT count(*) FROM chatferry.lanes WHERE paused_batch IS NOT NULL";
    db.wait_for_count(parked, 1, Duration::from_secs(10)).await;
    // Unpaused behind the daemon's back: nothing wakes the lane but the sweep.
    sqlx::query("UPDATE chatferry.batches SET paused = false")
        .execute(db.store.pool())
        .await
        .unwrap();
    let done = "SELECT count(*) FROM chatferry.jobs WHERE status = 'done'";
    db.wait_for_count(done, 5, Duration::from_secs(10)).await;
    worker.stop().await;
    assert_eq!(rec.received(), 5);
}

#[tokio::test]
async fn exit_when_idle_exits_5_and_names_paused_batches_and_blocked_lanes() {
    let app = TestApp::builder()
        .tencent(TencentTarget::default())
        .worker(|w| w.on_permanent_error = Some(OnPermanentError::Block))
        .recorder(|v, _| {
            let text = v["MsgBody"][0]["MsgContent"]["Text"].as_str().unwrap_or_default();
            if text == "m2" {
                Reply::Code(90001)
            } else {
                Reply::Ok
            }
        })
        .spawn()
        .await;
    let (db, rec) = (&app.db, &app.provider);
    let bin = app.binary();
    app.load("blocked", &one_conversation(5)).await;
    let now = now_ms() - 600_000;
    let paused: Vec<String> = (0..3)
        .map(|k| text_line(&format!("p{k}"), "c", "d", now + k, &format!("p{k}")))
        .collect();
    app.load("held", &paused).await;
    db.store.set_paused("held", true).await.unwrap();

    let out = bin.cli(&["run", "--exit-when-idle"]).await;
    let stderr = &out.stderr;
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("batch held is paused"), "{stderr}");
    assert!(stderr.contains("chatferry resume --batch held"), "{stderr}");
    assert!(stderr.contains("blocked at job"), "{stderr}");
    assert!(stderr.contains("source id m2"), "{stderr}");
    assert!(stderr.contains("5 open jobs in 2 lanes"), "{stderr}");

    // Once the operator lets them go, the same command exits 0.
    db.store.set_paused("held", false).await.unwrap();
    let job: i64 = sqlx::query_scalar("SELECT id FROM chatferry.jobs WHERE status = 'failed'")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    db.store.skip_job(job).await.unwrap();
    let out = bin.cli(&["run", "--exit-when-idle"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(rec.applied().values().map(Vec::len).sum::<usize>(), 7);
}

/// A drain whose grace runs out while a lane still holds an answer it has
/// not checkpointed (held there by the hook): the lane is not handed to
/// anyone at once, and the heartbeat renews on its clock, not in a loop.
#[tokio::test]
async fn a_drain_cut_short_keeps_the_lane_leased_and_the_heartbeat_quiet() {
    use std::sync::atomic::AtomicUsize;
    let worker = WorkerSettings {
        concurrency: Some(4),
        max_concurrency: Some(4),
        lease_secs: Some(3),
        request_timeout_ms: Some(1000),
        poll_interval_ms: Some(20),
        retry_min_ms: Some(10),
        retry_max_ms: Some(50),
        shutdown_grace_secs: Some(2),
        ..Default::default()
    };
    let app = TestApp::builder()
        .tencent(TencentTarget::default())
        .settings(|s| s.worker = Some(worker))
        .recorder(|_, _| Reply::Ok)
        .spawn()
        .await;
    let db = &app.db;
    app.load("b", &one_conversation(3)).await;
    let held = Arc::new(AtomicBool::new(false));
    let renewals = Arc::new(AtomicUsize::new(0));
    let hook: chatferry::worker::Hook = {
        let held = held.clone();
        let renewals = renewals.clone();
        Arc::new(move |p: HookPoint| match p {
            HookPoint::BeforeCheckpoint { .. } if !held.swap(true, Ordering::SeqCst) => {
                futures::future::pending().boxed()
            }
            HookPoint::BeforeRenew => {
                renewals.fetch_add(1, Ordering::SeqCst);
                async {}.boxed()
            }
            _ => async {}.boxed(),
        })
    };
    let w = app.worker();
    w.set_hook(hook);
    let worker = Running::start(w);
    wait_until(Duration::from_secs(10), "an answer held", || {
        held.load(Ordering::SeqCst)
    })
    .await;
    let before = renewals.load(Ordering::SeqCst);
    worker.stop().await;
    let during = renewals.load(Ordering::SeqCst) - before;
    assert!(
        during <= 3,
        "{during} lease renewals in a 2 s drain (every 1 s expected)"
    );
    // Another replica finds nothing to claim: the lane waits out its lease.
    let other = db
        .store
        .claim_lanes(
            uuid::Uuid::new_v4(),
            10,
            Duration::from_secs(3),
            &["tim".to_string()],
            &[],
            None,
        )
        .await
        .unwrap();
    assert!(other.is_empty(), "the cut-short lane was handed over at once");
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'in_flight'")
            .await,
        1,
        "the cut-short call stays in doubt"
    );
}
