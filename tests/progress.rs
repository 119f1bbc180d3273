//! Issue 14, parts 5 and 6: the per-batch counters that `status`, the
//! `batch_progress` view and the backlog gauge read agree with a full
//! count of the jobs after every kind of change, and `purge` removes only
//! a finished batch's jobs.

mod common;

use std::time::Duration;

use chatferry::providers::tencent::codes as tc;

use common::*;

/// Counters, the view and the gauge against a full count, per batch and
/// status.
async fn assert_counters_match(db: &TestDb, when: &str) {
    let pool = db.store.pool();
    let full: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT batch_id, status::text, count(*) FROM chatferry.jobs GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let counted: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT batch_id, status::text, sum(n)::bigint FROM chatferry.job_counts
         GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(counted, full, "counters after {when}");
    let done_full: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT batch_id, extract(epoch FROM date_trunc('minute', finished_at))::bigint, count(*)
         FROM chatferry.jobs WHERE status = 'done' GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let done_counted: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT batch_id, extract(epoch FROM minute)::bigint, sum(n)::bigint FROM chatferry.job_done_minutes
         GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(done_counted, done_full, "done per minute after {when}");
    let shown: i64 = db.store.status(None).await.unwrap().iter().map(|b| b.total).sum();
    let open: i64 = db
        .store
        .backlog()
        .await
        .unwrap()
        .iter()
        .filter(|(s, _)| s == "pending" || s == "in_flight")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        shown,
        full.iter().map(|r| r.2).sum::<i64>(),
        "status total after {when}"
    );
    let open_full: i64 = full
        .iter()
        .filter(|r| r.1 == "pending" || r.1 == "in_flight")
        .map(|r| r.2)
        .sum();
    assert_eq!(open, open_full, "backlog after {when}");
}

/// `n` two-user conversations of four messages each, users prefixed `p`.
fn lines(p: &str, n: usize) -> Vec<String> {
    let now = now_ms() - 600_000;
    let mut out = Vec::new();
    for c in 0..n {
        for k in 0..4 {
            let (from, to) = (format!("{p}{c}a"), format!("{p}{c}b"));
            out.push(text_line(
                &format!("m{k}"),
                &from,
                &to,
                now + k,
                &format!("{p}{c}m{k}"),
            ));
        }
    }
    out
}

