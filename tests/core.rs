//! Issue 2's guarantees, against a real Postgres and a real HTTP provider
//! on loopback: idempotent loading, per-lane order, retries, permanent
//! failures under skip and block, lane exclusivity across workers, and
//! resumption after a worker is killed.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chatferry::config::OnPermanentError;
use chatferry::providers::tencent::codes as tc;

use common::*;

/// `n` conversations; conversation i has 1 + i % 7 messages whose times go
/// forwards, with some same-millisecond ties. Lines are written in an
/// interleaved, time-shuffled order so the loader must sort by sent_at_ms
/// and then input order. Returns the lines and the expected text order per
/// conversation.
/// Texts in order per conversation.
type Expected = HashMap<(String, String), Vec<String>>;

fn corpus(n: usize, base: i64) -> (Vec<String>, Expected) {
    let mut per_conv: Vec<Vec<(i64, String, String)>> = Vec::new();
    let mut expected = HashMap::new();
    for i in 0..n {
        let (a, b) = (format!("u{i}a"), format!("u{i}b"));
        let count = 1 + i % 7;
        let mut msgs = Vec::new();
        for k in 0..count {
            // Every third message shares the previous one's millisecond.
            let at = base + (k as i64 / 3) * 1000 + (k as i64 % 3 != 2) as i64 * k as i64;
            let (from, to) = if k % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let text = format!("c{i}m{k}");
            msgs.push((at, text.clone(), text_line(&format!("m{k}"), from, to, at, &text)));
        }
        // Expected: by time, then input order (k order among ties).
        let mut sorted = msgs.clone();
        sorted.sort_by_key(|m| m.0);
        expected.insert(
            conv(&a, &b),
            sorted.iter().map(|m| m.1.clone()).collect::<Vec<_>>(),
        );
        per_conv.push(msgs);
    }
    // Input: conversations interleaved, later times first (the loader must
    // reorder), ties in k order (input order decides them).
    let mut lines: Vec<(usize, (i64, String, String))> = per_conv
        .iter()
        .flat_map(|msgs| msgs.iter().cloned().enumerate())
        .collect();
    lines.sort_by(|x, y| y.1 .0.cmp(&x.1 .0).then(x.0.cmp(&y.0)));
    (lines.into_iter().map(|(_, m)| m.2).collect(), expected)
}

fn assert_order(rec: &Recorder, expected: &Expected) {
    let got = rec.applied();
    assert_eq!(got.len(), expected.len(), "conversations received");
    for (c, want) in expected {
        let have = got.get(c).cloned().unwrap_or_default();
        assert_eq!(&have, want, "order of conversation {c:?}");
    }
}

#[tokio::test]
async fn loading_is_idempotent_across_files_and_batches() {
    let app = TestApp::builder().tencent(TencentTarget::default()).spawn().await;
    let (db, cfg) = (&app.db, &app.cfg);
    let now = now_ms() - 60_000;
    let a: Vec<String> = (0..100)
        .map(|i| text_line(&format!("m{i}"), &format!("u{}", i % 10), "peer", now + i, "x"))
        .collect();
    let b: Vec<String> = (50..150)
        .map(|i| text_line(&format!("m{i}"), &format!("u{}", i % 10), "peer", now + i, "x"))
        .collect();
    let (fa, fb) = (jsonl(&a), jsonl(&b));
    let s = load(db, cfg, "tim", "one", &[fa.path()], None).await;
    assert_eq!((s.accepted, s.jobs_new), (100, 100));
    let s = load(db, cfg, "tim", "one", &[fa.path()], None).await;
    assert_eq!(
        (s.accepted, s.jobs_new),
        (100, 0),
        "same file again stores nothing"
    );
    let s = load(db, cfg, "tim", "two", &[fa.path()], None).await;
    assert_eq!(s.jobs_new, 0, "another batch name stores nothing");
    let s = load(db, cfg, "tim", "two", &[fb.path()], None).await;
    assert_eq!(s.jobs_new, 50, "overlapping file stores only the new half");
    assert_eq!(db.scalar("SELECT count(*) FROM chatferry.jobs").await, 150);
    assert_eq!(db.scalar("SELECT count(*) FROM chatferry.lanes").await, 10);
    let st = db.store.status(None).await.unwrap();
    let total: i64 = st.iter().map(|b| b.total).sum();
    assert_eq!(total, 150);
}

