//! `chatferry probe` against the simulator: it reports what the provider
//! does where the documents are silent, stores it, and the report says so.

mod common;

use chatferry::probe::MsgTimeMode;
use chatferry::simulate::faults::{FaultConfig, MsgTime};
use common::provider::*;

async fn probe_zim(msg_time: MsgTime) -> (Env, chatferry::probe::Findings) {
    let mut faults = FaultConfig::default();
    faults.zim.msg_time = msg_time;
    let env = Env::start(Setup {
        kind: Kind::Zim,
        faults,
        auto_register: false,
        ensure: false,
    })
    .await;
    let f = chatferry::probe::run(&env.cfg, &env.db.store, "zim", ["probe-a", "probe-b"])
        .await
        .expect("the probe runs");
    (env, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_a_receive_time_msg_time() {
    let (env, f) = probe_zim(MsgTime::Receive).await;
    assert_eq!(f.msg_time, Some(MsgTimeMode::Receive), "{f:?}");
    assert_eq!(f.msg_id_matches, Some(true), "{f:?}");
    assert!(f.visibility_ms.is_some() && f.clock_skew_ms.is_some(), "{f:?}");
    assert_eq!(f.read_back.len(), 3, "{f:?}");
    assert!(
        f.read_back[1].contains("download_url"),
        "the image comes back in the read-back schema: {f:?}"
    );
    let report = f.report("zim");
    assert!(
        report.contains("MsgTime of an imported message: is the server's receive time"),
        "{report}"
    );
    let stored = env.db.store.probe_findings("zim").await.unwrap().expect("stored");
    assert_eq!(stored["msg_time"], "receive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_an_echoed_msg_time() {
    let (env, f) = probe_zim(MsgTime::Echo).await;
    assert_eq!(f.msg_time, Some(MsgTimeMode::Echo), "{f:?}");
    assert!(f.report("zim").contains("echoes SendMessageTime"));
    let stored = env.db.store.probe_findings("zim").await.unwrap().expect("stored");
    assert_eq!(stored["msg_time"], "echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reads_the_tencent_triple_back_and_sees_dedup() {
    let env = Env::start(Setup {
        kind: Kind::Tencent,
        faults: FaultConfig::default(),
        auto_register: false,
        ensure: false,
    })
    .await;
    let f = chatferry::probe::run(&env.cfg, &env.db.store, "tim", ["probe-a", "probe-b"])
        .await
        .expect("the probe runs");
    assert_eq!(f.triple_echoed, Some(true), "{f:?}");
    assert!(f.notes.iter().any(|n| n.contains("dedup confirmed")), "{f:?}");
    assert!(f.read_back.iter().any(|l| l.contains("TIMImageElem")), "{f:?}");
}

/// The binary: `probe --json` prints the findings; a bad `--users` is a
/// usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_command_prints_json_and_refuses_one_user() {
    let (env, _) = probe_zim(MsgTime::Receive).await;
    let dir = tempfile::tempdir().unwrap();
    let config = env.write_config(dir.path());
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_chatferry"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    let out = run(&["probe", "--target", "zim", "--users", "probe-c,probe-d", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["msg_time"], "receive");
    let out = run(&["probe", "--target", "zim", "--users", "only-one"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--users takes two user ids"));
}
