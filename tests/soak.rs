//! Issue 12, the longer runs: operator commands from another process
//! during a run, SIGTERM during slow ZIM calls then a restart elsewhere,
//! and a Postgres restart between a call and its checkpoint.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatferry::config::OnPermanentError;
use common::*;

/// 2,000 messages in 20 conversations; every 40th is refused for good the
/// first time (the lane blocks there). Meanwhile another process pauses
/// and resumes the batch, retries its failures and now and then skips a
/// failed job, every couple of hundred milliseconds. Every message not
/// skipped arrives exactly once and in order; nothing is left open; the
/// final `run --exit-when-idle` exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_from_another_process_during_2000_messages() {
    let app = TestApp::builder()
        .tencent(TencentTarget::default())
        .worker(|w| w.on_permanent_error = Some(OnPermanentError::Block))
        .settings(|s| s.log = Some(LogSettings::warn()))
        .recorder(|v, nth| {
            let text = v["MsgBody"][0]["MsgContent"]["Text"].as_str().unwrap_or_default();
            if text.ends_with('!') && nth == 1 {
                Reply::Code(90001)
            } else {
                Reply::Slow(Duration::from_millis(10))
            }
        })
        .spawn()
        .await;
    let (db, rec) = (&app.db, &app.provider);
    let bin = app.binary();
    let (convs, per) = (20usize, 100usize);
    let now = now_ms() - 600_000;
    let text = |i: usize, j: usize| {
        let bang = if (i * per + j) % 40 == 7 { "!" } else { "" };
        format!("c{i}m{j}{bang}")
    };
    let mut lines = Vec::new();
    for j in 0..per {
        for i in 0..convs {
            lines.push(text_line(
                &format!("m{j}"),
                &format!("a{i}"),
                &format!("b{i}"),
                now + j as i64,
                &text(i, j),
            ));
        }
    }
    app.load("b", &lines).await;
    let mut daemon = bin.spawn(false);

    let total = (convs * per) as i64;
    let finished = "SELECT count(*) FROM chatferry.jobs WHERE status IN ('done', 'skipped')";
    let started = Instant::now();
    let mut round = 0u32;
    let mut skipped = 0;
    while db.scalar(finished).await < total {
        assert!(started.elapsed() < Duration::from_secs(120), "no end in sight");
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited");
        assert!(bin.cli(&["pause", "--batch", "b"]).await.status.success());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(bin.cli(&["resume", "--batch", "b"]).await.status.success());
        if round % 4 == 3 && skipped < 5 {
            let failed: Option<i64> =
                sqlx::query_scalar("SELECT id FROM chatferry.jobs WHERE status = 'failed' LIMIT 1")
                    .fetch_optional(db.store.pool())
                    .await
                    .unwrap();
            if let Some(job) = failed {
                let out = bin.cli(&["skip", "--job", &job.to_string()]).await;
                assert!(out.status.success(), "{}", out.stderr);
                skipped += 1;
            }
        } else {
            assert!(bin.cli(&["retry", "--batch", "b"]).await.status.success());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        round += 1;
    }
    signal(daemon.id().unwrap(), "TERM");
    assert!(daemon.wait().await.unwrap().success());
    let out = bin.cli(&["run", "--exit-when-idle"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(round >= 5, "the operator got a word in ({round} rounds)");

    let skipped_texts: HashSet<String> =
        sqlx::query_scalar::<_, String>("SELECT body FROM chatferry.jobs WHERE status = 'skipped'")
            .fetch_all(db.store.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_str(&b).unwrap();
                v["MsgBody"][0]["MsgContent"]["Text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
    assert_eq!(skipped_texts.len(), skipped);
    let applied: HashMap<(String, String), Vec<String>> = rec.applied();
    for i in 0..convs {
        let want: Vec<String> = (0..per)
            .map(|j| text(i, j))
            .filter(|t| !skipped_texts.contains(t))
            .collect();
        assert_eq!(
            applied[&(format!("a{i}"), format!("b{i}"))],
            want,
            "conversation {i}: once each, in order"
        );
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status IN ('pending', 'in_flight', 'failed')")
            .await,
        0
    );
}

/// ZIM answers slower than the grace: SIGTERM cuts them, and another
/// process restarted at once finishes the backlog with no duplicate in
/// any view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_slow_zim_calls_then_a_restart_elsewhere_sends_nothing_twice() {
    let mut faults = faults(Kind::Zim, 31, 0.0, 0.0);
    faults.zim.slow_rate = 0.2;
    faults.zim.slow_ms = 8_000; // over the 5 s grace
    let app = TestApp::simulated(ZimTarget::default(), SimSetup::faulty(faults)).await;
    let corpus = Shape::new(Kind::Zim, 40, 800).seed(12).one_sided(0.1).generate();
    app.load_corpus(&corpus, "slow").await;
    let bin = app.binary();
    let mut daemon = bin.spawn(false);
    wait_until(Duration::from_secs(60), "calls under way", || {
        app.stored_count() >= 100
    })
    .await;
    signal(daemon.id().unwrap(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), daemon.wait())
        .await
        .expect("the daemon drains within its grace")
        .unwrap();
    assert!(status.success(), "{}", bin.logged());
    app.provider.clear_faults();
    bin.run_to_the_end().await;
    assert_eq!(app.not_done().await, vec![], "every job is done");
    app.assert_holds_exactly(&corpus);
}

/// A private Postgres cluster in a temp dir on a free port, so a test can
/// restart it (never the shared server). As root it runs as `postgres`.
struct PrivatePg {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl PrivatePg {
    fn start() -> PrivatePg {
        let mut bins: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("pg_ctl").exists())
            .collect();
        bins.sort();
        let bin = bins.pop().expect("a PostgreSQL bin directory");
        let dir = tempfile::Builder::new()
            .prefix("cf-pg-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let port = free_port();
        let pg = PrivatePg { dir, bin, port };
        if is_root() {
            let ok = std::process::Command::new("chown")
                .args(["postgres"])
                .arg(pg.dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.ctl("start");
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, tool: &str, args: &[&str]) -> std::process::Command {
        let exe = self.bin.join(tool);
        let mut c = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        };
        c.args(args).stdout(std::process::Stdio::null());
        c
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool, args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl start|restart`, waiting until the server accepts connections.
    fn ctl(&self, what: &str) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-l",
                &log,
                "-m",
                "fast",
                "-w",
                what,
            ],
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Postgres restarts while a lane holds an accepted answer it has not yet
/// checkpointed (and while every other lane is mid-flight): the daemon
/// keeps running and finishes, each message once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_between_a_call_and_its_checkpoint_is_ridden_out() {
    use chatferry::worker::HookPoint;
    use futures::FutureExt;

    let pg = PrivatePg::start();
    let app = TestApp::builder()
        .tencent(TencentTarget::default())
        .database_on(pg.url())
        .recorder(|_, _| Reply::Slow(Duration::from_millis(3)))
        .spawn()
        .await;
    let (db, rec) = (&app.db, &app.provider);
    let (convs, per) = (10usize, 30usize);
    let now = now_ms() - 600_000;
    let mut lines = Vec::new();
    for j in 0..per {
        for i in 0..convs {
            let (a, b) = (format!("a{i}"), format!("b{i}"));
            lines.push(text_line(
                &format!("m{j}"),
                &a,
                &b,
                now + j as i64,
                &format!("c{i}m{j}"),
            ));
        }
    }
    app.load("b", &lines).await;
    let pg = Arc::new(pg);
    let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hook: chatferry::worker::Hook = {
        let pg = pg.clone();
        let restarted = restarted.clone();
        Arc::new(move |p: HookPoint| {
            let first = matches!(p, HookPoint::BeforeCheckpoint { .. })
                && !restarted.swap(true, std::sync::atomic::Ordering::SeqCst);
            let pg = pg.clone();
            async move {
                if first {
                    tokio::task::spawn_blocking(move || pg.ctl("restart"))
                        .await
                        .unwrap();
                }
            }
            .boxed()
        })
    };
    let w = app.worker();
    w.set_hook(hook);
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        w.run(tokio_util::sync::CancellationToken::new(), true),
    )
    .await
    .expect("the run ends")
    .expect("the run rides the restart out");
    assert!(
        restarted.load(std::sync::atomic::Ordering::SeqCst),
        "Postgres was restarted"
    );
    assert!(report.stuck.is_empty() && report.halted.is_empty());
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status = 'done'")
            .await,
        (convs * per) as i64
    );
    let applied = rec.applied();
    for i in 0..convs {
        // A resend after a lost checkpoint carries the same Tencent triple
        // (one message at the provider), so repeats collapse.
        let mut got = applied[&(format!("a{i}"), format!("b{i}"))].clone();
        got.dedup();
        let want: Vec<String> = (0..per).map(|j| format!("c{i}m{j}")).collect();
        assert_eq!(got, want, "conversation {i}");
    }
}
