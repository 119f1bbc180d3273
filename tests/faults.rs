//! Issue 12: database faults never strand, double or drop a message. A
//! bad write in a group commit fails alone; the in-flight mark is fenced
//! on the database's clock; a failover's stale connections are dropped.
//! Interleavings are driven by a second connection holding a row lock.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatferry::worker::{HookPoint, Worker};
use futures::FutureExt;
use parking_lot::Mutex;

use chatferry::store::checkpoint::Checkpoints;
use chatferry::store::{ProviderIds, Store};
use common::*;

/// Waits until some backend of `db` waits on a lock.
async fn wait_for_lock_waiter(db: &TestDb) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock'",
        db.name
    );
    let waiting = poll(Duration::from_secs(10), || db.scalar(&sql), |n| *n > 0).await;
    assert!(waiting > 0, "nobody waits on the lock");
}

/// Loads `n` one-message conversations and claims every lane.
async fn claimed_lanes(app: &TestApp, n: usize) -> Vec<(chatferry::store::Lease, i64)> {
    let db = &app.db;
    let now = now_ms() - 600_000;
    let lines: Vec<String> = (0..n)
        .map(|i| text_line("m", &format!("a{i}"), "b", now, "t"))
        .collect();
    app.load("b", &lines).await;
    let owner = uuid::Uuid::new_v4();
    let lanes = db
        .store
        .claim_lanes(
            owner,
            n as i64,
            Duration::from_secs(30),
            &["tim".to_string()],
            &[],
            None,
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    for l in lanes {
        let job: i64 = sqlx::query_scalar("SELECT id FROM chatferry.jobs WHERE lane_id = $1")
            .bind(l.lease.lane_id)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
        out.push((l.lease, job));
    }
    out.sort_by_key(|x| x.1);
    out
}

fn ids(msg_id: &str) -> ProviderIds {
    ProviderIds {
        msg_id: Some(msg_id.into()),
        msg_seq: Some(1),
        request_id: None,
    }
}

#[tokio::test]
async fn one_bad_write_in_a_group_commit_fails_alone() {
    let app = TestApp::builder().tencent(TencentTarget::default()).spawn().await;
    let db = &app.db;
    let lanes = claimed_lanes(&app, 3).await;
    let (a, b, c) = (&lanes[0], &lanes[1], &lanes[2]);
    let cp = Checkpoints::start(db.store.clone());
    // Hold job a's row: the writer's first round (a alone) waits on it
    // while b and c queue up, so they are written as one group.
    let mut blocker = db.store.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM chatferry.jobs WHERE id = $1 FOR UPDATE")
        .bind(a.1)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let first = tokio::spawn({
        let cp = cp.clone();
        let lease = a.0.clone();
        let job = a.1;
        async move { cp.mark_in_flight(&lease, job, Duration::from_secs(1)).await }
    });
    wait_for_lock_waiter(db).await;
    let good = ids("good");
    let bad = ids("bad\0id");
    let mut fb = Box::pin(cp.record_done(&b.0, b.1, &good));
    let mut fc = Box::pin(cp.record_done(&c.0, c.1, &bad));
    // One poll each puts both writes in the queue.
    assert!(futures::poll!(&mut fb).is_pending());
    assert!(futures::poll!(&mut fc).is_pending());
    blocker.rollback().await.unwrap();
    assert_eq!(first.await.unwrap().unwrap(), Some(1));
    let rb = fb.await;
    let rc = fc.await;
    assert!(rc.is_err(), "the NUL byte fails: {rc:?}");
    assert!(rb.unwrap(), "the good write of the same group is kept");
    let done = db
        .scalar(&format!(
            "SELECT count(*) FROM chatferry.jobs WHERE id = {} AND status = 'done'",
            b.1
        ))
        .await;
    assert_eq!(done, 1);
}

#[tokio::test]
async fn the_in_flight_mark_is_fenced_on_the_database_clock() {
    // When the first request arrives.
    let arrived: Arc<Mutex<Option<Instant>>> = Arc::default();
    let app = TestApp::recording({
        let arrived = arrived.clone();
        move |_, _| {
            arrived.lock().get_or_insert_with(Instant::now);
            Reply::Ok
        }
    })
    .await;
    let (db, rec) = (&app.db, &app.provider);
    let now = now_ms() - 600_000;
    app.load("b", &[text_line("m", "a", "b", now, "t")]).await;
    // Just before the first mark, the database's lease is cut to 600 ms:
    // under the request timeout (1 s) plus margin, whatever this host
    // believes. As if the hosts' clocks disagreed.
    let shortened: Arc<Mutex<Option<Instant>>> = Arc::default();
    let hook: chatferry::worker::Hook = {
        let store = db.store.clone();
        let shortened = shortened.clone();
        Arc::new(move |p: HookPoint| {
            let HookPoint::BeforeMark { lane, .. } = p else {
                return async {}.boxed();
            };
            if shortened.lock().is_some() {
                return async {}.boxed();
            }
            let store = store.clone();
            let shortened = shortened.clone();
            async move {
                sqlx::query(
                    "UPDATE chatferry.lanes SET lease_until = now() + interval '600 ms',
                            available_at = now() + interval '600 ms' WHERE id = $1",
                )
                .bind(lane)
                .execute(store.pool())
                .await
                .unwrap();
                *shortened.lock() = Some(Instant::now());
            }
            .boxed()
        })
    };
    app.run_until_idle_with(hook).await;
    let cut = shortened.lock().expect("the hook ran");
    let first = arrived.lock().expect("the message was sent");
    assert!(
        first >= cut + Duration::from_millis(600),
        "sent {:?} after the lease was cut to 600 ms: the mark ignored the database's lease",
        first - cut
    );
    assert_eq!(rec.received(), 1);
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done' AND attempts = 1")
            .await,
        1
    );
}

