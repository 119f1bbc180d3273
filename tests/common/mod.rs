//! Test helpers: a fresh database per test built from the migrations, and
//! a recording HTTP provider on loopback.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chatferry::config::Config;
use chatferry::store::Store;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;

/// The server tests connect to: DATABASE_URL, else the local default.
pub fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_db(url: &str, db: &str) -> String {
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
        let admin = with_db(server, "postgres");
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .expect("connect to the test server (set DATABASE_URL, or run scripts/test)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = with_db(server, &name);
        let cfg = Config::from_toml(&format!("[database]\nurl = \"{url}\"\n")).unwrap();
        let store = Store::connect(&cfg.database, cfg.database.url.as_ref().unwrap())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        TestDb { url, name, store }
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }
}

/// Builds a config for `db` with the given extra TOML.
pub fn config(db: &TestDb, extra: &str) -> Config {
    Config::from_toml(&format!("[database]\nurl = \"{}\"\n{extra}", db.url)).unwrap()
}

/// A Tencent target pointing at `addr`, unthrottled.
pub fn tencent_target(name: &str, addr: SocketAddr) -> String {
    format!(
        "[targets.{name}]\nkind = \"tencent\"\nendpoint = \"http://{addr}/\"\nsdk_app_id = 1400000000\n\
         admin_identifier = \"administrator\"\nsecret_key = \"test-key\"\nrate_per_sec = 100000\n"
    )
}

/// Fast worker settings for tests. Lanes send one call at a time (the
/// runner ZIM uses), so these suites can check arrival order at the
/// recording provider; `tests/tencent.rs` covers Tencent's window.
pub const FAST_WORKER: &str =
    "[worker]\nconcurrency = 64\nmax_concurrency = 64\nlease_secs = 3\nrequest_timeout_ms = 1000\n\
    poll_interval_ms = 20\nretry_min_ms = 10\nretry_max_ms = 50\nshutdown_grace_secs = 5\nreconcile_settle_secs = 2\n\
    lane_window = 1\n";

/// What the recording provider answers to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Ok,
    /// An ErrorCode answer (not applied).
    Code(i64),
    /// Apply, then drop the connection without an answer.
    ApplyThenDrop,
    /// Hold the answer this long, then answer OK.
    Slow(Duration),
}

/// One received request, as the recorder saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub conversation: (String, String),
    pub from: String,
    pub text: String,
    pub applied: bool,
}

type Decide = dyn Fn(&Value, u32) -> Reply + Send + Sync;

/// A Tencent-like HTTP server on loopback that records what it receives.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Received>>>,
    seen: Arc<Mutex<HashMap<String, u32>>>,
    in_flight: Arc<Mutex<HashMap<(String, String), u32>>>,
    pub overlaps: Arc<Mutex<u32>>,
}

fn conv(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.into(), b.into())
    } else {
        (b.into(), a.into())
    }
}

fn text_of(v: &Value) -> String {
    v["MsgBody"][0]["MsgContent"]["Text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

impl Recorder {
    /// Starts a recorder; `decide(body, nth_time_seen)` picks the answer.
    pub async fn start(decide: impl Fn(&Value, u32) -> Reply + Send + Sync + 'static) -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rec = Recorder {
            addr,
            log: Arc::default(),
            seen: Arc::default(),
            in_flight: Arc::default(),
            overlaps: Arc::default(),
        };
        let decide: Arc<Decide> = Arc::new(decide);
        let r = rec.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let r = r.clone();
                let decide = decide.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let r = r.clone();
                        let decide = decide.clone();
                        async move { r.handle(req, &*decide).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        rec
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        decide: &Decide,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let body = req
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let from = v["From_Account"].as_str().unwrap_or_default().to_string();
        let to = v["To_Account"].as_str().unwrap_or_default().to_string();
        let key = format!("{}|{}|{}", v["MsgSeq"], v["MsgRandom"], v["MsgTimeStamp"]);
        let c = conv(&from, &to);
        let nth = {
            let mut s = self.seen.lock().unwrap();
            let n = s.entry(format!("{c:?}{key}")).or_insert(0);
            *n += 1;
            *n
        };
        {
            let mut f = self.in_flight.lock().unwrap();
            let n = f.entry(c.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                *self.overlaps.lock().unwrap() += 1;
            }
        }
        let reply = decide(&v, nth);
        let applied = !matches!(reply, Reply::Code(_));
        self.log.lock().unwrap().push(Received {
            conversation: c.clone(),
            from,
            text: text_of(&v),
            applied,
        });
        let out = match reply {
            Reply::Ok => Ok(ok(0)),
            Reply::Code(code) => Ok(ok(code)),
            Reply::Slow(d) => {
                tokio::time::sleep(d).await;
                Ok(ok(0))
            }
            Reply::ApplyThenDrop => Err(std::io::Error::other("drop")),
        };
        *self.in_flight.lock().unwrap().get_mut(&c).unwrap() -= 1;
        out
    }

    /// Applied messages per conversation, in arrival order (texts).
    pub fn applied(&self) -> HashMap<(String, String), Vec<String>> {
        let mut out: HashMap<(String, String), Vec<String>> = HashMap::new();
        for r in self.log.lock().unwrap().iter().filter(|r| r.applied) {
            out.entry(r.conversation.clone())
                .or_default()
                .push(r.text.clone());
        }
        out
    }

    pub fn received(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

fn ok(code: i64) -> Response<Full<Bytes>> {
    let body = if code == 0 {
        serde_json::json!({"ActionStatus": "OK", "ErrorCode": 0, "ErrorInfo": ""})
    } else {
        serde_json::json!({"ActionStatus": "FAIL", "ErrorCode": code, "ErrorInfo": "injected"})
    };
    Response::new(Full::new(Bytes::from(body.to_string())))
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

/// Waits until `cond` holds, polling; panics after `limit`.
pub async fn wait_until<F: FnMut() -> bool>(limit: Duration, what: &str, mut cond: F) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
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
    chatferry::load::run(
        &db.store,
        cfg,
        chatferry::load::LoadOptions {
            target: target.into(),
            batch: batch.into(),
            rejects,
            files: files.iter().map(|p| p.display().to_string()).collect(),
            now_ms: now_ms(),
            progress: false,
            priority: None,
        },
    )
    .await
    .unwrap()
}

/// Runs a worker until idle.
pub async fn run_until_idle(db: &TestDb, cfg: &Config) -> chatferry::worker::RunReport {
    let providers = chatferry::providers::build_all(cfg).unwrap();
    let w = chatferry::worker::Worker::new(db.store.clone(), cfg, providers);
    w.run(tokio_util::sync::CancellationToken::new(), true)
        .await
        .unwrap()
}
pub mod provider;
