//! A full migration through the real binary, at debug log level, in both
//! log formats, with faults and a failing target: no secret, signature or
//! UserSig appears in any log line or in `status` output.

mod common;

use chatferry::simulate::{FaultConfig, SimOptions, Simulator};
use common::*;

const ZIM_SECRET: &str = "zimSECRETvalue0123456789abcdef";
const TIM_KEY: &str = "timKEYvalue9876543210fedcba";
const DB_PASSWORD: &str = "dbPASSWORDvalue42";

/// Debug logs in `format`, both targets at `endpoint` (a closed port when
/// `None`) with these credentials.
fn settings(
    db_url: &str,
    endpoint: Option<String>,
    zim_secret: &str,
    tim_key: &str,
    format: &'static str,
) -> Settings {
    let worker = WorkerSettings {
        concurrency: Some(16),
        lease_secs: Some(3),
        request_timeout_ms: Some(1000),
        retry_min_ms: Some(10),
        retry_max_ms: Some(50),
        reconcile_settle_secs: Some(2),
        ..Default::default()
    };
    let zim = ZimTarget {
        endpoint: endpoint.clone(),
        app_id: 4242,
        server_secret: zim_secret.into(),
        rate_per_sec: Some(2000.0),
        query_rate_per_sec: Some(2000.0),
        ..Default::default()
    };
    let tim = TencentTarget {
        endpoint,
        sdk_app_id: 1400000001,
        secret_key: tim_key.into(),
        rate_per_sec: Some(2000.0),
        ..Default::default()
    };
    Settings {
        database_url: Some(db_url.into()),
        log: Some(LogSettings {
            level: "debug",
            format: Some(format),
        }),
        worker: Some(worker),
        ..Default::default()
    }
    .with(zim)
    .with(tim)
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
    let sim_cfg = settings(&db.url, None, ZIM_SECRET, TIM_KEY, "text").config();
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
    let at_sim = Some(format!("http://{}/", sim.addr()));
    for (i, format) in ["text", "json"].into_iter().enumerate() {
        let bin = Binary::new(&settings(
            with_pw.as_str(),
            at_sim.clone(),
            ZIM_SECRET,
            TIM_KEY,
            format,
        ));
        if i == 0 {
            all += &bin.cli(&["migrate"]).await.text();
        }
        let batch = format!("b{i}");
        for target in ["zim", "tim"] {
            let mut args = vec!["load", "--target", target, "--batch", batch.as_str()];
            let p = input.path().to_str().unwrap();
            args.push(p);
            // The second pass loads the same messages again (no new jobs).
            all += &bin.cli(&args).await.text();
        }
        let out = bin.cli(&["run", "--exit-when-idle"]).await;
        assert!(out.status.success(), "{}", out.text());
        all += &out.text();
        all += &bin.cli(&["status"]).await.text();
        all += &bin.cli(&["status", "--json"]).await.text();
        all += &bin.cli(&["verify", "--batch", "b0"]).await.text();
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
    let bad = Binary::new(&settings(
        with_pw.as_str(),
        at_sim,
        "wrongZIMsecretXYZ",
        "wrongTIMkeyXYZ",
        "text",
    ));
    for target in ["zim", "tim"] {
        let input = more_input.path().to_str().unwrap();
        all += &bad
            .cli(&["load", "--target", target, "--batch", "bad", input])
            .await
            .text();
    }
    let out = bad.cli(&["run", "--exit-when-idle"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", out.text());
    let t = out.text();
    assert!(t.contains("halted"), "{t}");
    assert!(!t.contains("wrongZIMsecretXYZ") && !t.contains("wrongTIMkeyXYZ"));
    all += &t;
    assert_clean(&all);
    sim.shutdown().await;
}
