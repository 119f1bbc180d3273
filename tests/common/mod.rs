//! Test helpers. Each test builds a [`TestApp`]: a fresh database built
//! from the migrations, the provider it talks to on loopback (the
//! recording server or the simulator), and typed settings pointing the
//! targets at it.
//!
//! - `settings`: the configuration, typed, rendered to TOML in one place.
//! - `app`: the test app and its builder.
//! - `recorder`: the recording provider and a canned server (axum).
//! - `sim`: a client of the simulator (signed URLs, control endpoints).
//! - `simulated`: what an app on the simulator asserts about its contents.
//! - `corpus`: generated messages with labels, and the labels stored.
//! - `bin`: the real binary.

#![allow(dead_code)]

pub mod app;
pub mod bin;
pub mod corpus;
pub mod recorder;
pub mod settings;
pub mod sim;
pub mod simulated;

use std::future::Future;
use std::time::{Duration, Instant};

use chatferry::config::Config;
use chatferry::store::Store;

// Each test binary uses some of these; the rest would warn there.
#[allow(unused_imports)]
pub use app::{Running, SimSetup, TestApp, RATE};
#[allow(unused_imports)]
pub use bin::{chatferry, chatferry_with, signal, Binary, Ran};
#[allow(unused_imports)]
pub use corpus::{message_fields, tim_label, Corpus, Msg, Shape};
#[allow(unused_imports)]
pub use recorder::{conv, Canned, Recorder, Reply};
#[allow(unused_imports)]
pub use settings::{
    HttpSettings, IngestSettings, Kind, LoadSettings, LogSettings, Settings, Target, TencentTarget,
    WorkerSettings, ZimTarget,
};
#[allow(unused_imports)]
pub use sim::TestSim;
#[allow(unused_imports)]
pub use simulated::{assert_every_kind_round_trips, faults};

/// The server tests connect to: DATABASE_URL, else the local default.
pub fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` with its database replaced by `db`.
pub fn with_db(url: &str, db: &str) -> String {
    let mut u = reqwest::Url::parse(url).expect("DATABASE_URL parses");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// A fresh database with the schema applied.
pub struct TestDb {
    pub url: String,
    pub name: String,
    pub store: Store,
}

impl TestDb {
    /// A fresh database on the shared test server.
    pub async fn new() -> TestDb {
        TestDb::on(&base_url()).await
    }

    /// A fresh database on the server at `server` (a Postgres URL).
    pub async fn on(server: &str) -> TestDb {
        chatferry::telemetry::init(&chatferry::config::LogConfig {
            level: "warn".into(),
            format: chatferry::config::LogFormat::Text,
        });
        let name = format!("cf_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin(server).await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = with_db(server, &name);
        let cfg = Settings {
            database_url: Some(url.clone()),
            ..Default::default()
        }
        .config();
        let store = Store::connect(&cfg.database, cfg.database.url.as_ref().unwrap())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        TestDb { url, name, store }
    }

    /// The one `bigint` that `sql` selects.
    pub async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    /// Waits until `sql`'s count is `want`.
    pub async fn wait_for_count(&self, sql: &str, want: i64, limit: Duration) {
        let n = poll(limit, || self.scalar(sql), |n| *n == want).await;
        assert_eq!(n, want, "timed out: {sql} is {n}, want {want}");
    }
}

/// A connection to the `postgres` database of the server at `server`.
pub async fn admin(server: &str) -> sqlx::PgConnection {
    <sqlx::PgConnection as sqlx::Connection>::connect(&with_db(server, "postgres"))
        .await
        .expect("connect to the test server (set DATABASE_URL, or run scripts/test)")
}

/// Unix ms now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Writes JSONL lines to a temp file.
pub fn jsonl(lines: &[String]) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    f.flush().unwrap();
    f
}

/// A text message line.
pub fn text_line(id: &str, from: &str, to: &str, at: i64, text: &str) -> String {
    serde_json::json!({"id": id, "from": from, "to": to, "sent_at_ms": at, "type": "text", "text": text})
        .to_string()
}

/// A free loopback port (for a listener the binary opens itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GETs `url` (with `token` as a Bearer token) within 5 s: the status and
/// the body, or `None` if nothing answered.
pub async fn http_get(url: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut req = reqwest::Client::new().get(url).timeout(Duration::from_secs(5));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// How often the waits below look again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Waits until `cond` holds, polling; panics after `limit`.
pub async fn wait_until<F: FnMut() -> bool>(limit: Duration, what: &str, mut cond: F) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Probes until `done` holds for the value or `limit` has passed; returns
/// the last value, for the caller to assert on.
pub async fn poll<T, F, Fut>(limit: Duration, mut probe: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let start = Instant::now();
    loop {
        let value = probe().await;
        if done(&value) || start.elapsed() >= limit {
            return value;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Loads files through the library, as `chatferry load` does.
pub async fn load(
    db: &TestDb,
    cfg: &Config,
    target: &str,
    batch: &str,
    files: &[&std::path::Path],
    rejects: Option<std::path::PathBuf>,
) -> chatferry::load::LoadSummary {
    chatferry::load::run(&db.store, cfg, load_options(target, batch, files, rejects))
        .await
        .unwrap()
}

/// What `chatferry load --target T --batch B FILES` asks for.
pub fn load_options(
    target: &str,
    batch: &str,
    files: &[&std::path::Path],
    rejects: Option<std::path::PathBuf>,
) -> chatferry::load::LoadOptions {
    chatferry::load::LoadOptions {
        target: target.into(),
        batch: batch.into(),
        rejects,
        files: files.iter().map(|p| p.display().to_string()).collect(),
        now_ms: now_ms(),
        progress: false,
        priority: None,
    }
}

/// Runs a worker until idle.
pub async fn run_until_idle(db: &TestDb, cfg: &Config) -> chatferry::worker::RunReport {
    let providers = chatferry::providers::build_all(cfg).unwrap();
    let w = chatferry::worker::Worker::new(db.store.clone(), cfg, providers);
    w.run(tokio_util::sync::CancellationToken::new(), true)
        .await
        .unwrap()
}
