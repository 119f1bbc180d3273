//! ZIM exactly once when answers come late or lie (issue 11): requests
//! that land after the client gave up, server errors returned after the
//! write, users already chatting in the views during the backfill, and
//! `MsgTime` as the server's receive time or as an echo of
//! `SendMessageTime`. ZIM has no idempotency key, so each of these is a
//! duplicate unless reconcile waits for the truth and finds the message.

mod common;

use chatferry::simulate::faults::{FaultConfig, MsgTime};
use common::*;

/// 3 % of imports land 1.3 s after they arrived (the client gives up after
/// 1 s), 5 % are applied and then answered with a server error, every view
/// starts with 150 messages users exchanged on ZIM and more arrive during
/// the run.
fn late_and_lying(seed: u64, msg_time: MsgTime) -> FaultConfig {
    let mut f = FaultConfig {
        seed,
        ..Default::default()
    };
    f.zim.late_rate = 0.03;
    f.zim.late_ms = 1_300;
    f.zim.apply_then_error_rate = 0.05;
    f.zim.live_per_view = 150;
    f.zim.live_rate = 0.05;
    f.zim.msg_time = msg_time;
    f.zim.apis = vec!["ImportPeerMsg".into()];
    f
}

fn corpus(seed: u64) -> Corpus {
    Shape::new(Kind::Zim, 60, 3_000)
        .seed(seed)
        .one_sided(0.1)
        .non_text(0.1)
        .generate()
}

async fn zim_env(faults: FaultConfig) -> TestApp<TestSim> {
    TestApp::simulated(ZimTarget::default(), SimSetup::faulty(faults)).await
}

/// Every view holds its history exactly once, in order, beside the live
/// messages; `verify` agrees; and the faults really happened.
async fn assert_exact(app: &TestApp<TestSim>, corpus: &Corpus, batch: &str) {
    assert_eq!(app.not_done().await, vec![], "every job is done");
    app.assert_holds_exactly(corpus);
    let st = app.stats();
    for fault in ["late", "apply_then_error", "live"] {
        assert!(
            st["faults"][fault].as_u64() > Some(0),
            "no {fault} fault happened: {st}"
        );
    }
    app.provider.clear_faults();
    app.assert_verify_clean(batch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_landings_and_errors_after_the_write_are_never_doubled_with_receive_time() {
    let app = zim_env(late_and_lying(31, MsgTime::Receive)).await;
    let corpus = corpus(31);
    app.load_corpus(&corpus, "late").await;
    app.send_all().await;
    assert_exact(&app, &corpus, "late").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_landings_and_errors_after_the_write_are_never_doubled_with_echoed_time() {
    let app = zim_env(late_and_lying(32, MsgTime::Echo)).await;
    let corpus = corpus(32);
    app.load_corpus(&corpus, "echo").await;
    app.send_all().await;
    assert_exact(&app, &corpus, "echo").await;
}

/// The same faults, and the real binary SIGKILLed twice on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_landings_survive_two_sigkills() {
    let app = zim_env(late_and_lying(33, MsgTime::Receive)).await;
    let corpus = corpus(33);
    let total: usize = corpus.zim_views().values().map(Vec::len).sum();
    app.load_corpus(&corpus, "killed").await;
    let bin = app.binary();
    for third in 1..=2 {
        bin.run_and_kill_at(&app, (total * third / 3) as u64).await;
    }
    bin.run_to_the_end().await;
    assert_exact(&app, &corpus, "killed").await;
}

/// A job whose reconcile can never decide (QueryPeerMsg always fails)
/// backs off and, after `max_reconcile_attempts`, fails with a reason the
/// operator can act on, without sending the message again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecidable_reconcile_gives_up_with_a_reason_and_never_resends() {
    let mut f = FaultConfig {
        seed: 34,
        ..Default::default()
    };
    // Every import is applied and then answered with a server error, and
    // every query fails: the worker can never tell.
    f.zim.apply_then_error_rate = 1.0;
    f.zim.apply_then_error_codes = vec![105001];
    let app = zim_env(f).await;
    let mut settings = app.settings.clone();
    settings.worker_mut().max_reconcile_attempts = Some(3);
    let corpus = Shape::new(Kind::Zim, 1, 1).seed(34).one_sided(1.0).generate();
    app.load_corpus(&corpus, "undecided").await;
    // Queries fail with the server error too (the fault covers every API),
    // so each reconcile is undecided.
    let report = run_until_idle(&app.db, &settings.config()).await;
    assert!(report.halted.is_empty());
    let (status, error): (String, String) =
        sqlx::query_as("SELECT status::text, last_error FROM chatferry.jobs")
            .fetch_one(app.db.store.pool())
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error.contains("after 3 reconciles"), "{error}");
    assert!(error.contains("chatferry retry"), "{error}");
    assert_eq!(
        app.stats()["calls_by_api"]["ImportPeerMsg"],
        1,
        "sent once, never again"
    );
}
