//! Issue 12: database faults never strand, double or drop a message. A
//! bad write in a group commit fails alone; the in-flight mark is fenced
//! on the database's clock; a failover's stale connections are dropped.
//! Interleavings are driven by a second connection holding a row lock.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatferry::worker::{HookPoint, Worker};
use futures::FutureExt;

use chatferry::store::checkpoint::Checkpoints;
use chatferry::store::ProviderIds;
use common::*;

/// Waits until some backend of `db` waits on a lock.
async fn wait_for_lock_waiter(db: &TestDb) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock'",
        db.name
    );
    let start = std::time::Instant::now();
    while db.scalar(&sql).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nobody waits on the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Loads `n` one-message conversations and claims every lane.
async fn claimed_lanes(db: &TestDb, n: usize) -> Vec<(chatferry::store::Lease, i64)> {
    let cfg = config(&db, &tencent_target("tim", "127.0.0.1:9".parse().unwrap()));
    let now = now_ms() - 600_000;
    let lines: Vec<String> = (0..n)
        .map(|i| text_line("m", &format!("a{i}"), "b", now, "t"))
        .collect();
    load(db, &cfg, "tim", "b", &[jsonl(&lines).path()], None).await;
    let owner = uuid::Uuid::new_v4();
    let lanes = db
        .store
        .claim_lanes(
            owner,
            n as i64,
            Duration::from_secs(30),
            &["tim".to_string()],
            &[],
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
    let db = TestDb::new().await;
    let lanes = claimed_lanes(&db, 3).await;
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
    wait_for_lock_waiter(&db).await;
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
    assert_eq!(rb.unwrap(), true, "the good write of the same group is kept");
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
    let rec = Recorder::start({
        let arrived = arrived.clone();
        move |_, _| {
            arrived.lock().unwrap().get_or_insert_with(Instant::now);
            Reply::Ok
        }
    })
    .await;
    let db = TestDb::new().await;
    let cfg = config(&db, &format!("{FAST_WORKER}{}", tencent_target("tim", rec.addr)));
    let now = now_ms() - 600_000;
    load(
        &db,
        &cfg,
        "tim",
        "b",
        &[jsonl(&[text_line("m", "a", "b", now, "t")]).path()],
        None,
    )
    .await;
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
            if shortened.lock().unwrap().is_some() {
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
                *shortened.lock().unwrap() = Some(Instant::now());
            }
            .boxed()
        })
    };
    let providers = chatferry::providers::build_all(&cfg).unwrap();
    let w = Worker::new(db.store.clone(), &cfg, providers);
    w.set_hook(hook);
    w.run(tokio_util::sync::CancellationToken::new(), true)
        .await
        .unwrap();
    let cut = shortened.lock().unwrap().expect("the hook ran");
    let first = arrived.lock().unwrap().expect("the message was sent");
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
