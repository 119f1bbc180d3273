//! `chatferry accounts import` end to end: the real binary against the
//! simulator over loopback HTTP, with the job table in a real Postgres.
//! Registering is re-runnable on both providers (ZIM answers a call whose
//! users all exist with a non-zero `Code`, which is still success), and a
//! `--users` file's profiles arrive at the provider.

mod common;

use std::path::Path;

use common::provider::*;
use serde_json::{json, Value};

/// Runs `chatferry accounts import --target T EXTRA...`; returns the exit
/// code, stdout and stderr.
async fn accounts_import(config: &Path, target: &str, extra: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chatferry"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "accounts",
            "import",
            "--target",
            target,
        ])
        .args(extra)
        .env_remove("DATABASE_URL")
        .env_remove("CHATFERRY_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("the chatferry binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn env(kind: Kind) -> Env {
    Env::start(Setup {
        kind,
        faults: Default::default(),
        auto_register: false,
        ensure: false,
    })
    .await
}

/// The simulator's users of this provider, with their profiles.
async fn sim_users(env: &Env) -> Vec<Value> {
    let v = env
        .sim
        .get(&format!("_sim/users?provider={}", env.kind.side()))
        .await;
    v["apps"][0]["users"].as_array().unwrap().clone()
}

/// Registers a loaded batch's users twice (the second time every user
/// exists), then sends the batch: nothing is refused for a missing user.
async fn import_twice_then_send(kind: Kind) {
    let env = env(kind).await;
    let corpus = Corpus::generate(&Shape {
        kind,
        conversations: 3,
        messages: 30,
        seed: 11,
        one_sided: 0.0,
        non_text: 0.0,
    });
    env.load(&corpus, "b").await;
    let dir = tempfile::tempdir().unwrap();
    let config = env.write_config(dir.path());
    for run in 1..=2 {
        let (code, out, err) = accounts_import(&config, env.target(), &[]).await;
        assert_eq!(code, 0, "run {run}: {out}{err}");
        assert!(out.contains("6 users registered"), "run {run}: {out}");
        assert!(out.contains("0 refused"), "run {run}: {out}");
    }
    let st = env.stats();
    let api = match kind {
        Kind::Zim => "UserRegister",
        Kind::Tencent => "multiaccount_import",
    };
    assert_eq!(st["calls_by_api"][api], 2, "{st}");
    assert_eq!(sim_users(&env).await.len(), 6);
    env.run_until_idle().await;
    assert_eq!(env.not_done().await, vec![]);
    env.assert_holds_exactly(&corpus);
    assert_eq!(env.stats()["validation_failures"], 0);
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
    let env = env(kind).await;
    let dir = tempfile::tempdir().unwrap();
    let config = env.write_config(dir.path());
    let users = dir.path().join("users.jsonl");
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
        let (code, out, err) = accounts_import(&config, env.target(), &["--users", users_arg]).await;
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
        sim_users(&env).await,
        vec![
            json!({"id": "ann", "name": "Ann", "avatar": "https://cdn.example/ann.png"}),
            json!({"id": "bob", "name": null, "avatar": null}),
        ]
    );
    // Without the bad lines the same file registers cleanly: exit 0.
    std::fs::write(&users, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
    let (code, out, err) = accounts_import(&config, env.target(), &["--users", users_arg]).await;
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
    use common::{Recorder, Reply};
    let rec = Recorder::start(|body, _| {
        if body.get("AccountList").is_some() {
            Reply::Ok
        } else {
            Reply::Code(tc::ACCOUNT_NOT_IMPORTED)
        }
    })
    .await;
    let db = common::TestDb::new().await;
    let cfg = common::config(
        &db,
        &format!(
            "{}{}ensure_accounts = true\n",
            common::FAST_WORKER,
            common::tencent_target("t", rec.addr)
        ),
    );
    let f = common::jsonl(&[common::text_line(
        "m1",
        "ann",
        "bob",
        common::now_ms() - 1000,
        "hi",
    )]);
    common::load(&db, &cfg, "t", "b", &[f.path()], None).await;
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        common::run_until_idle(&db, &cfg),
    )
    .await
    .expect("the worker goes idle: registering does not loop");
    assert!(report.halted.is_empty(), "{:?}", report.halted);
    let (status, code, reason): (String, Option<i64>, Option<String>) =
        sqlx::query_as("SELECT status::text, last_code, last_error FROM chatferry.jobs")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert_eq!(code, Some(tc::ACCOUNT_NOT_IMPORTED));
    assert!(
        reason.as_deref().unwrap_or("").contains("still missing"),
        "{reason:?}"
    );
    let log = rec.log.lock().unwrap().clone();
    let imports = log.iter().filter(|r| r.from.is_empty()).count();
    let sends = log.len() - imports;
    assert_eq!((imports, sends), (1, 2), "one account import, one resend");
}
