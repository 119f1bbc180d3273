//! Operating the daemon: SIGTERM drains and a restart completes, pause and
//! resume, /metrics parses, /readyz follows the database.

mod common;

use std::time::Duration;

use common::*;
use tokio::sync::watch;

/// A TCP proxy to the test Postgres that can be cut.
struct Proxy {
    port: u16,
    down: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (down, _) = watch::channel(false);
        let cut = down.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *cut.borrow() {
                    continue; // dropped: connection closed at once
                }
                tokio::spawn(relay(inbound, upstream.clone(), cut.subscribe()));
            }
        });
        Proxy { port, down }
    }

    /// Cuts every connection and refuses new ones (`true`), or lets them
    /// through again.
    fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

/// Copies between `inbound` and `upstream` until either closes or the
/// proxy is cut.
async fn relay(mut inbound: tokio::net::TcpStream, upstream: String, mut cut: watch::Receiver<bool>) {
    let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
        _ = cut.wait_for(|down| *down) => {}
    }
}

/// The status of `GET url`, 0 if nothing answered.
async fn status_of(url: &str) -> u16 {
    http_get(url, None).await.map(|r| r.0).unwrap_or(0)
}

/// The `chatferry_calls_total` samples of a scrape with an accepted
/// outcome, summed; every sample line must parse as `name{labels} value`.
fn accepted_calls(text: &str) -> f64 {
    let mut accepted = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        if series.starts_with("chatferry_calls_total") && series.contains("outcome=\"accepted\"") {
            accepted += v;
        }
    }
    accepted
}

#[tokio::test]
async fn sigterm_drains_within_the_grace_and_a_restart_completes() {
    let app = TestApp::recording(|_, _| Reply::Slow(Duration::from_millis(30))).await;
    let (db, rec) = (&app.db, &app.provider);
    let bin = app.binary();
    let lines: Vec<String> = (0..400)
        .map(|i| {
            let (a, b) = (format!("s{}a", i % 40), format!("s{}b", i % 40));
            text_line(&format!("m{i}"), &a, &b, now_ms() - 600_000 + i, &format!("t{i}"))
        })
        .collect();
    app.load("b", &lines).await;
    let mut child = chatferry_with(&bin.config)
        .arg("run")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "some calls", || rec.received() >= 40).await;
    let sent_at = std::time::Instant::now();
    signal(child.id().unwrap(), "TERM");
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

    let out = bin.cli(&["run", "--exit-when-idle"]).await;
    assert!(out.status.success());
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
            .await,
        400
    );
    assert_eq!(rec.received(), 400, "a drained stop resends nothing");
}

#[tokio::test]
async fn pause_parks_a_batch_and_resume_finishes_it() {
    let app = TestApp::recording(|_, _| Reply::Ok).await;
    let (db, rec) = (&app.db, &app.provider);
    let now = now_ms() - 600_000;
    let a: Vec<String> = (0..50)
        .map(|i| text_line(&format!("a{i}"), &format!("p{}", i % 5), "q", now + i, "a"))
        .collect();
    let b: Vec<String> = (0..50)
        .map(|i| text_line(&format!("b{i}"), &format!("r{}", i % 5), "s", now + i, "b"))
        .collect();
    app.load("one", &a).await;
    app.load("two", &b).await;
    assert_eq!(db.store.set_paused("one", true).await.unwrap(), 1);
    app.run_until_idle().await;
    let st = db.store.status(None).await.unwrap();
    let one = st.iter().find(|s| s.batch == "one").unwrap();
    let two = st.iter().find(|s| s.batch == "two").unwrap();
    assert!(one.paused);
    assert_eq!((one.done, one.pending), (0, 50), "a paused batch is not sent");
    assert_eq!(two.done, 50, "other batches go on");
    db.store.set_paused("one", false).await.unwrap();
    app.run_until_idle().await;
    let st = db.store.status(Some("one")).await.unwrap();
    assert_eq!(st[0].done, 50);
    assert_eq!(rec.received(), 100);
}

#[tokio::test]
async fn metrics_parse_and_readyz_follows_the_database() {
    let app = TestApp::recording(|_, _| Reply::Ok).await;
    let rec = &app.provider;
    let upstream = {
        let u = reqwest::Url::parse(&app.db.url).unwrap();
        format!("{}:{}", u.host_str().unwrap(), u.port().unwrap_or(5432))
    };
    let proxy = Proxy::start(upstream).await;
    let mut via = reqwest::Url::parse(&app.db.url).unwrap();
    via.set_port(Some(proxy.port)).unwrap();
    let ops = free_port();
    let mut settings = app.settings.clone();
    settings.database_url = Some(via.to_string());
    settings.http.listen = Some(format!("127.0.0.1:{ops}"));
    let bin = Binary::new(&settings);
    let lines: Vec<String> = (0..30)
        .map(|i| text_line(&format!("m{i}"), "x", "y", now_ms() - 1000 + i, "m"))
        .collect();
    app.load("b", &lines).await;

    let mut child = chatferry_with(&bin.config)
        .arg("run")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{ops}");
    let readyz = format!("{base}/readyz");
    let ready = poll(
        Duration::from_secs(5),
        || http_get(&readyz, None),
        |r| r.as_ref().is_some_and(|r| r.0 == 200),
    )
    .await;
    assert_eq!(ready.unwrap().0, 200);
    assert_eq!(status_of(&format!("{base}/healthz")).await, 200);
    wait_until(Duration::from_secs(20), "all messages", || rec.received() >= 30).await;

    // Scrape and parse: every sample line is `name{labels} value`.
    let metrics = format!("{base}/metrics");
    let (status, text) = poll(
        Duration::from_secs(5),
        || async { http_get(&metrics, None).await.unwrap() },
        |(status, text)| {
            *status != 200
                || (accepted_calls(text) >= 30.0 && text.contains("chatferry_call_duration_seconds_bucket"))
        },
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(accepted_calls(&text), 30.0, "accepted calls counted");

    // Cut the database: not ready. Restore: ready again.
    proxy.set_down(true);
    let seen = poll(Duration::from_secs(6), || status_of(&readyz), |s| *s == 503).await;
    assert_eq!(seen, 503, "not ready without the database");
    assert_eq!(status_of(&format!("{base}/healthz")).await, 200, "still alive");
    proxy.set_down(false);
    let seen = poll(Duration::from_secs(10), || status_of(&readyz), |s| *s == 200).await;
    assert_eq!(seen, 200, "ready again");
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
