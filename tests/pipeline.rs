//! A ZIM lane marks its next job in flight while the job before it is
//! still in flight (issue 14 part 3: one hot view waits for no commit
//! between two calls). When that job is not accepted, the next one's early
//! mark is taken back in the transaction that records the outcome: the next
//! job is never left in doubt, never reconciled, and its attempts count
//! only the calls that left.

mod common;

use chatferry::providers::zim::codes as zc;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_answer_takes_back_the_next_jobs_early_mark() {
    // A fifth of the imports are answered "too many requests": the job is
    // resent at once, and the job behind it was already marked.
    let mut faults = faults(Kind::Zim, 41, 0.2, 0.0);
    faults.zim.transient_codes = vec![zc::TOO_MANY_REQUESTS];
    faults.zim.apis = vec!["ImportPeerMsg".into()];
    let env = TestApp::simulated(ZimTarget::default(), SimSetup::faulty(faults)).await;
    let corpus = Shape::new(Kind::Zim, 3, 240).seed(41).generate();
    env.load_corpus(&corpus, "p").await;
    env.run_until_idle().await;

    assert_eq!(env.not_done().await, vec![], "every job is done");
    env.assert_holds_exactly(&corpus);
    let st = env.stats();
    let imports = st["calls_by_api"]["ImportPeerMsg"].as_i64().unwrap();
    assert!(imports > env.jobs().await, "no rate-limit answer happened: {st}");
    assert!(
        st["calls_by_api"]["QueryPeerMsg"].as_u64().unwrap_or(0) == 0,
        "a job was reconciled: {st}"
    );
    assert_eq!(
        env.db
            .scalar("SELECT count(*) FROM chatferry.jobs WHERE in_doubt OR reconcile_attempts > 0")
            .await,
        0,
        "a job marked early, behind a rate-limited one, was left in doubt"
    );
    assert_eq!(
        env.db
            .scalar("SELECT sum(attempts)::bigint FROM chatferry.jobs")
            .await,
        imports,
        "attempts count the calls that left, not the marks taken back"
    );
}
