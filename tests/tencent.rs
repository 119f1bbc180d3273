//! Tencent IM end to end: the loader, the worker (in process, and the real
//! binary killed mid-way) and the built-in simulator over real HTTP on
//! loopback, with injected faults. What the simulator ends up holding must
//! be the source, exactly: every conversation in source order, nothing
//! missing, nothing twice.

mod common;

use common::*;

/// Every kind the Tencent mapping knows is accepted by the simulator and
/// reads back as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_kind_is_imported_and_read_back() {
    let shape = Shape::new(Kind::Tencent, 4, 120).seed(3).non_text(0.9);
    assert_every_kind_round_trips(
        &shape,
        &["custom", "image", "file", "audio", "video", "face", "location"],
    )
    .await;
}

/// 10,000 messages in 300 conversations, in bursts of same-second and
/// same-millisecond messages, through 5% transient errors and 1% calls
/// applied and then dropped (so their outcome is unknown and they are
/// resent). Accounts are imported on demand (`ensure_accounts`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_through_faults_arrive_once_and_in_order() {
    let app = TestApp::simulated(
        Target::of(Kind::Tencent).ensuring(true),
        SimSetup {
            faults: faults(Kind::Tencent, 11, 0.05, 0.01),
            auto_register: false,
        },
    )
    .await;
    let corpus = Shape::new(Kind::Tencent, 300, 10_000)
        .seed(1)
        .non_text(0.1)
        .generate();
    assert_eq!(corpus.conversations(), 300);
    assert!(
        corpus.same_ms_pairs() > 1000,
        "bursts: {}",
        corpus.same_ms_pairs()
    );
    let s = app.load_corpus(&corpus, "main").await;
    assert_eq!(s.jobs_new, 10_000);

    app.send_all().await;

    assert_eq!(app.not_done().await, vec![], "every job is done");
    app.assert_holds_exactly(&corpus);
    let st = app.stats();
    assert!(st["faults"]["transient"].as_u64() > Some(100), "{st}");
    assert!(st["faults"]["apply_then_drop"].as_u64() > Some(20), "{st}");
    // Calls applied but unanswered were resent with the same triple, and
    // the provider's dedup took them as the message it already had.
    assert!(st["dedup_hits"].as_u64() > Some(0), "{st}");
    // Accounts were missing at first and imported by ensure_accounts.
    assert!(
        st["validation_failures_by_code"]["20003"].as_u64() > Some(0),
        "{st}"
    );
    assert!(
        st["calls_by_api"]["multiaccount_import"].as_u64() > Some(0),
        "{st}"
    );
    app.assert_verify_clean("main").await;
}

/// One conversation of 2,000 messages, sent with several calls in flight
/// (`worker.lane_window`, on by default for Tencent), through transient
/// errors, calls applied then dropped, and jittered latency: every message
/// is stored exactly once and reads back in source order; the last import
/// is the newest message, so the conversation's latest message is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_conversation_sent_with_a_window_arrives_once_and_in_order() {
    let mut f = faults(Kind::Tencent, 5, 0.03, 0.01);
    f.tencent.latency_ms = 6;
    f.tencent.latency_sd_ms = 3.0;
    let app = TestApp::simulated(TencentTarget::default(), SimSetup::faulty(f)).await;
    let corpus = Shape::new(Kind::Tencent, 1, 2_000)
        .seed(9)
        .non_text(0.1)
        .generate();
    assert_eq!(corpus.conversations(), 1);
    let s = app.load_corpus(&corpus, "hot").await;
    assert_eq!(s.jobs_new, 2_000);

    app.send_all().await;

    assert_eq!(app.not_done().await, vec![], "every job is done");
    app.assert_holds_exactly(&corpus);
    let st = app.stats();
    assert!(st["faults"]["transient"].as_u64() > Some(20), "{st}");
    assert!(st["faults"]["apply_then_drop"].as_u64() > Some(5), "{st}");
    // Calls overlapped: some arrived after a newer message of the same
    // conversation (one call at a time never does that).
    assert!(st["order_inversions"].as_u64() > Some(0), "{st}");
    app.assert_verify_clean("hot").await;
}

/// The real binary, killed with SIGKILL a third of the way through and
/// restarted with `run --exit-when-idle`: the calls in doubt at the kill
/// are resent (the dedup triple makes that harmless), nothing is lost and
/// nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_resumes_without_loss_or_duplicates() {
    let app = TestApp::simulated(
        TencentTarget::default(),
        SimSetup::faulty(faults(Kind::Tencent, 12, 0.05, 0.01)),
    )
    .await;
    let corpus = Shape::new(Kind::Tencent, 100, 3_000)
        .seed(2)
        .non_text(0.1)
        .generate();
    app.load_corpus(&corpus, "crash").await;
    let bin = app.binary();

    bin.run_and_kill_at(&app, 1_000).await;
    let stored_at_kill = app.stored_count();
    assert!(
        stored_at_kill < 3_000,
        "killed before the end ({stored_at_kill} stored)"
    );
    bin.run_to_the_end().await;

    assert_eq!(app.not_done().await, vec![], "every job is done");
    app.assert_holds_exactly(&corpus);
    assert!(app.stats()["dedup_hits"].as_u64() > Some(0), "{}", app.stats());
    app.assert_verify_clean("crash").await;
}

/// Tencent deduplicates on (MsgSeq, MsgRandom, MsgTimeStamp), so imports
/// that land after the client gave up, or are applied and then answered
/// with a server error, are simply sent again and still stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_landings_and_errors_after_the_write_are_stored_once() {
    let mut f = chatferry::simulate::faults::FaultConfig {
        seed: 41,
        ..Default::default()
    };
    f.tencent.late_rate = 0.03;
    f.tencent.late_ms = 1_300;
    f.tencent.apply_then_error_rate = 0.05;
    f.tencent.apis = vec!["importmsg".into()];
    let app = TestApp::simulated(TencentTarget::default(), SimSetup::faulty(f)).await;
    let corpus = Shape::new(Kind::Tencent, 60, 3_000)
        .seed(41)
        .non_text(0.1)
        .generate();
    app.load_corpus(&corpus, "late").await;
    app.send_all().await;
    assert_eq!(app.not_done().await, vec![], "every job is done");
    app.assert_holds_exactly(&corpus);
    let st = app.stats();
    assert!(st["faults"]["late"].as_u64() > Some(0), "{st}");
    assert!(st["faults"]["apply_then_error"].as_u64() > Some(0), "{st}");
    assert!(
        st["dedup_hits"].as_u64() > Some(0),
        "resends were deduplicated: {st}"
    );
    app.provider.clear_faults();
    app.assert_verify_clean("late").await;
}
