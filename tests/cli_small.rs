//! Small things operators expect from the command line: a misspelt key
//! (in daemon.toml or a `CHATFERRY__` variable) is an error naming it and
//! the nearest known key, shell completions, and `status --watch`.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;

/// Runs `command` to its end: exit code, stdout, stderr.
async fn run(command: &mut tokio::process::Command) -> (i32, String, String) {
    let ran = Ran::run(command).await;
    (ran.code(), ran.stdout, ran.stderr)
}

#[tokio::test]
async fn a_misspelt_key_is_an_error_naming_it_and_the_nearest_known_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("daemon.toml");
    std::fs::write(
        &cfg,
        "[database]\nurl = \"postgres://x@127.0.0.1:1/x\"\n[worker]\nconcurrency = 8\n",
    )
    .unwrap();

    // Before: the typo was ignored and the default applied silently.
    let (code, _, err) = run(chatferry_with(&cfg)
        .arg("status")
        .env("CHATFERRY__WORKER__CONCURENCY", "5"))
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown key `worker.concurency`"), "{err}");
    assert!(
        err.contains("environment variable CHATFERRY__WORKER__CONCURENCY"),
        "{err}"
    );
    assert!(err.contains("did you mean `concurrency`?"), "{err}");

    std::fs::write(
        &cfg,
        "[database]\nurl = \"postgres://x@127.0.0.1:1/x\"\n[targets.tim]\nkind = \"tencent\"\n\
         endpoint = \"http://127.0.0.1:9/\"\nsdk_app_id = 1\nadmin_identifier = \"a\"\nsecret_key = \"k\"\n\
         rate_per_secs = 50\n",
    )
    .unwrap();
    let (code, _, err) = run(chatferry_with(&cfg).arg("status")).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown key `targets.tim.rate_per_sec`") || err.contains("`targets.tim.rate_per_secs`"),
        "{err}"
    );
    assert!(err.contains(cfg.to_str().unwrap()), "names the file: {err}");
    assert!(err.contains("did you mean `rate_per_sec`?"), "{err}");
}

#[tokio::test]
async fn completions_for_bash_zsh_and_fish_need_no_configuration() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef chatferry"),
        ("fish", "complete -c chatferry"),
    ] {
        let (code, out, err) = run(chatferry()
            .args(["completions", shell])
            .env("CHATFERRY_CONFIG", "/nonexistent"))
        .await;
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(
            out.contains("plan") && out.contains("exit-when-idle"),
            "{shell} knows the commands"
        );
    }
    let (code, _, _) = run(chatferry().args(["completions", "tcsh"])).await;
    assert_eq!(code, 2);
}

#[tokio::test]
async fn status_watch_refreshes_until_interrupted() {
    let app = TestApp::builder().tencent(TencentTarget::default()).spawn().await;
    let lines = vec![text_line("1", "a", "b", now_ms() - 1000, "x")];
    app.load("watched", &lines).await;
    let mut child = chatferry()
        .args(["status", "--watch", "--interval", "0.2"])
        .env("DATABASE_URL", &app.db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.matches("refreshing every").count() < 3 {
        let read = tokio::time::timeout_at(deadline.into(), stdout.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    assert!(
        seen.matches("refreshing every").count() >= 3,
        "three frames: {seen}"
    );
    assert!(seen.contains("watched"), "{seen}");
    // Stop reading, as a closed terminal would: a frame written after the
    // signal then ends the command too.
    drop(stdout);
    signal(child.id().unwrap(), "INT");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("status --watch did not stop on SIGINT")
        .unwrap();
    assert!(status.success(), "{status}");
}
