//! Operating the daemon: SIGTERM drains and a restart completes, pause and
//! resume, /metrics parses, /readyz follows the database.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP proxy to the test Postgres that can be cut.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let d = down.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if d.load(Ordering::Acquire) {
                    continue; // dropped: connection closed at once
                }
                let d = d.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = async { while !d.load(Ordering::Acquire) { tokio::time::sleep(Duration::from_millis(20)).await } } => {}
                    }
                });
            }
        });
        Proxy { port, down }
    }
}

fn write_config(db_url: &str, extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("daemon.toml");
    std::fs::write(
        &path,
        format!("[database]\nurl = \"{db_url}\"\n{FAST_WORKER}{extra}"),
    )
    .unwrap();
    (dir, path)
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

#[tokio::test]
async fn sigterm_drains_within_the_grace_and_a_restart_completes() {
    let rec = Recorder::start(|_, _| Reply::Slow(Duration::from_millis(30))).await;
    let db = TestDb::new().await;
    let (_dir, cfg_path) = write_config(&db.url, &tencent_target("tim", rec.addr));
    let cfg = config(&db, &format!("{FAST_WORKER}{}", tencent_target("tim", rec.addr)));
    let lines: Vec<String> = (0..400)
        .map(|i| {
            let (a, b) = (format!("s{}a", i % 40), format!("s{}b", i % 40));
            text_line(&format!("m{i}"), &a, &b, now_ms() - 600_000 + i, &format!("t{i}"))
        })
        .collect();
    load(&db, &cfg, "tim", "b", &[jsonl(&lines).path()], None).await;
    let bin = env!("CARGO_BIN_EXE_chatferry");
    let mut child = tokio::process::Command::new(bin)
        .args(["--config", cfg_path.to_str().unwrap(), "run"])
        .env_remove("DATABASE_URL")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "some calls", || rec.received() >= 40).await;
    let pid = child.id().unwrap() as i32;
    let sent_at = std::time::Instant::now();
    send_signal(pid, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits within the grace")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(sent_at.elapsed() < Duration::from_secs(5));
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'in_flight'")
            .await,
        0,
        "nothing left in doubt"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.lanes WHERE lease_owner IS NOT NULL")
            .await,
        0,
        "leases released"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM chatferry.workers").await, 0);
    let done_before = db
        .scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
        .await;
    assert!(done_before < 400, "stopped part-way");

    let out = tokio::process::Command::new(bin)
        .args(["--config", cfg_path.to_str().unwrap(), "run", "--exit-when-idle"])
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
            .await,
        400
    );
    assert_eq!(rec.received(), 400, "a drained stop resends nothing");
}

fn send_signal(pid: i32, sig: &str) {
    std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}

#[tokio::test]
async fn pause_parks_a_batch_and_resume_finishes_it() {
    let rec = Recorder::start(|_, _| Reply::Ok).await;
    let db = TestDb::new().await;
    let cfg = config(&db, &format!("{FAST_WORKER}{}", tencent_target("tim", rec.addr)));
    let now = now_ms() - 600_000;
    let a: Vec<String> = (0..50)
        .map(|i| text_line(&format!("a{i}"), &format!("p{}", i % 5), "q", now + i, "a"))
        .collect();
    let b: Vec<String> = (0..50)
        .map(|i| text_line(&format!("b{i}"), &format!("r{}", i % 5), "s", now + i, "b"))
        .collect();
    load(&db, &cfg, "tim", "one", &[jsonl(&a).path()], None).await;
    load(&db, &cfg, "tim", "two", &[jsonl(&b).path()], None).await;
    assert_eq!(db.store.set_paused("one", true).await.unwrap(), 1);
    run_until_idle(&db, &cfg).await;
    let st = db.store.status(None).await.unwrap();
    let one = st.iter().find(|s| s.batch == "one").unwrap();
    let two = st.iter().find(|s| s.batch == "two").unwrap();
    assert!(one.paused);
    assert_eq!((one.done, one.pending), (0, 50), "a paused batch is not sent");
    assert_eq!(two.done, 50, "other batches go on");
    db.store.set_paused("one", false).await.unwrap();
    run_until_idle(&db, &cfg).await;
    let st = db.store.status(Some("one")).await.unwrap();
    assert_eq!(st[0].done, 50);
    assert_eq!(rec.received(), 100);
}

#[tokio::test]
async fn metrics_parse_and_readyz_follows_the_database() {
    let rec = Recorder::start(|_, _| Reply::Ok).await;
    let db = TestDb::new().await;
    let upstream = {
        let u = reqwest::Url::parse(&db.url).unwrap();
        format!("{}:{}", u.host_str().unwrap(), u.port().unwrap_or(5432))
    };
    let proxy = Proxy::start(upstream).await;
    let mut via = reqwest::Url::parse(&db.url).unwrap();
    via.set_port(Some(proxy.port)).unwrap();
    let ops = free_port();
    let (_dir, cfg_path) = write_config(
        via.as_str(),
        &format!(
            "[http]\nlisten = \"127.0.0.1:{ops}\"\n{}",
            tencent_target("tim", rec.addr)
        ),
    );
    let cfg = config(&db, &tencent_target("tim", rec.addr));
    let lines: Vec<String> = (0..30)
        .map(|i| text_line(&format!("m{i}"), "x", "y", now_ms() - 1000 + i, "m"))
        .collect();
    load(&db, &cfg, "tim", "b", &[jsonl(&lines).path()], None).await;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatferry"))
        .args(["--config", cfg_path.to_str().unwrap(), "run"])
        .env_remove("DATABASE_URL")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{ops}");
    let mut ready = None;
    for _ in 0..250 {
        ready = http_get(&format!("{base}/readyz")).await;
        if ready.as_ref().is_some_and(|r| r.0 == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready.unwrap().0, 200);
    assert_eq!(http_get(&format!("{base}/healthz")).await.unwrap().0, 200);
    wait_until(Duration::from_secs(20), "all messages", || rec.received() >= 30).await;

    // Scrape and parse: every sample line is `name{labels} value`.
    let mut accepted = 0.0;
    for _ in 0..100 {
        let (status, text) = http_get(&format!("{base}/metrics")).await.unwrap();
        assert_eq!(status, 200);
        accepted = 0.0;
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
            if series.starts_with("chatferry_calls_total") && series.contains("outcome=\"accepted\"") {
                accepted += v;
            }
        }
        if accepted >= 30.0 && text.contains("chatferry_call_duration_seconds_bucket") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted, 30.0, "accepted calls counted");

    // Cut the database: not ready. Restore: ready again.
    proxy.down.store(true, Ordering::Release);
    let mut seen = 0;
    for _ in 0..300 {
        seen = http_get(&format!("{base}/readyz"))
            .await
            .map(|r| r.0)
            .unwrap_or(0);
        if seen == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 503, "not ready without the database");
    assert_eq!(
        http_get(&format!("{base}/healthz")).await.unwrap().0,
        200,
        "still alive"
    );
    proxy.down.store(false, Ordering::Release);
    for _ in 0..500 {
        seen = http_get(&format!("{base}/readyz"))
            .await
            .map(|r| r.0)
            .unwrap_or(0);
        if seen == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 200, "ready again");
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
