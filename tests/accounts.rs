//! `chatferry accounts import` end to end: the real binary against the
//! simulator over loopback HTTP, with the job table in a real Postgres.
//! Registering is re-runnable on both providers (ZIM answers a call whose
//! users all exist with a non-zero `Code`, which is still success), and a
//! `--users` file's profiles arrive at the provider.

mod common;

use common::*;
use serde_json::{json, Value};

/// Runs `chatferry accounts import --target T EXTRA...`; returns the exit
/// code, stdout and stderr.
async fn accounts_import(bin: &Binary, target: &str, extra: &[&str]) -> (i32, String, String) {
    let args = [&["accounts", "import", "--target", target], extra].concat();
    let ran = bin.cli(&args).await;
    (ran.code(), ran.stdout, ran.stderr)
}

/// An app on the simulator, which refuses unknown users.
async fn app_of(kind: Kind) -> TestApp<TestSim> {
    TestApp::simulated(Target::of(kind), SimSetup::default()).await
}

/// The simulator's users of this provider, with their profiles.
async fn sim_users(app: &TestApp<TestSim>) -> Vec<Value> {
    let v = app
        .provider
        .get(&format!("_sim/users?provider={}", app.kind().side()))
        .await;
    v["apps"][0]["users"].as_array().unwrap().clone()
}

/// Registers a loaded batch's users twice (the second time every user
/// exists), then sends the batch: nothing is refused for a missing user.
async fn import_twice_then_send(kind: Kind) {
    let app = app_of(kind).await;
    let corpus = Shape::new(kind, 3, 30).seed(11).generate();
    app.load_corpus(&corpus, "b").await;
    let bin = app.binary();
    for run in 1..=2 {
        let (code, out, err) = accounts_import(&bin, app.target(), &[]).await;
        assert_eq!(code, 0, "run {run}: {out}{err}");
        assert!(out.contains("6 users registered"), "run {run}: {out}");
        assert!(out.contains("0 refused"), "run {run}: {out}");
    }
    let st = app.stats();
    let api = match kind {
        Kind::Zim => "UserRegister",
        Kind::Tencent => "multiaccount_import",
    };
    assert_eq!(st["calls_by_api"][api], 2, "{st}");
    assert_eq!(sim_users(&app).await.len(), 6);
    app.send_all().await;
    assert_eq!(app.not_done().await, vec![]);
    app.assert_holds_exactly(&corpus);
    assert_eq!(app.stats()["validation_failures"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zim_accounts_import_can_be_run_twice() {
    import_twice_then_send(Kind::Zim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_accounts_import_can_be_run_twice() {
    import_twice_then_send(Kind::Tencent).await;
}

/// A users file with good and bad lines: the bad ones are reported with
/// their line number and reason (exit 3, like `load`), the good ones are
/// registered with their profiles; a re-run succeeds the same way.
async fn profiles_arrive(kind: Kind) {
    let app = app_of(kind).await;
    let bin = app.binary();
    let users = bin.dir().join("users.jsonl");
    let long_name = "n".repeat(600);
    let lines = [
        json!({"id": "ann", "name": "Ann", "avatar": "https://cdn.example/ann.png"}).to_string(),
        json!({"id": "bob"}).to_string(),
        "{not json".to_string(),
        json!({"id": "cat", "name": long_name}).to_string(),
        String::new(),
        json!({"id": "ann", "name": "Ann again"}).to_string(),
        json!({"name": "no id"}).to_string(),
    ];
    std::fs::write(&users, lines.join("\n") + "\n").unwrap();
    let users_arg = users.to_str().unwrap();
    for run in 1..=2 {
        let (code, out, err) = accounts_import(&bin, app.target(), &["--users", users_arg]).await;
        assert_eq!(code, 3, "run {run}: {out}{err}");
        assert!(out.contains("2 users registered"), "run {run}: {out}");
        assert!(out.contains("4 lines rejected"), "run {run}: {out}");
        for want in [
            "line 3: invalid JSON",
            "line 4: name is 600 bytes",
            "line 6: id \"ann\" was already given at line 1",
            "line 7: invalid JSON at column",
        ] {
            assert!(err.contains(want), "run {run}: missing {want:?} in {err}");
        }
    }
    assert_eq!(
        sim_users(&app).await,
        vec![
            json!({"id": "ann", "name": "Ann", "avatar": "https://cdn.example/ann.png"}),
            json!({"id": "bob", "name": null, "avatar": null}),
        ]
    );
    // Without the bad lines the same file registers cleanly: exit 0.
    std::fs::write(&users, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
    let (code, out, err) = accounts_import(&bin, app.target(), &["--users", users_arg]).await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zim_profiles_arrive_and_a_rerun_succeeds() {
    profiles_arrive(Kind::Zim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_profiles_arrive_and_a_rerun_succeeds() {
    profiles_arrive(Kind::Tencent).await;
}

/// `ensure_accounts` against a provider that keeps saying an account is
/// missing although importing it succeeds: the account is imported once,
/// the resend is refused again, and the job fails with a reason that says
/// so. Before the bound, each refusal imported again and the job never
/// ended (max_attempts defaults to unlimited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_accounts_registers_once_and_then_fails_the_job() {
    use chatferry::providers::tencent::codes as tc;
    let target = TencentTarget {
        name: "t".into(),
        ensure_accounts: true,
        ..Default::default()
    };
    let app = TestApp::builder()
        .tencent(target)
        .recorder(|body, _| {
            if body.get("AccountList").is_some() {
                Reply::Ok
            } else {
                Reply::Code(tc::ACCOUNT_NOT_IMPORTED)
            }
        })
        .spawn()
        .await;
    app.load("b", &[text_line("m1", "ann", "bob", now_ms() - 1000, "hi")])
        .await;
    let report = tokio::time::timeout(std::time::Duration::from_secs(30), app.run_until_idle())
        .await
        .expect("the worker goes idle: registering does not loop");
    assert!(report.halted.is_empty(), "{:?}", report.halted);
    let (status, code, reason): (String, Option<i64>, Option<String>) =
        sqlx::query_as("SELECT status::text, last_code, last_error FROM chatferry.jobs")
            .fetch_one(app.db.store.pool())
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert_eq!(code, Some(tc::ACCOUNT_NOT_IMPORTED));
    assert!(
        reason.as_deref().unwrap_or("").contains("still missing"),
        "{reason:?}"
    );
    let log = app.provider.log();
    let imports = log.iter().filter(|r| r.from.is_empty()).count();
    let sends = log.len() - imports;
    assert_eq!((imports, sends), (1, 2), "one account import, one resend");
}
