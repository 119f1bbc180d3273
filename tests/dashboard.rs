//! The dashboard in a real browser: the daemon runs against the simulator
//! at a low rate (so the batch is mid-way), and headless Chromium loads
//! `/` and renders it from `/api/status`. The test reads the DOM the page
//! built (batch, progress, a failure code) and keeps a screenshot under
//! target/test-output/dashboard.png. With `http.token` set, the page and
//! the API refuse requests without it; the probes stay open.
//!
//! Chromium comes from Debian's `chromium` package (scripts/test installs
//! it); without it this test says so loudly and passes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const TOKEN: &str = "dash-token-7f3a";

fn chromium() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    p.exists().then_some(p)
}

/// Runs headless Chromium with the flags this machine needs (no network
/// of its own, no sandbox as root) and returns its stdout.
fn browse(bin: &Path, extra: &[&str], url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Lets the page's fetch of /api/status finish before the dump.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status and body of `GET url`; 0 if nothing answered.
async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    http_get(url, token).await.unwrap_or_default()
}

fn output_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-output");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A daemon mid-run: 4 calls/s, 60 good messages, 3 to an unknown user.
async fn daemon_mid_run(app: &TestApp<TestSim>, port: u16) -> (Binary, tokio::process::Child) {
    let providers = chatferry::providers::build_all(&app.cfg).unwrap();
    let r = providers[0]
        .1
        .register_users(&[
            chatferry::providers::UserProfile::bare("alice"),
            chatferry::providers::UserProfile::bare("bob"),
        ])
        .await
        .unwrap();
    assert_eq!(r.ok, 2);
    let at = now_ms() - 60_000;
    let mut lines: Vec<String> = (0..3)
        .map(|i| text_line(&format!("g{i}"), "alice", "ghost", at + i, "to nobody"))
        .collect();
    lines.extend((0..60).map(|i| text_line(&format!("m{i}"), "alice", "bob", at + i, "hello")));
    app.load("nightly", &lines).await;
    let mut settings = app.settings.clone();
    settings.set_rate("tim", 4.0);
    settings.http = HttpSettings {
        listen: Some(format!("127.0.0.1:{port}")),
        token: Some(TOKEN.into()),
    };
    let toml = settings.toml();
    assert!(toml.contains("rate_per_sec = 4\n"), "{toml}");
    let bin = Binary::new(&settings);
    let child = bin.spawn(false);
    (bin, child)
}

/// Waits until the API shows progress and the failures, with work left.
async fn wait_mid_run(base: &str) -> Value {
    let url = format!("{base}/api/status");
    let api_status = || async {
        let (code, body) = get(&url, Some(TOKEN)).await;
        (code == 200).then(|| serde_json::from_str::<Value>(&body).unwrap())
    };
    let shows = |v: &Value| {
        v["batches"][0]["done"].as_i64() > Some(0) && v["failures"].as_array().is_some_and(|f| !f.is_empty())
    };
    let v = poll(Duration::from_secs(30), api_status, |v| {
        v.as_ref().is_some_and(shows)
    })
    .await
    .filter(shows)
    .expect("the daemon never showed progress and the failures");
    assert!(
        v["batches"][0]["pending"].as_i64() > Some(0),
        "still mid-run: {v}"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_batch_its_progress_and_failures_in_chromium() {
    let Some(bin) = chromium() else {
        eprintln!(
            "\n\n*** SKIPPED: no Chromium at /usr/bin/chromium (apt-get install -y chromium; \
             scripts/test installs it). The dashboard was NOT tested in a browser. ***\n\n"
        );
        return;
    };
    let app = TestApp::simulated(TencentTarget::default(), SimSetup::default()).await;
    let port = free_port();
    let (_bin, mut child) = daemon_mid_run(&app, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let status = wait_mid_run(&base).await;
    let code = status["failures"][0]["code"].as_i64().expect("a failure code");
    assert_eq!(status["failures"][0]["count"].as_i64().map(|n| n > 0), Some(true));
    assert_eq!(status["rates"][0]["target"], "tim");
    assert!(
        status["workers"].as_array().is_some_and(|w| !w.is_empty()),
        "{status}"
    );

    // Without the token: the page and the API refuse; the probes answer.
    assert_eq!(get(&format!("{base}/api/status"), None).await.0, 401);
    assert_eq!(get(&format!("{base}/api/status"), Some("wrong")).await.0, 401);
    assert_eq!(get(&format!("{base}/"), None).await.0, 401);
    assert_eq!(get(&format!("{base}/healthz"), None).await.0, 200);
    assert_eq!(get(&format!("{base}/metrics"), None).await.0, 200);
    let refused = browse(&bin, &["--dump-dom"], &format!("{base}/"));
    assert!(refused.contains("needs its token"), "{refused}");
    assert!(!refused.contains("nightly"), "{refused}");

    // With it: what the page itself built from the API.
    let url = format!("{base}/?token={TOKEN}");
    let dom = browse(&bin, &["--dump-dom"], &url);
    let batches = dom
        .split("id=\"batches\"")
        .nth(1)
        .expect("batch table")
        .split("</table>")
        .next()
        .unwrap();
    assert!(batches.contains("nightly"), "batch row: {batches}");
    assert!(
        batches.contains("class=\"label\">") && batches.contains("%</span>"),
        "progress: {batches}"
    );
    let failures = dom
        .split("id=\"failures\"")
        .nth(1)
        .unwrap()
        .split("</table>")
        .next()
        .unwrap();
    assert!(
        failures.contains(&format!(">{code}<")),
        "failure code {code}: {failures}"
    );
    assert!(dom.contains(">updated "), "the page rendered the API: {dom}");

    let shot = output_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &bin,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1100",
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    eprintln!("dashboard screenshot: {}", shot.display());
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