#[tokio::test]
async fn rejects_name_their_line_and_the_rest_loads() {
    let app = TestApp::builder()
        .tencent(TencentTarget::default())
        .settings(|s| s.load.max_line_bytes = Some(4096))
        .spawn()
        .await;
    let (db, cfg) = (&app.db, &app.cfg);
    let now = now_ms() - 1000;
    let lines = vec![
        text_line("1", "a", "b", now, "good"),
        "{not json".to_string(),
        text_line("2", "a", "b", now, "good too"),
        r#"{"id":"3","to":"b","sent_at_ms":1,"type":"text","text":"x"}"#.to_string(),
        text_line("4", "a", "b", now + 3_600_000, "future"),
        String::new(),
        text_line("5", &"x".repeat(40), "b", now, "id too long"),
        format!(
            r#"{{"id":"6","from":"a","to":"b","sent_at_ms":{now},"type":"text","text":"{}"}}"#,
            "y".repeat(5000)
        ),
        text_line("7", "a", "b", now, "last good"),
    ];
    let f = jsonl(&lines);
    let rej = tempfile::NamedTempFile::new().unwrap();
    let s = load(db, cfg, "tim", "b", &[f.path()], Some(rej.path().to_path_buf())).await;
    assert_eq!(s.accepted, 3);
    assert_eq!(s.rejected, 5);
    let rejects: Vec<serde_json::Value> = std::fs::read_to_string(rej.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_line: HashMap<u64, String> = rejects
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(by_line[&2].contains("invalid JSON"), "{by_line:?}");
    assert!(by_line[&4].contains("missing field `from`"), "{by_line:?}");
    assert!(by_line[&5].contains("future"), "{by_line:?}");
    assert!(by_line[&7].contains("at most 32"), "{by_line:?}");
    assert!(by_line[&8].contains("byte limit"), "{by_line:?}");
    assert_eq!(db.scalar("SELECT count(*) FROM chatferry.jobs").await, 3);
}

#[tokio::test]
async fn zim_expands_one_job_per_visible_view() {
    let app = TestApp::builder().zim(ZimTarget::default()).spawn().await;
    let now = now_ms() - 1000;
    let lines = vec![
        text_line("1", "alice", "bob", now, "both"),
        serde_json::json!({"id": "2", "from": "alice", "to": "bob", "sent_at_ms": now, "type": "text", "text": "bob deleted it", "visible_to": ["alice"]}).to_string(),
        serde_json::json!({"id": "3", "from": "alice", "to": "bob", "sent_at_ms": now, "type": "text", "text": "stranger", "visible_to": ["carol"]}).to_string(),
        text_line("4", "alice", "bob", now - 30 * 86_400_000, "too old"),
        text_line("5", "al/ice", "bob", now, "bad char"),
    ];
    let s = app.load("b", &lines).await;
    assert_eq!((s.accepted, s.rejected, s.jobs_new), (2, 3, 3));
    let views: Vec<(String, i64)> = sqlx::query_as(
        "SELECT l.view_user, count(*) FROM chatferry.jobs j JOIN chatferry.lanes l ON l.id = j.lane_id GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(app.db.store.pool())
    .await
    .unwrap();
    assert_eq!(views, vec![("alice".to_string(), 2), ("bob".to_string(), 1)]);
}

#[tokio::test]
async fn thousand_lanes_arrive_each_in_lane_order() {
    let app = TestApp::recording(|_, _| Reply::Ok).await;
    let (db, rec) = (&app.db, &app.provider);
    let (lines, expected) = corpus(1000, now_ms() - 3_600_000);
    let s = app.load("b", &lines).await;
    assert_eq!(s.rejected, 0);
    let report = app.run_until_idle().await;
    assert!(report.halted.is_empty());
    assert_order(rec, &expected);
    assert_eq!(
        rec.received() as u64,
        s.jobs_new,
        "each message sent exactly once"
    );
    assert_eq!(rec.overlaps(), 0, "never two calls in flight in one lane");
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status <> 'done'")
            .await,
        0
    );
}

#[tokio::test]
async fn retry_later_waits_in_place_and_keeps_order() {
    // Every third message gets a transient error twice, then goes through.
    let app = TestApp::recording(|v, nth| {
        let text = v["MsgBody"][0]["MsgContent"]["Text"].as_str().unwrap_or_default();
        let k: u32 = text.rsplit('m').next().unwrap().parse().unwrap();
        if k % 3 == 0 && nth <= 2 {
            Reply::Code(tc::INTERNAL_90994)
        } else {
            Reply::Ok
        }
    })
    .await;
    let (db, rec) = (&app.db, &app.provider);
    let (lines, expected) = corpus(60, now_ms() - 3_600_000);
    app.load("b", &lines).await;
    app.run_until_idle().await;
    assert_order(rec, &expected);
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status <> 'done'")
            .await,
        0
    );
    let retried = db
        .scalar("SELECT count(*) FROM chatferry.jobs WHERE attempts = 3 AND last_code = 90994")
        .await;
    assert!(retried > 0, "retried jobs keep their last code");
}

