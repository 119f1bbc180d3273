//! `chatferry probe` against the simulator: it reports what the provider
//! does where the documents are silent, stores it, and the report says so.

mod common;

use chatferry::probe::MsgTimeMode;
use chatferry::simulate::faults::{FaultConfig, MsgTime};
use common::*;

async fn probe_zim(msg_time: MsgTime) -> (TestApp<TestSim>, chatferry::probe::Findings) {
    let mut faults = FaultConfig::default();
    faults.zim.msg_time = msg_time;
    let app = TestApp::simulated(
        ZimTarget::default(),
        SimSetup {
            faults,
            auto_register: false,
        },
    )
    .await;
    let f = chatferry::probe::run(&app.cfg, &app.db.store, "zim", ["probe-a", "probe-b"])
        .await
        .expect("the probe runs");
    (app, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_a_receive_time_msg_time() {
    let (app, f) = probe_zim(MsgTime::Receive).await;
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
    let stored = app.db.store.probe_findings("zim").await.unwrap().expect("stored");
    assert_eq!(stored["msg_time"], "receive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_an_echoed_msg_time() {
    let (app, f) = probe_zim(MsgTime::Echo).await;
    assert_eq!(f.msg_time, Some(MsgTimeMode::Echo), "{f:?}");
    assert!(f.report("zim").contains("echoes SendMessageTime"));
    let stored = app.db.store.probe_findings("zim").await.unwrap().expect("stored");
    assert_eq!(stored["msg_time"], "echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reads_the_tencent_triple_back_and_sees_dedup() {
    let app = TestApp::simulated(TencentTarget::default(), SimSetup::default()).await;
    let f = chatferry::probe::run(&app.cfg, &app.db.store, "tim", ["probe-a", "probe-b"])
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
    let (app, _) = probe_zim(MsgTime::Receive).await;
    let bin = app.binary();
    let out = bin
        .cli(&["probe", "--target", "zim", "--users", "probe-c,probe-d", "--json"])
        .await;
    assert!(out.status.success(), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["msg_time"], "receive");
    let out = bin
        .cli(&["probe", "--target", "zim", "--users", "only-one"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("--users takes two user ids"));
}
