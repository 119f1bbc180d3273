//! A full migration through the real binary, at debug log level, in both
//! log formats, with faults and a failing target: no secret, signature or
//! UserSig appears in any log line or in `status` output.

mod common;

use std::process::Output;

use chatferry::simulate::{FaultConfig, SimOptions, Simulator};
use common::*;

const ZIM_SECRET: &str = "zimSECRETvalue0123456789abcdef";
const TIM_KEY: &str = "timKEYvalue9876543210fedcba";
const DB_PASSWORD: &str = "dbPASSWORDvalue42";

fn toml(db_url: &str, sim: &str, zim_secret: &str, tim_key: &str, format: &str) -> String {
    format!(
        r#"[database]
url = "{db_url}"
[log]
level = "debug"
format = "{format}"
[worker]
concurrency = 16
lease_secs = 3
request_timeout_ms = 1000
retry_min_ms = 10
retry_max_ms = 50
reconcile_settle_secs = 2
[targets.zim]
kind = "zim"
endpoint = "http://{sim}/"
app_id = 4242
server_secret = "{zim_secret}"
rate_per_sec = 2000
query_rate_per_sec = 2000
[targets.tim]
kind = "tencent"
endpoint = "http://{sim}/"
sdk_app_id = 1400000001
admin_identifier = "administrator"
secret_key = "{tim_key}"
rate_per_sec = 2000
"#
    )
}

fn run(cfg: &std::path::Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_chatferry"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Fails if `all` holds a credential or something derived from one.
fn assert_clean(all: &str) {
    for needle in [
        ZIM_SECRET,
        TIM_KEY,
        DB_PASSWORD,
        "Signature=",
        "usersig=",
        "TLS.sig",
        "eJw",
    ] {
        assert!(
            !all.contains(needle),
            "found {needle:?} in output:\n{}",
            excerpt(all, needle)
        );
    }
    // A ZIM signature is 32 lowercase hex characters.
    let hexrun = all
        .split(|c: char| !c.is_ascii_hexdigit() || c.is_ascii_uppercase())
        .find(|w| w.len() == 32);
    assert!(
        hexrun.is_none(),
        "a 32-hex-digit token (signature?) in output: {hexrun:?}"
    );
}

fn excerpt(all: &str, needle: &str) -> String {
    let i = all.find(needle).unwrap_or(0);
    all[i.saturating_sub(200)..(i + 200).min(all.len())].to_string()
}

// Multi-threaded: the simulator runs in this runtime while the test waits
// on the daemon's process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_reaches_logs_or_status() {
    let db = TestDb::new().await;
    let mut with_pw = reqwest::Url::parse(&db.url).unwrap();
    with_pw.set_password(Some(DB_PASSWORD)).unwrap();
    let sim_cfg =
        chatferry::config::Config::from_toml(&toml(&db.url, "127.0.0.1:9", ZIM_SECRET, TIM_KEY, "text"))
            .unwrap();
    let faults = FaultConfig::from_json(
        r#"{"seed": 3, "zim": {"transient_rate": 0.05, "apply_then_drop_rate": 0.05},
            "tencent": {"transient_rate": 0.05, "apply_then_drop_rate": 0.05}}"#,
    )
    .unwrap();
    let sim = Simulator::start(
        &sim_cfg,
        SimOptions {
            auto_register: true,
            faults,
            ..SimOptions::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms() - 60_000;
    let lines: Vec<String> = (0..200)
        .map(|i| {
            text_line(
                &format!("m{i}"),
                &format!("u{}", i % 10),
                &format!("v{}", i % 10),
                now + i,
                "hello",
            )
        })
        .collect();
    let input = jsonl(&lines);
    let mut all = String::new();
    for (i, format) in ["text", "json"].iter().enumerate() {
        let cfg = dir.path().join(format!("{format}.toml"));
        std::fs::write(
            &cfg,
            toml(
                with_pw.as_str(),
                &sim.addr().to_string(),
                ZIM_SECRET,
                TIM_KEY,
                format,
            ),
        )
        .unwrap();
        if i == 0 {
            all += &text(&run(&cfg, &["migrate"]));
        }
        let batch = format!("b{i}");
        for target in ["zim", "tim"] {
            let mut args = vec!["load", "--target", target, "--batch", batch.as_str()];
            let p = input.path().to_str().unwrap();
            args.push(p);
            // The second pass loads the same messages again (no new jobs).
            all += &text(&run(&cfg, &args));
        }
        let out = run(&cfg, &["run", "--exit-when-idle"]);
        assert!(out.status.success(), "{}", text(&out));
        all += &text(&out);
        all += &text(&run(&cfg, &["status"]));
        all += &text(&run(&cfg, &["status", "--json"]));
        all += &text(&run(&cfg, &["verify", "--batch", "b0"]));
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE status <> 'done'")
            .await,
        0
    );
    assert!(all.contains("worker started"), "debug logs were captured");

    // Wrong credentials: the targets halt, and the refusal says why
    // without repeating what was sent.
    let more: Vec<String> = (0..5)
        .map(|i| text_line(&format!("x{i}"), "p", "q", now + i, "x"))
        .collect();
    let more_input = jsonl(&more);
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        toml(
            with_pw.as_str(),
            &sim.addr().to_string(),
            "wrongZIMsecretXYZ",
            "wrongTIMkeyXYZ",
            "text",
        ),
    )
    .unwrap();
    for target in ["zim", "tim"] {
        all += &text(&run(
            &bad,
            &[
                "load",
                "--target",
                target,
                "--batch",
                "bad",
                more_input.path().to_str().unwrap(),
            ],
        ));
    }
    let out = run(&bad, &["run", "--exit-when-idle"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("halted"), "{t}");
    assert!(!t.contains("wrongZIMsecretXYZ") && !t.contains("wrongTIMkeyXYZ"));
    all += &t;
    assert_clean(&all);
    sim.shutdown().await;
}
