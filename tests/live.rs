//! Issue 16, the cut-over: the ingest API, live delivery in real time, and
//! history and live messages to the same conversations, in order and
//! exactly once, through faults and a SIGKILL.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatferry::config::Config;
use chatferry::load::LoadOptions;
use common::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "live-t0ken";

/// The app's settings with the ingest API on `listen`, refusing bodies
/// over `max_body_bytes` (`None`: the default limit).
fn with_ingest(app: &TestApp<TestSim>, listen: &str, max_body_bytes: Option<usize>) -> Settings {
    let mut settings = app.settings.clone();
    settings.http.listen = Some(listen.into());
    settings.ingest = Some(IngestSettings {
        token: TOKEN.into(),
        max_body_bytes,
    });
    settings
}

/// Serves the ingest API in this process; returns its base URL.
async fn serve_ingest(app: &TestApp<TestSim>, cfg: &Config, stop: &CancellationToken) -> String {
    let ops = chatferry::ops::http::Ops {
        health: chatferry::ops::http::Health {
            store: app.db.store.clone(),
            draining: Arc::new(AtomicBool::new(false)),
        },
        token: None,
        targets: Vec::new(),
        worker: None,
        cache: Default::default(),
        ingest: chatferry::load::ingest::Ingest::from_config(cfg, app.db.store.clone()),
    };
    let addr = chatferry::ops::http::serve("127.0.0.1:0", ops, stop.clone())
        .await
        .unwrap();
    format!("http://{addr}")
}

async fn post(base: &str, target: &str, token: Option<&str>, body: String) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/targets/{target}/messages"))
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn start(kind: Kind, faults: chatferry::simulate::FaultConfig) -> TestApp<TestSim> {
    TestApp::simulated(Target::of(kind), SimSetup::faulty(faults)).await
}

/// A worker on `cfg` (the app's database), running in the background.
fn start_worker(app: &TestApp<TestSim>, cfg: &Config) -> Running {
    let providers = chatferry::providers::build_all(cfg).unwrap();
    Running::start(chatferry::worker::Worker::new(
        app.db.store.clone(),
        cfg,
        providers,
    ))
}

