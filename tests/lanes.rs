//! Issue 12: no lane left behind. Operator commands racing a worker that
//! parks a lane, stranded lanes, and what `run --exit-when-idle` reports.
//! Each race is driven through the worker's test hook: the operator's
//! command commits exactly between the worker's decision and its release.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chatferry::store::Park;
use chatferry::worker::{HookPoint, Worker};
use common::*;
use futures::FutureExt;

/// One conversation of `n` messages, texts `m0..`.
fn one_conversation(n: i64) -> Vec<String> {
    let now = now_ms() - 600_000;
    (0..n)
        .map(|k| text_line(&format!("m{k}"), "a", "b", now + k, &format!("m{k}")))
        .collect()
}

/// Runs a worker until idle with `hook` installed.
async fn run_with_hook(
    db: &TestDb,
    cfg: &chatferry::config::Config,
    hook: chatferry::worker::Hook,
) -> chatferry::worker::RunReport {
    let providers = chatferry::providers::build_all(cfg).unwrap();
    let w = Worker::new(db.store.clone(), cfg, providers);
    w.set_hook(hook);
    w.run(tokio_util::sync::CancellationToken::new(), true)
        .await
        .unwrap()
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
    let rec = Recorder::start(|_, _| Reply::Ok).await;
    let db = TestDb::new().await;
    let cfg = config(&db, &format!("{FAST_WORKER}{}", tencent_target("tim", rec.addr)));
    // Paused before its jobs arrive: the loader wakes the lane, a worker
    // claims it and finds the batch paused.
    db.store.ensure_batch("b", "tim").await.unwrap();
    db.store.set_paused("b", true).await.unwrap();
    load(
        &db,
        &cfg,
        "tim",
        "b",
        &[jsonl(&one_conversation(20)).path()],
        None,
    )
    .await;
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
    let report = run_with_hook(&db, &cfg, hook).await;
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
async fn blocked_run(op: &'static str) -> (TestDb, Recorder, chatferry::worker::RunReport) {
    let rec = Recorder::start(|v, nth| {
        let text = v["MsgBody"][0]["MsgContent"]["Text"].as_str().unwrap_or_default();
        if text == "m3" && nth == 1 {
            Reply::Code(90001)
        } else {
            Reply::Ok
        }
    })
    .await;
    let db = TestDb::new().await;
    let cfg = config(
        &db,
        &format!(
            "{FAST_WORKER}on_permanent_error = \"block\"\n{}",
            tencent_target("tim", rec.addr)
        ),
    );
    load(
        &db,
        &cfg,
        "tim",
        "b",
        &[jsonl(&one_conversation(10)).path()],
        None,
    )
    .await;
    let store = db.store.clone();
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
    let report = run_with_hook(&db, &cfg, hook).await;
    (db, rec, report)
}

#[tokio::test]
async fn retry_committed_while_a_lane_blocks_does_not_strand_it() {
    let (db, rec, report) = blocked_run("retry").await;
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
    let (db, rec, report) = blocked_run("skip").await;
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

/// Waits until a SQL count reaches `want`.
async fn wait_count(db: &TestDb, sql: &str, want: i64, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    loop {
        let n = db.scalar(sql).await;
        if n == want {
            return;
        }
        assert!(start.elapsed() < limit, "timed out: {sql} is {n}, want {want}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_daemon_wakes_a_stranded_lane_on_its_own() {
    let rec = Recorder::start(|_, _| Reply::Ok).await;
    let db = TestDb::new().await;
    let cfg = config(
        &db,
        &format!("{FAST_WORKER}sweep_secs = 1\n{}", tencent_target("tim", rec.addr)),
    );
    let providers = chatferry::providers::build_all(&cfg).unwrap();
    let w = Worker::new(db.store.clone(), &cfg, providers);
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(w.run(stop.clone(), false));
    db.store.ensure_batch("b", "tim").await.unwrap();
    db.store.set_paused("b", true).await.unwrap();
    load(&db, &cfg, "tim", "b", &[jsonl(&one_conversation(5)).path()], None).await;
    let parked = "SELECT count(*) FROM chatferry.lanes WHERE paused_batch IS NOT NULL";
    wait_count(&db, parked, 1, std::time::Duration::from_secs(10)).await;
    // Unpaused behind the daemon's back: nothing wakes the lane but the sweep.
    sqlx::query("UPDATE chatferry.batches SET paused = false")
        .execute(db.store.pool())
        .await
        .unwrap();
    let done = "SELECT count(*) FROM chatferry.jobs WHERE status = 'done'";
    wait_count(&db, done, 5, std::time::Duration::from_secs(10)).await;
    stop.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(rec.received(), 5);
}

fn write_config(db: &TestDb, extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("daemon.toml");
    std::fs::write(
        &path,
        format!("[database]\nurl = \"{}\"\n{FAST_WORKER}{extra}", db.url),
    )
    .unwrap();
    (dir, path)
}

async fn run_binary(cfg: &std::path::Path) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_chatferry"))
        .args(["--config", cfg.to_str().unwrap(), "run", "--exit-when-idle"])
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn exit_when_idle_exits_5_and_names_paused_batches_and_blocked_lanes() {
    let rec = Recorder::start(|v, _| {
        let text = v["MsgBody"][0]["MsgContent"]["Text"].as_str().unwrap_or_default();
        if text == "m2" {
            Reply::Code(90001)
        } else {
            Reply::Ok
        }
    })
    .await;
    let db = TestDb::new().await;
    let extra = format!(
        "on_permanent_error = \"block\"\n{}",
        tencent_target("tim", rec.addr)
    );
    let (_dir, path) = write_config(&db, &extra);
    let cfg = config(&db, &format!("{FAST_WORKER}{extra}"));
    load(
        &db,
        &cfg,
        "tim",
        "blocked",
        &[jsonl(&one_conversation(5)).path()],
        None,
    )
    .await;
    let now = now_ms() - 600_000;
    let paused: Vec<String> = (0..3)
        .map(|k| text_line(&format!("p{k}"), "c", "d", now + k, &format!("p{k}")))
        .collect();
    load(&db, &cfg, "tim", "held", &[jsonl(&paused).path()], None).await;
    db.store.set_paused("held", true).await.unwrap();

    let out = run_binary(&path).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
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
    let out = run_binary(&path).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rec.applied().values().map(Vec::len).sum::<usize>(), 7);
}

/// A drain whose grace runs out while a lane still holds an answer it has
/// not checkpointed (held there by the hook): the lane is not handed to
/// anyone at once, and the heartbeat renews on its clock, not in a loop.
#[tokio::test]
async fn a_drain_cut_short_keeps_the_lane_leased_and_the_heartbeat_quiet() {
    use std::sync::atomic::AtomicUsize;
    let rec = Recorder::start(|_, _| Reply::Ok).await;
    let db = TestDb::new().await;
    let worker =
        "[worker]\nconcurrency = 4\nmax_concurrency = 4\nlease_secs = 3\nrequest_timeout_ms = 1000\n\
                  poll_interval_ms = 20\nretry_min_ms = 10\nretry_max_ms = 50\nshutdown_grace_secs = 2\n";
    let cfg = config(&db, &format!("{worker}{}", tencent_target("tim", rec.addr)));
    load(&db, &cfg, "tim", "b", &[jsonl(&one_conversation(3)).path()], None).await;
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
    let providers = chatferry::providers::build_all(&cfg).unwrap();
    let w = Worker::new(db.store.clone(), &cfg, providers);
    w.set_hook(hook);
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(w.run(stop.clone(), false));
    wait_until(std::time::Duration::from_secs(10), "an answer held", || {
        held.load(Ordering::SeqCst)
    })
    .await;
    let before = renewals.load(Ordering::SeqCst);
    stop.cancel();
    run.await.unwrap().unwrap();
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
            std::time::Duration::from_secs(3),
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
