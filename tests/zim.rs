//! ZEGO ZIM end to end: the loader, the worker (in process, and the real
//! binary killed several times) and the built-in simulator over real HTTP
//! on loopback, with injected faults. ZIM has no idempotency key and keeps
//! one view per participant, so each view the simulator holds must be that
//! user's source view exactly: nothing missing, nothing twice (an in-doubt
//! call is reconciled through QueryPeerMsg, never blindly resent), in order.

mod common;

use common::*;

/// Every kind the ZIM mapping knows (text, custom, image, file, audio,
/// video, multi-item) is accepted by the simulator and reads back as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_kind_is_imported_and_read_back() {
    let shape = Shape::new(Kind::Zim, 4, 100).seed(3).one_sided(0.1).non_text(0.9);
    assert_every_kind_round_trips(&shape, &["custom", "image", "file", "audio", "video", "multi"]).await;
}

/// 5,000 messages in 200 conversations, some kept by one side only, through
/// 5% transient errors and 2% calls applied and then dropped. Users are
/// registered on demand (`ensure_users`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_messages_through_faults_fill_each_view_exactly() {
    let app = TestApp::simulated(
        Target::of(Kind::Zim).ensuring(true),
        SimSetup {
            faults: faults(Kind::Zim, 21, 0.05, 0.02),
            auto_register: false,
        },
    )
    .await;
    let corpus = Shape::new(Kind::Zim, 200, 5_000)
        .seed(4)
        .one_sided(0.15)
        .non_text(0.1)
        .generate();
    assert_eq!(corpus.conversations(), 200);
    let views = corpus.zim_views();
    assert_eq!(
        views.len(),
        400,
        "both sides of every conversation hold something"
    );
    let one_sided = corpus.msgs.iter().filter(|m| m.visible.len() == 1).count();
    assert!(one_sided > 500, "{one_sided} one-sided messages");
    let s = app.load_corpus(&corpus, "main").await;
    assert_eq!(s.jobs_new as usize, views.values().map(Vec::len).sum::<usize>());

    app.send_all().await;

    assert_eq!(app.not_done().await, vec![], "every job is done");
    app.assert_holds_exactly(&corpus);
    let st = app.stats();
    assert!(st["faults"]["transient"].as_u64() > Some(100), "{st}");
    assert!(st["faults"]["apply_then_drop"].as_u64() > Some(50), "{st}");
    // In-doubt calls were looked up before anything was resent.
    assert!(st["calls_by_api"]["QueryPeerMsg"].as_u64() > Some(0), "{st}");
    // Users were missing at first and registered by ensure_users.
    assert!(
        st["validation_failures_by_code"]["660500002"].as_u64() > Some(0),
        "{st}"
    );
    assert!(st["calls_by_api"]["UserRegister"].as_u64() > Some(0), "{st}");
    // Reconciled jobs carry the MsgId the provider gave the stored copy.
    let without_id = app
        .db
        .scalar("SELECT count(*) FROM chatferry.jobs WHERE provider_msg_id IS NULL")
        .await;
    assert_eq!(without_id, 0);
    app.provider.clear_faults();
    app.assert_verify_clean("main").await;
}

/// The real binary, killed with SIGKILL three times at different points
/// (a quarter, half and three quarters through) and restarted each time;
/// a last `run --exit-when-idle` finishes the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_three_times_still_fills_each_view_exactly() {
    let app = TestApp::simulated(
        ZimTarget::default(),
        SimSetup::faulty(faults(Kind::Zim, 22, 0.05, 0.02)),
    )
    .await;
    let corpus = Shape::new(Kind::Zim, 80, 2_000)
        .seed(5)
        .one_sided(0.15)
        .non_text(0.1)
        .generate();
    let total: usize = corpus.zim_views().values().map(Vec::len).sum();
    app.load_corpus(&corpus, "crash").await;
    let bin = app.binary();

    for quarter in 1..=3 {
        bin.run_and_kill_at(&app, (total * quarter / 4) as u64).await;
        let stored = app.stored_count();
        assert!(
            stored < total as u64,
            "kill {quarter} came before the end ({stored} of {total})"
        );
    }
    bin.run_to_the_end().await;

    assert_eq!(app.not_done().await, vec![], "every job is done");
    app.assert_holds_exactly(&corpus);
    app.provider.clear_faults();
    app.assert_verify_clean("crash").await;
}