#[tokio::test]
async fn the_api_refuses_bad_tokens_bad_lines_and_big_bodies_and_reposts_store_nothing() {
    let app = start(Kind::Tencent, Default::default()).await;
    let cfg = with_ingest(&app, "127.0.0.1:0", Some(4096)).config();
    let stop = CancellationToken::new();
    let base = serve_ingest(&app, &cfg, &stop).await;
    let now = now_ms();
    let good = |id: &str| text_line(id, "ann", "bob", now - 1000, &format!("hello {id}"));
    let body = [
        good("a"),
        "{\"id\": \"b\", \"from\": \"ann\"".to_string(),
        good("c"),
        json!({"id": "d", "from": "ann", "to": "bob", "type": "text", "text": "x"}).to_string(),
    ]
    .join("\n");

    for token in [None, Some("wrong"), Some("live-t0ke")] {
        let (status, answer) = post(&base, "tim", token, body.clone()).await;
        assert_eq!(status, 401, "{token:?}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("Bearer"));
    }
    assert_eq!(app.jobs().await, 0, "a refused request stores nothing");

    let (status, answer) = post(&base, "tim", Some(TOKEN), body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(answer["known"], 0, "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{answer}");
    assert_eq!(rejected[0]["line"], 2);
    assert_eq!(rejected[1]["line"], 4);
    assert!(
        rejected[1]["reason"].as_str().unwrap().contains("sent_at_ms"),
        "{answer}"
    );
    assert_eq!(app.jobs().await, 2);
    // The live batch, with Tencent's real-time mode in the frozen body.
    let mode: String = sqlx::query_scalar("SELECT mode FROM chatferry.batches WHERE name = 'live'")
        .fetch_one(app.db.store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "live");
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM chatferry.jobs")
        .fetch_all(app.db.store.pool())
        .await
        .unwrap();
    for b in bodies {
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["SyncFromOldSystem"], 5, "{v}");
    }

    // The caller's retry after a lost answer: nothing new.
    let (status, answer) = post(&base, "tim", Some(TOKEN), body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        (answer["accepted"].clone(), answer["known"].clone()),
        (json!(0), json!(2)),
        "{answer}"
    );
    assert_eq!(app.jobs().await, 2);
    // The same id with other content is refused, as `load` refuses it.
    let changed = text_line("a", "ann", "bob", now - 1000, "something else");
    let (_, answer) = post(&base, "tim", Some(TOKEN), changed).await;
    assert_eq!(answer["accepted"], 0, "{answer}");
    assert!(
        answer["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("already loaded"),
        "{answer}"
    );

    // One JSON array works the same; its positions are its line numbers.
    let arr = format!("[{}, {{\"id\": 5}}]", good("e"));
    let (status, answer) = post(&base, "tim", Some(TOKEN), arr).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["rejected"][0]["line"], 2, "{answer}");

    // Not messages at all, an unknown target, an oversize body.
    let (status, answer) = post(&base, "tim", Some(TOKEN), "<xml/>".into()).await;
    assert_eq!(status, 400, "{answer}");
    let (status, _) = post(&base, "nope", Some(TOKEN), good("f")).await;
    assert_eq!(status, 404);
    let big = (0..100)
        .map(|i| good(&format!("big{i}")))
        .collect::<Vec<_>>()
        .join("\n");
    let (status, answer) = post(&base, "tim", Some(TOKEN), big).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("max_body_bytes"));
    assert_eq!(app.jobs().await, 3, "nothing of the refused requests was stored");
    // A history batch takes no live messages, and `load` no files into a
    // live batch.
    app.db.store.ensure_batch("files", "tim").await.unwrap();
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/targets/tim/messages?batch=files"))
        .bearer_auth(TOKEN)
        .body(good("g"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let f = jsonl(&[good("h")]);
    let options = load_options("tim", "live", &[f.path()], None);
    let e = chatferry::load::run(&app.db.store, &app.cfg, options)
        .await
        .unwrap_err();
    assert!(format!("{e:#}").contains("live batch"), "{e:#}");
    assert_eq!(app.jobs().await, 3);
    // The old system's clock a little ahead of ours is not "the future".
    let ahead = text_line("skew", "ann", "bob", now_ms() + 2000, "ahead");
    let (_, answer) = post(&base, "tim", Some(TOKEN), ahead).await;
    assert_eq!(answer["accepted"], 1, "{answer}");
    stop.cancel();
}

/// An oversize body without a declared length is refused once the limit
/// is passed, while the client is still sending: never read whole.
#[tokio::test]
async fn a_chunked_oversize_body_is_refused_before_it_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = start(Kind::Tencent, Default::default()).await;
    let cfg = with_ingest(&app, "127.0.0.1:0", Some(4096)).config();
    let stop = CancellationToken::new();
    let base = serve_ingest(&app, &cfg, &stop).await;
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/targets/tim/messages HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // 64 KB in 1 KB chunks, never the final chunk: the answer must come
    // anyway.
    let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
    for _ in 0..64 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
        .await
        .expect("an answer before the body ended")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    stop.cancel();
}

/// A worker that polls only every 5 s still delivers a live message in
/// well under a second: the API's NOTIFY wakes it.
#[tokio::test]
async fn a_live_message_to_an_idle_conversation_arrives_within_a_second() {
    let app = start(Kind::Zim, Default::default()).await;
    let mut settings = with_ingest(&app, "127.0.0.1:0", None);
    settings.worker_mut().poll_interval_ms = Some(5000);
    let cfg = settings.config();
    let stop = CancellationToken::new();
    let base = serve_ingest(&app, &cfg, &stop).await;
    let worker = start_worker(&app, &cfg);
    // Only a NOTIFY can wake it in time: wait until it listens.
    let listening = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query ILIKE 'LISTEN%'",
        app.db.name
    );
    app.db
        .wait_for_count(&listening, 1, Duration::from_secs(10))
        .await;

    let mut took = Vec::new();
    for i in 0..3 {
        let line = text_line(&format!("l{i}"), "ann", "bob", now_ms(), &format!("live {i}"));
        let sent = Instant::now();
        let (status, answer) = post(&base, "zim", Some(TOKEN), line).await;
        assert_eq!((status, answer["accepted"].clone()), (200, json!(1)), "{answer}");
        // Both views: the sender's and the recipient's.
        let want = 2 * (i + 1);
        wait_until(Duration::from_secs(10), "the live message stored", || {
            app.stored_count() >= want
        })
        .await;
        took.push(sent.elapsed());
        // Idle again before the next one: no lane is leased.
        let leased = "SELECT count(*) FROM chatferry.lanes WHERE lease_owner IS NOT NULL";
        app.db.wait_for_count(leased, 0, Duration::from_secs(10)).await;
    }
    eprintln!("live delivery to an idle conversation: {took:?}");
    for t in &took {
        assert!(*t < Duration::from_secs(1), "{took:?}");
    }
    stop.cancel();
    worker.stop().await;
}