/// Each job of batch `name`: id, status and body.
async fn batch_jobs(db: &TestDb, name: &str) -> Vec<(i64, String, String)> {
    sqlx::query_as(
        "SELECT j.id, j.status::text, j.body FROM chatferry.jobs j
         JOIN chatferry.batches b ON b.id = j.batch_id WHERE b.name = $1 ORDER BY j.id",
    )
    .bind(name)
    .fetch_all(db.store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn counters_equal_a_full_count_after_loads_retries_skips_purges_and_crashes() {
    // First attempts: m1 refused for good, m2 refused for now; the rest
    // (and every later attempt) go through, slowly enough to crash midway.
    let app = TestApp::recording(|v, nth| {
        let text = v["MsgBody"][0]["MsgContent"]["Text"].as_str().unwrap_or_default();
        match nth {
            1 if text.ends_with("m1") => Reply::Code(tc::JSON_INVALID),
            1 if text.ends_with("m2") => Reply::Code(tc::INTERNAL_90994),
            _ => Reply::Slow(Duration::from_millis(3)),
        }
    })
    .await;
    let (db, cfg, rec) = (&app.db, &app.cfg, &app.provider);
    let bin = app.binary();

    let a = jsonl(&lines("a", 100));
    load(db, cfg, "tim", "a", &[a.path()], None).await;
    load(db, cfg, "tim", "a", &[a.path()], None).await; // a no-op reload
    let mut b = lines("b", 20);
    b.push(text_line("m0", "a0a", "a0b", now_ms() - 1000, "a reused id")); // refused
    app.load("b", &b).await;
    assert_counters_match(db, "loads").await;

    let mut run = chatferry_with(&bin.config)
        .arg("run")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "a third of the calls", || {
        rec.received() >= 160
    })
    .await;
    run.start_kill().unwrap(); // SIGKILL: in-flight marks stay behind
    run.wait().await.unwrap();
    assert_counters_match(db, "a crash").await;

    app.run_until_idle().await;
    assert_counters_match(db, "a run with retries and failures").await;
    let failed = db
        .scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'failed'")
        .await;
    assert!(failed > 0, "some jobs failed for good");
    assert_eq!(
        db.store.retry_failed("a", None).await.unwrap() as i64,
        failed - 20
    );
    assert_counters_match(db, "retry").await;
    // By hand, as README's "Operating it through SQL" shows, from a
    // session whose search_path does not name chatferry's schema.
    let mut tx = db.store.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL search_path = public")
        .execute(&mut *tx)
        .await
        .unwrap();
    let by_hand = sqlx::query(
        "UPDATE chatferry.jobs SET status = 'pending', next_attempt_at = now() WHERE status = 'failed'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(by_hand.rows_affected(), 20);
    assert_counters_match(db, "a retry through SQL").await;

    app.load("c", &lines("c", 3)).await;
    let job = db
        .scalar(
            "SELECT min(j.id) FROM chatferry.jobs j JOIN chatferry.batches b ON b.id = j.batch_id
             WHERE b.name = 'c'",
        )
        .await;
    db.store
        .skip_job(job)
        .await
        .unwrap()
        .expect("a pending job to skip");
    assert_counters_match(db, "skip").await;

    app.run_until_idle().await;
    let out = bin.cli(&["purge", "--batch", "a"]).await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_counters_match(db, "purge").await;
    sqlx::query("SELECT chatferry.job_counts_compact()")
        .execute(db.store.pool())
        .await
        .unwrap();
    assert_counters_match(db, "compaction").await;
}

#[tokio::test]
async fn purge_refuses_an_unfinished_batch_and_leaves_other_batches_untouched() {
    let app = TestApp::recording(|_, _| Reply::Ok).await;
    let db = &app.db;
    let bin = app.binary();
    app.load("old", &lines("o", 30)).await;

    // Unfinished: refused, dry run or not, and nothing is removed.
    for args in [
        &["purge", "--batch", "old"][..],
        &["purge", "--batch", "old", "--dry-run"],
    ] {
        let out = bin.cli(args).await;
        let err = &out.stderr;
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("batch old is not finished: 120 jobs pending"),
            "{err}"
        );
    }
    assert_eq!(db.scalar("SELECT count(*) FROM chatferry.jobs").await, 120);

    app.run_until_idle().await;
    app.load("new", &lines("n", 10)).await;
    let before = batch_jobs(db, "new").await;
    assert_eq!(before.len(), 40);

    let out = bin.cli(&["purge", "--batch", "old", "--dry-run"]).await;
    let said = &out.stdout;
    assert!(
        out.status.success() && said.contains("would remove 120 finished jobs"),
        "{said}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM chatferry.jobs").await, 160);

    let out = bin.cli(&["purge", "--batch", "old"]).await;
    let said = &out.stdout;
    assert!(
        out.status.success() && said.contains("120 jobs removed"),
        "{said}"
    );
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM chatferry.jobs j JOIN chatferry.batches b ON b.id = j.batch_id
             WHERE b.name = 'old'"
        )
        .await,
        0
    );
    let after = batch_jobs(db, "new").await;
    assert_eq!(after, before, "the other batch is untouched");

    let out = bin.cli(&["purge", "--batch", "new"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = bin.cli(&["purge", "--batch", "nope"]).await;
    let err = &out.stderr;
    assert!(
        out.status.code() == Some(2) && err.contains("no batch named nope"),
        "{err}"
    );
    // The other batch still runs to the end after the purge.
    app.run_until_idle().await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
            .await,
        40
    );
}
