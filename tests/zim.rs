//! ZEGO ZIM end to end: the loader, the worker (in process, and the real
//! binary killed several times) and the built-in simulator over real HTTP
//! on loopback, with injected faults. ZIM has no idempotency key and keeps
//! one view per participant, so each view the simulator holds must be that
//! user's source view exactly: nothing missing, nothing twice (an in-doubt
//! call is reconciled through QueryPeerMsg, never blindly resent), in order.

mod common;

use common::provider::*;

/// Every kind the ZIM mapping knows (text, custom, image, file, audio,
/// video, multi-item) is accepted by the simulator and reads back as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_kind_is_imported_and_read_back() {
    let env = Env::start(Setup {
        kind: Kind::Zim,
        faults: Default::default(),
        auto_register: true,
        ensure: false,
    })
    .await;
    let corpus = Corpus::generate(&Shape {
        kind: Kind::Zim,
        conversations: 4,
        messages: 100,
        seed: 3,
        one_sided: 0.1,
        non_text: 0.9,
    });
    for kind in ["custom", "image", "file", "audio", "video", "multi"] {
        assert!(
            corpus
                .msgs
                .iter()
                .any(|m| m.line.contains(&format!("\"type\":\"{kind}\""))),
            "the corpus has no {kind}"
        );
    }
    env.load(&corpus, "kinds").await;
    env.run_until_idle().await;
    assert_eq!(env.not_done().await, vec![]);
    env.assert_holds_exactly(&corpus);
    assert_eq!(env.stats()["validation_failures"], 0);
    env.assert_verify_clean("kinds").await;
}

/// 5,000 messages in 200 conversations, some kept by one side only, through
/// 5% transient errors and 2% calls applied and then dropped. Users are
/// registered on demand (`ensure_users`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_messages_through_faults_fill_each_view_exactly() {
    let env = Env::start(Setup {
        kind: Kind::Zim,
        faults: faults(Kind::Zim, 21, 0.05, 0.02),
        auto_register: false,
        ensure: true,
    })
    .await;
    let corpus = Corpus::generate(&Shape {
        kind: Kind::Zim,
        conversations: 200,
        messages: 5_000,
        seed: 4,
        one_sided: 0.15,
        non_text: 0.1,
    });
    assert_eq!(corpus.conversations(), 200);
    let views = corpus.zim_views();
    assert_eq!(
        views.len(),
        400,
        "both sides of every conversation hold something"
    );
    let one_sided = corpus.msgs.iter().filter(|m| m.visible.len() == 1).count();
    assert!(one_sided > 500, "{one_sided} one-sided messages");
    let s = env.load(&corpus, "main").await;
    assert_eq!(s.jobs_new as usize, views.values().map(Vec::len).sum::<usize>());

    env.run_until_idle().await;

    assert_eq!(env.not_done().await, vec![], "every job is done");
    env.assert_holds_exactly(&corpus);
    let st = env.stats();
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
    let without_id = env
        .db
        .scalar("SELECT count(*) FROM chatferry.jobs WHERE provider_msg_id IS NULL")
        .await;
    assert_eq!(without_id, 0);
    env.sim.sim.set_faults(Default::default()).unwrap();
    env.assert_verify_clean("main").await;
}

/// The real binary, killed with SIGKILL three times at different points
/// (a quarter, half and three quarters through) and restarted each time;
/// a last `run --exit-when-idle` finishes the backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_three_times_still_fills_each_view_exactly() {
    let env = Env::start(Setup {
        kind: Kind::Zim,
        faults: faults(Kind::Zim, 22, 0.05, 0.02),
        auto_register: true,
        ensure: false,
    })
    .await;
    let corpus = Corpus::generate(&Shape {
        kind: Kind::Zim,
        conversations: 80,
        messages: 2_000,
        seed: 5,
        one_sided: 0.15,
        non_text: 0.1,
    });
    let total: usize = corpus.zim_views().values().map(Vec::len).sum();
    env.load(&corpus, "crash").await;
    let dir = tempfile::tempdir().unwrap();
    let config = env.write_config(dir.path());
    let log = dir.path().join("daemon.log");

    for quarter in 1..=3 {
        run_and_kill_at(&env, &config, &log, (total * quarter / 4) as u64).await;
        let stored = env.stored_count();
        assert!(
            stored < total as u64,
            "kill {quarter} came before the end ({stored} of {total})"
        );
    }
    run_to_the_end(&config, &log).await;

    assert_eq!(env.not_done().await, vec![], "every job is done");
    env.assert_holds_exactly(&corpus);
    env.sim.sim.set_faults(Default::default()).unwrap();
    env.assert_verify_clean("crash").await;
}