/// A rate-limit answer means a slight overshoot of a known limit: the call
/// is resent (in order) and the shared pace is nudged down by 1 %, not
/// halved as before.
#[tokio::test]
async fn a_rate_limit_answer_is_resent_and_nudges_the_pace() {
    // The first call of every message is refused as over the limit.
    let app = TestApp::recording(|_, nth| {
        if nth == 1 {
            Reply::Code(tc::RATE_LIMITED_60007)
        } else {
            Reply::Ok
        }
    })
    .await;
    let (db, rec) = (&app.db, &app.provider);
    let (lines, expected) = corpus(3, now_ms() - 3_600_000);
    app.load("b", &lines).await;
    app.run_until_idle().await;
    assert_order(rec, &expected);
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done' AND attempts = 2")
            .await,
        db.scalar("SELECT count(*) FROM chatferry.jobs").await
    );
    let factor: f64 = sqlx::query_scalar("SELECT factor FROM chatferry.target_rates WHERE target = 'tim'")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert!(factor > 0.9, "the pace was cut to {factor} of the limit");
}

async fn permanent_run(mode: OnPermanentError) -> TestApp<Recorder> {
    // Message 1 of every conversation is refused for good (90001).
    let app = TestApp::builder()
        .tencent(TencentTarget::default())
        .worker(move |w| w.on_permanent_error = Some(mode))
        .recorder(|v, _| {
            let text = v["MsgBody"][0]["MsgContent"]["Text"].as_str().unwrap_or_default();
            if text.ends_with("m1") {
                Reply::Code(tc::JSON_INVALID)
            } else {
                Reply::Ok
            }
        })
        .spawn()
        .await;
    let now = now_ms() - 600_000;
    let mut lines = Vec::new();
    for c in 0..5 {
        for k in 0..4 {
            lines.push(text_line(
                &format!("m{k}"),
                &format!("a{c}"),
                &format!("b{c}"),
                now + k,
                &format!("c{c}m{k}"),
            ));
        }
    }
    app.load("b", &lines).await;
    app.run_until_idle().await;
    app
}

#[tokio::test]
async fn permanent_failure_skips_and_the_lane_goes_on() {
    let app = permanent_run(OnPermanentError::Skip).await;
    let (db, rec) = (&app.db, &app.provider);
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'failed' AND last_code = 90001")
            .await,
        5
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
            .await,
        15
    );
    let applied = rec.applied();
    assert_eq!(applied[&conv("a0", "b0")], vec!["c0m0", "c0m2", "c0m3"]);
    let reason: String =
        sqlx::query_scalar("SELECT last_error FROM chatferry.jobs WHERE status = 'failed' LIMIT 1")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert!(reason.contains("refused the message"), "{reason}");
}

