//! The daemon started in-process through the library, as `chatferry run`
//! starts it (`Daemon::build`, then `run_until_stopped`): its ops endpoint
//! answers over real HTTP, a loaded batch is delivered, and cancelling the
//! token stops it with no task left behind.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chatferry::daemon::{BuildError, Daemon};
use common::*;
use tokio_util::sync::CancellationToken;

/// A fresh database and a recording Tencent server that accepts every
/// message, with the ops endpoint on a free loopback port.
async fn setup() -> TestApp<Recorder> {
    TestApp::builder()
        .tencent(TencentTarget::default())
        .settings(|s| s.http.listen = Some("127.0.0.1:0".into()))
        .recorder(|_, _| Reply::Ok)
        .spawn()
        .await
}

/// Loads `n` messages from ann to two peers, in turn, into batch `batch`.
async fn load_batch(app: &TestApp<Recorder>, batch: &str, peers: [&str; 2], n: i64) {
    let start = now_ms() - 100_000;
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let to = peers[i as usize % 2];
            text_line(
                &format!("{batch}-{i}"),
                "ann",
                to,
                start + i,
                &format!("{batch} {i}"),
            )
        })
        .collect();
    assert_eq!(app.load(batch, &lines).await.jobs_new, n as u64);
}

/// A GET on the ops endpoint: status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Polls `check` until it holds; panics after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_ops_delivers_a_batch_and_stops_when_its_token_is_cancelled() {
    let app = setup().await;
    let (db, rec, cfg) = (&app.db, &app.provider, &app.cfg);
    load_batch(&app, "b1", ["bob", "cy"], 20).await;

    let daemon = Daemon::build(cfg).await.unwrap();
    let addr = daemon.ops_addr().expect("http.listen is set");
    let tasks = daemon.tasks();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(daemon.run_until_stopped(shutdown.clone()));

    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));
    eventually(Duration::from_secs(10), "/readyz to say ready", || async {
        get(addr, "/readyz").await == (200, "ready\n".to_string())
    })
    .await;
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("chatferry_leases_lost_total"), "{metrics}");

    eventually(Duration::from_secs(30), "the batch to be delivered", || async {
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
            .await
            == 20
    })
    .await;
    let applied = rec.applied();
    assert_eq!(applied.values().map(Vec::len).sum::<usize>(), 20);
    for texts in applied.values() {
        let order: Vec<i64> = texts
            .iter()
            .map(|t| t.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {texts:?}");
    }
    let (status, body) = get(addr, "/api/status").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["batches"][0]["batch"], "b1", "{v}");
    assert_eq!(v["batches"][0]["done"], 20, "{v}");

    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("run_until_stopped returns once its token is cancelled")
        .unwrap()
        .unwrap();
    assert!(report.halted.is_empty() && report.stuck.is_empty(), "{report:?}");
    assert!(tasks.is_closed() && tasks.is_empty(), "no daemon task left");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the ops endpoint no longer listens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_returns_by_itself_and_names_the_lanes_of_a_paused_batch() {
    let app = setup().await;
    let (db, rec, cfg) = (&app.db, &app.provider, &app.cfg);
    load_batch(&app, "sent", ["bob", "cy"], 4).await;
    load_batch(&app, "held", ["dan", "eve"], 4).await;
    assert_eq!(db.store.set_paused("held", true).await.unwrap(), 1);

    let daemon = Daemon::build(cfg).await.unwrap().exit_when_idle(true);
    let tasks = daemon.tasks();
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        daemon.run_until_stopped(CancellationToken::new()),
    )
    .await
    .expect("the run ends when the work runs out")
    .unwrap();

    assert!(report.halted.is_empty(), "{report:?}");
    assert_eq!(
        report.stuck.len(),
        2,
        "both lanes of the paused batch: {report:?}"
    );
    assert_eq!(report.stuck.iter().map(|l| l.open_jobs).sum::<i64>(), 4);
    assert_eq!(rec.received(), 4, "only the batch that is not paused was sent");
    assert!(tasks.is_closed() && tasks.is_empty(), "no daemon task left");
}

#[tokio::test]
async fn build_refuses_a_config_without_targets_and_a_listen_address_in_use() {
    let app = setup().await;
    let mut no_targets = app.settings.clone();
    no_targets.targets.clear();
    assert!(matches!(
        Daemon::build(&no_targets.config()).await,
        Err(BuildError::Config(e)) if e.0.contains("no targets configured")
    ));

    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut busy = app.settings.clone();
    busy.http.listen = Some(taken.local_addr().unwrap().to_string());
    let busy = busy.config();
    match Daemon::build(&busy).await {
        Err(BuildError::Listen(e)) => assert!(e.to_string().starts_with("cannot listen on http.listen")),
        Err(e) => panic!("expected a listen error, got {e}"),
        Ok(_) => panic!("expected a listen error, got a daemon"),
    }
}