/// Posts live messages to the corpus's conversations at `per_sec`,
/// retrying each request until the daemon answers (it is killed and
/// restarted meanwhile); returns what it posted. One request at a time,
/// so a conversation's messages are committed in their send order (as an
/// old system's callback would); `open_loop` posts each on its own task
/// instead, to hold a rate one client cannot (the bench).
async fn post_live(
    base: String,
    target: &'static str,
    pairs: Vec<(String, String)>,
    n: usize,
    per_sec: f64,
    open_loop: bool,
) -> Vec<Msg> {
    let client = reqwest::Client::new();
    let mut posted = Vec::new();
    let mut tasks = Vec::new();
    let every = Duration::from_secs_f64(1.0 / per_sec);
    let mut next = Instant::now();
    for k in 0..n {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        let (a, b) = &pairs[k % pairs.len()];
        let (from, to) = if k % 2 == 0 { (a, b) } else { (b, a) };
        let label = format!("live{k}");
        let at = now_ms();
        let line = text_line(&format!("live-{k}"), from, to, at, &label);
        posted.push(Msg {
            label,
            from: from.clone(),
            to: to.clone(),
            at,
            visible: vec![from.clone(), to.clone()],
            line: line.clone(),
        });
        let url = format!("{base}/v1/targets/{target}/messages");
        let post = post_until_stored(client.clone(), url, line);
        if open_loop {
            tasks.push(tokio::spawn(post));
        } else {
            post.await;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    posted
}

/// Posts one line until the API answers 200 with nothing rejected.
async fn post_until_stored(client: reqwest::Client, url: String, line: String) {
    loop {
        let r = client
            .post(&url)
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(2))
            .body(line.clone())
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => {
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["rejected"], json!([]), "{v}");
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// 5,000 history messages sending while live messages to the same
/// conversations arrive at 20/s, with transient faults and answers lost
/// after the provider applied the call, and one SIGKILL: every message
/// arrives exactly once, every view (ZIM) or conversation (Tencent) in
/// send-time order.
async fn history_and_live(kind: Kind) {
    let app = start(kind, faults(kind, 16, 0.03, 0.01)).await;
    let corpus = Shape::new(kind, 40, 5000).seed(16).non_text(0.1).generate();
    app.load_corpus(&corpus, "history").await;
    let port = free_port();
    // A real rate, so the backfill is still running when live traffic comes.
    let mut settings = with_ingest(&app, &format!("127.0.0.1:{port}"), None);
    settings.set_rate(kind.target(), 400.0);
    let bin = Binary::new(&settings);

    let mut pairs: Vec<(String, String)> = corpus
        .msgs
        .iter()
        .map(|m| (m.from.clone().min(m.to.clone()), m.from.clone().max(m.to.clone())))
        .collect();
    pairs.sort();
    pairs.dedup();
    let base = format!("http://127.0.0.1:{port}");
    let poster = tokio::spawn(post_live(base, kind.target(), pairs, 200, 20.0, false));

    let history_calls = app.jobs().await as u64;
    bin.run_and_kill_at(&app, history_calls / 3).await;
    let mut second = bin.spawn(false);
    let live = tokio::time::timeout(Duration::from_secs(120), poster)
        .await
        .expect("the live messages are posted")
        .unwrap();
    let mut all = corpus.msgs.clone();
    all.extend(live.iter().cloned());
    let want = Corpus { msgs: all };
    let total: usize = match kind {
        Kind::Zim => want.zim_views().values().map(Vec::len).sum(),
        Kind::Tencent => want.tim_conversations().values().map(Vec::len).sum(),
    };
    wait_until(Duration::from_secs(120), "every message stored", || {
        app.stored_count() >= total as u64
    })
    .await;
    // Let anything in doubt settle and any duplicate land before judging.
    let left = poll(Duration::from_secs(60), || app.not_done(), Vec::is_empty).await;
    assert!(left.is_empty(), "jobs left: {left:?}");
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    // Tencent sorts a conversation by time, so its live messages may pass
    // the history still queued; ZIM's views take calls in send-time order.
    app.assert_holds(&want, kind == Kind::Tencent);
    if kind == Kind::Tencent {
        let dump = app.provider.sim.dump();
        let mut live_modes = Vec::new();
        for c in dump["tencent"][0]["conversations"].as_array().unwrap() {
            for m in c["messages"].as_array().unwrap() {
                if tim_label(m).starts_with("live") {
                    live_modes.push(m["SyncFromOldSystem"].clone());
                } else {
                    assert_eq!(m["SyncFromOldSystem"], 2, "{m}");
                }
            }
        }
        assert_eq!(live_modes.len(), live.len());
        assert!(live_modes.iter().all(|m| *m == 5), "{live_modes:?}");
    }
    let latency: (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT latency_p50_secs, latency_p99_secs FROM chatferry.live_progress WHERE batch = 'live'",
    )
    .fetch_one(app.db.store.pool())
    .await
    .unwrap();
    eprintln!("{kind:?}: live delivery latency p50/p99 with a backfill, a kill and faults: {latency:?} s");
}

#[tokio::test]
async fn zim_history_and_live_in_order_exactly_once_through_a_kill() {
    history_and_live(Kind::Zim).await;
}

#[tokio::test]
async fn tencent_history_and_live_exactly_once_in_mode_5_through_a_kill() {
    history_and_live(Kind::Tencent).await;
}

/// `load --priority`: the higher batch's lanes are claimed first; `status
/// --json` shows each batch's mode and priority.
#[tokio::test]
async fn a_higher_priority_batch_is_claimed_first_and_status_shows_mode_and_priority() {
    let app = start(Kind::Tencent, Default::default()).await;
    let now = now_ms();
    let lines = |who: &str| -> Vec<String> {
        (0..20)
            .map(|i| {
                text_line(
                    &format!("m{i}"),
                    &format!("{who}1"),
                    &format!("{who}2"),
                    now - 60_000 + i,
                    &format!("{who}{i}"),
                )
            })
            .collect()
    };
    app.load("low", &lines("low")).await;
    let high = jsonl(&lines("high"));
    let options = LoadOptions {
        priority: Some(5),
        ..load_options("tim", "high", &[high.path()], None)
    };
    chatferry::load::run(&app.db.store, &app.cfg, options)
        .await
        .unwrap();
    let rows = app.db.store.status(None).await.unwrap();
    let v = chatferry::status::json(&rows);
    let batches = v["batches"].as_array().unwrap();
    let find = |name: &str| batches.iter().find(|b| b["batch"] == name).unwrap().clone();
    assert_eq!(
        (find("low")["mode"].clone(), find("low")["priority"].clone()),
        (json!("history"), json!(0))
    );
    assert_eq!(find("high")["priority"], 5, "{v}");

    // One lane at a time: the order of the claims is the order of arrival.
    let mut settings = app.settings.clone();
    let worker = settings.worker_mut();
    (worker.concurrency, worker.max_concurrency) = (Some(1), Some(1));
    let report = run_until_idle(&app.db, &settings.config()).await;
    assert!(report.halted.is_empty());
    let dump = app.provider.sim.dump();
    let arrivals = |who: &str| -> Vec<i64> {
        dump["tencent"][0]["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["a"].as_str().unwrap().starts_with(who))
            .flat_map(|c| {
                c["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["Arrival"].as_i64().unwrap())
            })
            .collect()
    };
    let (lo, hi) = (arrivals("low"), arrivals("high"));
    assert_eq!((lo.len(), hi.len()), (20, 20));
    assert!(
        hi.iter().max() < lo.iter().min(),
        "the high-priority batch went first: high {hi:?}, low {lo:?}"
    );
}

/// The `q` quantile of `to - from` over the live jobs, in seconds.
async fn live_seconds(app: &TestApp<TestSim>, q: f64, from: &str, to: &str) -> f64 {
    sqlx::query_scalar(&format!(
        "SELECT percentile_cont($1) WITHIN GROUP (ORDER BY extract(epoch FROM j.{to} - j.{from}))::float8
         FROM chatferry.jobs j JOIN chatferry.batches b ON b.id = j.batch_id WHERE b.mode = 'live'"
    ))
    .bind(q)
    .fetch_one(app.db.store.pool())
    .await
    .unwrap()
}

/// One bench point: live messages at `per_sec` for `secs` to idle
/// conversations, with or without a backfill of other conversations
/// running. Returns (p50, p99) of post-to-done in seconds, and the
/// backfill's and the live calls per second during the live window.
async fn live_point(per_sec: f64, secs: u64, backfill: bool) -> (f64, f64, f64, f64) {
    let app = start(Kind::Tencent, Default::default()).await;
    let limit = 200.0;
    if backfill {
        let corpus = Shape::new(Kind::Tencent, 200, 40_000).seed(7).generate();
        app.load_corpus(&corpus, "history").await;
    }
    let mut settings = with_ingest(&app, "127.0.0.1:0", None);
    settings.set_rate("tim", limit);
    let cfg = settings.config();
    let stop = CancellationToken::new();
    let base = serve_ingest(&app, &cfg, &stop).await;
    let worker = start_worker(&app, &cfg);
    if backfill {
        // The backfill at full speed: some seconds' worth sent.
        let sent = "SELECT count(*) FROM chatferry.jobs WHERE status = 'done'";
        let worth = poll(
            Duration::from_secs(30),
            || app.db.scalar(sent),
            |n| *n as f64 >= 3.0 * limit,
        )
        .await;
        assert!(
            worth as f64 >= 3.0 * limit,
            "the backfill never got going: {worth} sent"
        );
    }
    let pairs: Vec<(String, String)> = (0..50)
        .map(|i| (format!("live{i}a"), format!("live{i}b")))
        .collect();
    let t0 = now_ms();
    let n = (per_sec * secs as f64) as usize;
    post_live(base, "tim", pairs, n, per_sec, true).await;
    let t1 = now_ms();
    let open = "SELECT count(*) FROM chatferry.jobs j JOIN chatferry.batches b ON b.id = j.batch_id
                WHERE b.mode = 'live' AND j.status <> 'done'";
    let left = poll(Duration::from_secs(60), || app.db.scalar(open), |n| *n == 0).await;
    assert_eq!(left, 0, "live jobs left: {left}");
    // Post to done: the job row is created at the commit, just before the
    // API answers, so this is the delivery latency a caller sees.
    let p50 = live_seconds(&app, 0.5, "created_at", "finished_at").await;
    let p99 = live_seconds(&app, 0.99, "created_at", "finished_at").await;
    let phases = (
        live_seconds(&app, 0.5, "created_at", "first_in_flight_at").await,
        live_seconds(&app, 0.5, "first_in_flight_at", "finished_at").await,
    );
    eprintln!(
        "live p50: commit to in-flight mark {:.3} s, mark to done {:.3} s",
        phases.0, phases.1
    );
    let history: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM chatferry.jobs j JOIN chatferry.batches b ON b.id = j.batch_id
         WHERE b.mode = 'history' AND j.finished_at BETWEEN to_timestamp($1 / 1000.0) AND to_timestamp($2 / 1000.0)",
    )
    .bind(t0 as f64)
    .bind(t1 as f64)
    .fetch_one(app.db.store.pool())
    .await
    .unwrap();
    stop.cancel();
    worker.stop().await;
    let window = (t1 - t0) as f64 / 1000.0;
    (p50, p99, history as f64 / window, n as f64 / window)
}

/// The bench rows of issue 16 (`scripts/bench g`): live delivery latency
/// at 20 and 100 messages/s, with and without a running backfill, and the
/// backfill's share of the rate (Tencent, limit 200/s) meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: scripts/bench g"]
async fn bench_live_delivery() {
    let only: Option<f64> = std::env::var("BENCH_LIVE_RATE").ok().and_then(|v| v.parse().ok());
    for backfill in [false, true] {
        for per_sec in [20.0, 100.0] {
            if only.is_some_and(|r| r != per_sec) || (only.is_some() && !backfill) {
                continue;
            }
            let (p50, p99, hist, live) = live_point(per_sec, 10, backfill).await;
            println!(
                "| i  | live {per_sec}/s (posted {live:.1}/s), Tencent limit 200/s, {} | latency p50 {:.3} s, p99 {:.3} s; backfill {:.1} calls/s = {:.2} of the limit |",
                if backfill { "backfill of 40,000 running" } else { "no backfill" },
                p50,
                p99,
                hist,
                hist / 200.0
            );
        }
    }
}