/// `n` conversations of `k` messages each; texts `c{i}m{j}`.
fn conversations(n: usize, k: usize) -> Vec<String> {
    let now = now_ms() - 600_000;
    let mut lines = Vec::new();
    for j in 0..k {
        for i in 0..n {
            lines.push(text_line(
                &format!("m{j}"),
                &format!("a{i}"),
                &format!("b{i}"),
                now + j as i64,
                &format!("c{i}m{j}"),
            ));
        }
    }
    lines
}

/// Every conversation got each of its messages, in order (a Tencent
/// resend of the same triple is one message, so repeats collapse).
fn assert_exact(rec: &Recorder, n: usize, k: usize) {
    let applied = rec.applied();
    assert_eq!(applied.len(), n);
    for i in 0..n {
        let mut got = applied[&(format!("a{i}"), format!("b{i}"))].clone();
        got.dedup();
        let want: Vec<String> = (0..k).map(|j| format!("c{i}m{j}")).collect();
        assert_eq!(got, want, "conversation {i}");
    }
}

#[tokio::test]
async fn a_failover_to_a_read_only_server_is_waited_out() {
    let app = TestApp::recording(|_, _| Reply::Slow(Duration::from_millis(5))).await;
    let (db, cfg, rec) = (&app.db, &app.cfg, &app.provider);
    let (n, k) = (8, 40);
    app.load("b", &conversations(n, k)).await;
    // The worker's own pool, so the test's connections stay writable.
    let store = Store::connect(&cfg.database, cfg.database.url.as_ref().unwrap())
        .await
        .unwrap();
    let providers = chatferry::providers::build_all(cfg).unwrap();
    let worker = Running::start(Worker::new(store, cfg, providers));
    wait_until(Duration::from_secs(20), "some calls", || rec.received() >= 20).await;

    // "Failover": every connection the worker opens from now on is to a
    // read-only server, and its old connections are cut.
    // An admin connection to the test server (not the test database).
    let mut admin = admin(&base_url()).await;
    sqlx::query(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let switched: f64 = sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&db.name)
    .execute(&mut admin)
    .await
    .unwrap();
    // Wait until the worker has tried to claim on a read-only connection.
    let start = Instant::now();
    loop {
        let tried: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND extract(epoch FROM backend_start) > $2
               AND query ILIKE '%UPDATE lanes%'",
        )
        .bind(&db.name)
        .bind(switched)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if tried > 0 {
            break;
        }
        assert!(!worker.is_finished(), "the worker exited on a read-only answer");
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the worker never tried to claim again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query(&format!(
        "ALTER DATABASE {} RESET default_transaction_read_only",
        db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let start = Instant::now();
    loop {
        let done = db
            .scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
            .await;
        if done == (n * k) as i64 {
            break;
        }
        assert!(
            !worker.is_finished(),
            "the worker exited: {:?}",
            worker.result().await
        );
        assert!(start.elapsed() < Duration::from_secs(60), "stuck at {done} done");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;
    assert_exact(rec, n, k);
}