#[tokio::test]
async fn permanent_failure_blocks_the_lane_when_asked() {
    let app = permanent_run(OnPermanentError::Block).await;
    let (db, rec) = (&app.db, &app.provider);
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'failed'")
            .await,
        5
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
            .await,
        5
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'pending'")
            .await,
        10
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.lanes WHERE blocked_job IS NOT NULL")
            .await,
        5
    );
    assert_eq!(rec.applied()[&conv("a0", "b0")], vec!["c0m0"]);
}

#[tokio::test]
async fn two_workers_never_share_a_lane() {
    let app = TestApp::recording(|_, _| Reply::Slow(Duration::from_millis(2))).await;
    let (db, rec) = (&app.db, &app.provider);
    let (lines, expected) = corpus(150, now_ms() - 3_600_000);
    app.load("b", &lines).await;
    let (r1, r2) = tokio::join!(app.run_until_idle(), app.run_until_idle());
    assert!(r1.halted.is_empty() && r2.halted.is_empty());
    assert_eq!(rec.overlaps(), 0, "two calls in flight in one lane");
    assert_order(rec, &expected);
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status <> 'done'")
            .await,
        0
    );
}

#[tokio::test]
async fn unknown_outcome_is_reconciled_by_resending_for_a_deduplicating_provider() {
    // The first attempt of every even message is applied, then the
    // connection drops: the worker cannot know, and resends.
    let app = TestApp::recording(|v, nth| {
        let text = v["MsgBody"][0]["MsgContent"]["Text"].as_str().unwrap_or_default();
        let k: u32 = text.rsplit('m').next().unwrap().parse().unwrap();
        if k % 2 == 0 && nth == 1 {
            Reply::ApplyThenDrop
        } else {
            Reply::Ok
        }
    })
    .await;
    let (db, rec) = (&app.db, &app.provider);
    let now = now_ms() - 600_000;
    let lines: Vec<String> = (0..6)
        .map(|k| text_line(&format!("m{k}"), "a", "b", now + k, &format!("c0m{k}")))
        .collect();
    app.load("b", &lines).await;
    app.run_until_idle().await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
            .await,
        6
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE attempts = 2")
            .await,
        3
    );
    // Resent with the identical triple: the provider's dedup makes it one.
    let applied = &rec.applied()[&conv("a", "b")];
    assert_eq!(
        applied,
        &vec!["c0m0", "c0m0", "c0m1", "c0m2", "c0m2", "c0m3", "c0m4", "c0m4", "c0m5"]
    );
}

#[tokio::test]
async fn a_killed_worker_is_taken_over_after_its_lease() {
    let app = TestApp::recording(|_, _| Reply::Slow(Duration::from_millis(3))).await;
    let (db, rec) = (&app.db, &app.provider);
    let bin = app.binary();
    let (lines, expected) = corpus(200, now_ms() - 3_600_000);
    let s = app.load("b", &lines).await;

    let mut first = chatferry_with(&bin.config)
        .arg("run")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let third = s.jobs_new as usize / 3;
    wait_until(Duration::from_secs(60), "a third of the messages", || {
        rec.received() >= third
    })
    .await;
    first.start_kill().unwrap(); // SIGKILL
    first.wait().await.unwrap();
    let at_kill = db
        .scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'in_flight'")
        .await;

    let out = bin.cli(&["run", "--exit-when-idle"]).await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status <> 'done'")
            .await,
        0
    );
    // Nothing lost, order kept (duplicates aside) ...
    let got = rec.applied();
    for (c, want) in &expected {
        let mut have = got[c].clone();
        have.dedup();
        assert_eq!(&have, want, "order of {c:?}");
    }
    // ... and the only repeats are the calls that were in flight at the kill.
    let repeats: usize = got.values().map(|v| v.len()).sum::<usize>() - s.jobs_new as usize;
    assert!(
        repeats as i64 <= at_kill,
        "{repeats} repeats but only {at_kill} calls were in doubt"
    );
    let resent = db
        .scalar("SELECT count(*) FROM chatferry.jobs WHERE attempts > 1")
        .await;
    assert!(
        repeats as i64 <= resent && resent <= at_kill,
        "repeats {repeats}, resent {resent}, in doubt {at_kill}"
    );
}
