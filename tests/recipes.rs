//! The README's PostgreSQL recipe ("Getting data in"), run as it stands:
//! psql streams a source table through `COPY ... TO STDOUT` into the real
//! binary's `load -`. The texts carry what breaks naive exports
//! (backslashes, quotes, newlines, control characters, emoji), and each
//! must arrive in the job's body unchanged.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::TestDb;
use serde_json::Value;

/// The shell block that follows the `recipe: NAME` marker in README.md.
fn recipe(name: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let marker = format!("<!-- recipe: {name}");
    let after = &readme[readme.find(&marker).expect("the recipe is in the README")..];
    let block = &after[after.find("```sh\n").expect("a sh block") + 6..];
    block[..block.find("```").unwrap()].to_string()
}

const TEXTS: &[&str] = &[
    "plain",
    r"a backslash C:\temp\new and \n literally",
    "\"quoted\", with, commas",
    "two\nlines\tand a tab",
    "control \u{1} and \u{2} characters",
    "emoji 🚢 and 中文",
];

#[tokio::test]
async fn the_postgres_recipe_streams_a_table_into_load() {
    let db = TestDb::new().await;
    let pool = db.store.pool();
    sqlx::query(
        "CREATE TABLE public.legacy_messages (id bigint PRIMARY KEY, sender text, recipient text,
                                              created_at timestamptz, body text)",
    )
    .execute(pool)
    .await
    .unwrap();
    for (i, t) in TEXTS.iter().enumerate() {
        sqlx::query(
            "INSERT INTO public.legacy_messages VALUES ($1, 'ann', 'ben', now() - interval '1 hour', $2)",
        )
        .bind(i as i64 + 1)
        .bind(*t)
        .execute(pool)
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("daemon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"{}\"\n[targets.tim]\nkind = \"tencent\"\nendpoint = \"http://127.0.0.1:9/\"\n\
             sdk_app_id = 1400000000\nadmin_identifier = \"administrator\"\nsecret_key = \"k\"\n",
            db.url
        ),
    )
    .unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_chatferry")).parent().unwrap();
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &recipe("postgres")])
        .current_dir(dir.path())
        .env("SOURCE_URL", &db.url)
        .env("CHATFERRY_CONFIG", &cfg)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "recipe failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{n} accepted, 0 rejected", n = TEXTS.len())),
        "{stdout}"
    );

    let rows: Vec<(String, String)> = sqlx::query_as("SELECT source_id, body FROM chatferry.jobs")
        .fetch_all(pool)
        .await
        .unwrap();
    let bodies: HashMap<String, Value> = rows
        .into_iter()
        .map(|(id, b)| (id, serde_json::from_str(&b).unwrap()))
        .collect();
    assert_eq!(bodies.len(), TEXTS.len());
    for (i, t) in TEXTS.iter().enumerate() {
        let body = &bodies[&(i + 1).to_string()];
        assert_eq!(body["MsgBody"][0]["MsgContent"]["Text"], *t, "message {}", i + 1);
        assert_eq!(body["From_Account"], "ann");
    }
}
