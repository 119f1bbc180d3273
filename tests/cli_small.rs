//! Small things operators expect from the command line: a misspelt key
//! (in daemon.toml or a `CHATFERRY__` variable) is an error naming it and
//! the nearest known key, shell completions, and `status --watch`.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{config, jsonl, load, now_ms, text_line, TestDb};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chatferry"));
    c.env_remove("DATABASE_URL").env_remove("CHATFERRY_CONFIG");
    c
}

fn run(c: &mut Command) -> (i32, String, String) {
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_misspelt_key_is_an_error_naming_it_and_the_nearest_known_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("daemon.toml");
    std::fs::write(
        &cfg,
        "[database]\nurl = \"postgres://x@127.0.0.1:1/x\"\n[worker]\nconcurrency = 8\n",
    )
    .unwrap();

    // Before: the typo was ignored and the default applied silently.
    let (code, _, err) = run(bin()
        .args(["--config", cfg.to_str().unwrap(), "status"])
        .env("CHATFERRY__WORKER__CONCURENCY", "5"));
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
    let (code, _, err) = run(bin().args(["--config", cfg.to_str().unwrap(), "status"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown key `targets.tim.rate_per_sec`") || err.contains("`targets.tim.rate_per_secs`"),
        "{err}"
    );
    assert!(err.contains(cfg.to_str().unwrap()), "names the file: {err}");
    assert!(err.contains("did you mean `rate_per_sec`?"), "{err}");
}

#[test]
fn completions_for_bash_zsh_and_fish_need_no_configuration() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef chatferry"),
        ("fish", "complete -c chatferry"),
    ] {
        let (code, out, err) = run(bin()
            .args(["completions", shell])
            .env("CHATFERRY_CONFIG", "/nonexistent"));
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(
            out.contains("plan") && out.contains("exit-when-idle"),
            "{shell} knows the commands"
        );
    }
    let (code, _, _) = run(bin().args(["completions", "tcsh"]));
    assert_eq!(code, 2);
}

#[tokio::test]
async fn status_watch_refreshes_until_interrupted() {
    let db = TestDb::new().await;
    let cfg = config(
        &db,
        "[targets.tim]\nkind = \"tencent\"\nendpoint = \"http://127.0.0.1:9/\"\nsdk_app_id = 1\n\
         admin_identifier = \"a\"\nsecret_key = \"k\"\n",
    );
    let lines = vec![text_line("1", "a", "b", now_ms() - 1000, "x")];
    load(&db, &cfg, "tim", "watched", &[jsonl(&lines).path()], None).await;
    let mut child = bin()
        .args(["status", "--watch", "--interval", "0.2"])
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.matches("refreshing every").count() < 3 && Instant::now() < deadline {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen
    });
    let seen = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    assert!(
        seen.matches("refreshing every").count() >= 3,
        "three frames: {seen}"
    );
    assert!(seen.contains("watched"), "{seen}");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "status --watch did not stop on SIGINT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}
