//! The ops endpoint: `/healthz` (alive), `/readyz` (database reachable and
//! not draining), `/metrics` (Prometheus), and the read-only dashboard
//! (`/`, `/api/status`).
//!
//! Conversation and user ids are personal data, so when `http.token` is
//! set the dashboard and its API need it: scripts send
//! `Authorization: Bearer <token>`; a browser opens `/?token=<token>`
//! once, which sets an HttpOnly, SameSite=Strict session cookie and
//! redirects to `/`, so the token leaves the address bar and history. The
//! probes stay open for load balancers and Prometheus. The page is
//! embedded in the binary (migration hosts are often offline): no CDN.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::worker::Worker;

/// The page: HTML, CSS and JS in one file, compiled in.
const PAGE: &str = include_str!("dashboard.html");
const COOKIE: &str = "chatferry_token";

/// Shared state the endpoint reports on.
#[derive(Clone)]
pub struct Health {
    pub store: Store,
    pub draining: Arc<AtomicBool>,
}

/// A configured target as the dashboard shows it.
#[derive(Debug, Clone)]
pub struct TargetRate {
    pub name: String,
    /// `zim` or `tencent`.
    pub kind: &'static str,
    /// The configured send rate, calls per second.
    pub limit_per_sec: f64,
}

/// Everything the listener serves from.
#[derive(Clone)]
pub struct Ops {
    pub health: Health,
    pub token: Option<SecretString>,
    /// Every configured target.
    pub targets: Vec<TargetRate>,
    pub worker: Option<Arc<Worker>>,
    /// The last `/api/status` answer and when it was read: tabs and scripts
    /// polling at once share one read of the database per `FRESH_FOR`.
    pub cache: Arc<tokio::sync::Mutex<Option<(std::time::Instant, Value)>>>,
    /// The ingest API, when `[ingest] enabled`.
    pub ingest: Option<Arc<crate::load::ingest::Ingest>>,
}

impl Ops {
    /// What a running daemon serves: its store, worker and configuration.
    pub fn for_daemon(config: &crate::config::Config, store: &Store, worker: &Arc<Worker>) -> Ops {
        Ops {
            health: Health {
                store: store.clone(),
                draining: worker.draining.clone(),
            },
            token: config.http.token.clone(),
            targets: config
                .targets
                .iter()
                .map(|(name, t)| TargetRate {
                    name: name.clone(),
                    kind: t.kind(),
                    limit_per_sec: t.rate_per_sec(),
                })
                .collect(),
            worker: Some(worker.clone()),
            cache: Default::default(),
            ingest: crate::load::ingest::Ingest::from_config(config, store.clone()),
        }
    }
}

/// How long one read of the status serves every caller.
const FRESH_FOR: Duration = Duration::from_secs(2);

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

async fn readyz(State(o): State<Ops>) -> Response {
    if o.health.draining.load(Ordering::Acquire) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    match tokio::time::timeout(Duration::from_secs(2), o.health.store.ping()).await {
        Ok(Ok(())) => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n"),
    }
}

async fn metrics() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        super::metrics::install().render(),
    )
        .into_response()
}

/// Equal in time whatever the first differing byte: the token is a secret.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request's `Authorization: Bearer` token is `want`.
fn bearer_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim().as_bytes(), want.as_bytes()))
}

/// The session cookie's value for a token: a digest, so the cookie holds
/// neither the token itself nor characters a cookie cannot carry.
fn cookie_value(token: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("chatferry dashboard session\0{token}").as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the request carries the token (header or session cookie).
fn authorized(token: Option<&SecretString>, headers: &HeaderMap) -> bool {
    let Some(want) = token else { return true };
    let want = want.expose_secret();
    if bearer_is(headers, want) {
        return true;
    }
    let session = cookie_value(want);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|t| same(t.as_bytes(), session.as_bytes()))
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::CONTENT_TYPE, "text/plain"),
            (header::WWW_AUTHENTICATE, "Bearer"),
        ],
        "this dashboard needs its token (http.token): open /?token=TOKEN in a browser, \
         or send Authorization: Bearer TOKEN\n",
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct PageQuery {
    token: Option<String>,
}

async fn page(State(o): State<Ops>, headers: HeaderMap, Query(q): Query<PageQuery>) -> Response {
    if let (Some(want), Some(given)) = (&o.token, &q.token) {
        if !same(given.as_bytes(), want.expose_secret().as_bytes()) {
            return refused();
        }
        // Trade the token in the address for a session cookie.
        let cookie = format!(
            "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            cookie_value(given)
        );
        let Ok(cookie) = HeaderValue::from_str(&cookie) else {
            return refused();
        };
        return (
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, cookie),
                (header::LOCATION, HeaderValue::from_static("/")),
            ],
        )
            .into_response();
    }
    if !authorized(o.token.as_ref(), &headers) {
        return refused();
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

async fn api_status(State(o): State<Ops>, headers: HeaderMap) -> Response {
    if !authorized(o.token.as_ref(), &headers) {
        return refused();
    }
    match cached_status(&o).await {
        Ok(v) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(v),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "dashboard: cannot read the status");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({ "error": "cannot read the status from the database" })),
            )
                .into_response()
        }
    }
}

async fn cached_status(o: &Ops) -> Result<Value, sqlx::Error> {
    // Held across the read, so concurrent callers wait for one query.
    let mut cache = o.cache.lock().await;
    if let Some((at, v)) = cache.as_ref() {
        if at.elapsed() < FRESH_FOR {
            return Ok(v.clone());
        }
    }
    let v = status_object(o).await?;
    *cache = Some((std::time::Instant::now(), v.clone()));
    Ok(v)
}

/// `status --json`'s object plus the dashboard's sections, rates and workers.
pub async fn status_object(o: &Ops) -> Result<Value, sqlx::Error> {
    let store = &o.health.store;
    let rows = store.status(None).await?;
    let mut v = crate::status::json(&rows);
    let dash = serde_json::to_value(store.dashboard().await?).unwrap_or_default();
    if let (Some(obj), Value::Object(d)) = (v.as_object_mut(), dash) {
        obj.extend(d);
        obj.insert("rates".into(), rates(o));
        obj.insert("generated_at_ms".into(), Value::from(now_ms()));
    }
    Ok(v)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Each target's limit, this process's share of it and whether it halted.
fn rates(o: &Ops) -> Value {
    let (live, shares, halted) = match &o.worker {
        Some(w) => {
            let (live, shares) = w.rate_shares();
            (live, shares, w.halted_targets())
        }
        None => (0, Vec::new(), Vec::new()),
    };
    let list: Vec<Value> = o
        .targets
        .iter()
        .map(|t| {
            let share = shares.iter().find(|(n, _)| *n == t.name).map(|(_, s)| *s);
            let halt = halted.iter().find(|(n, _)| *n == t.name).map(|(_, r)| r.clone());
            serde_json::json!({
                "target": t.name,
                "kind": t.kind,
                "limit_per_sec": t.limit_per_sec,
                "share_per_sec": share,
                "active_workers": live,
                "halted": halt,
            })
        })
        .collect();
    Value::Array(list)
}

#[derive(serde::Deserialize)]
struct IngestQuery {
    batch: Option<String>,
}

fn json_error(status: StatusCode, error: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

/// `POST /v1/targets/{target}/messages`: live messages for the cut-over
/// (see `load::ingest`). Only the bearer token opens it (no cookie: it is
/// an API for the old system's backend, not a page).
async fn ingest(
    State(o): State<Ops>,
    Path(target): Path<String>,
    Query(q): Query<IngestQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let Some(ing) = o.ingest.clone() else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if !bearer_is(&headers, ing.token.expose_secret()) {
        return ingest_refused();
    }
    let bytes = match read_capped(&headers, body, ing.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(too_big) => return too_big,
    };
    let batch = q.batch.unwrap_or_else(|| "live".into());
    match ing.post(&target, &batch, bytes).await {
        Ok(answer) => {
            tracing::debug!(target_name = %target, batch = %batch, accepted = answer.accepted,
                known = answer.known, rejected = answer.rejected.len(), "ingest: stored");
            (StatusCode::OK, axum::Json(answer)).into_response()
        }
        Err(e) => {
            let status = ingest_status(&e);
            if status.is_server_error() {
                tracing::warn!(target_name = %target, error = %e, "ingest: nothing stored");
            }
            json_error(status, e.to_string())
        }
    }
}

/// The ingest API's answer to a missing or wrong token.
fn ingest_refused() -> Response {
    let mut r = json_error(
        StatusCode::UNAUTHORIZED,
        "send the ingest token (ingest.token) as Authorization: Bearer TOKEN".into(),
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// Reads a body of at most `limit` bytes, checking the declared length
/// first and then while reading, so an oversize body is never buffered
/// whole; the error is the answer to send.
async fn read_capped(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, Response> {
    let too_big = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is over ingest.max_body_bytes ({limit} bytes); post fewer messages per request"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| too_big())
}

/// The HTTP status an ingest failure is answered with.
fn ingest_status(e: &crate::load::ingest::IngestError) -> StatusCode {
    use crate::load::ingest::IngestError as E;
    match e {
        E::UnknownTarget(_) => StatusCode::NOT_FOUND,
        E::NotMessages(_) => StatusCode::BAD_REQUEST,
        E::HistoryBatch(_) => StatusCode::CONFLICT,
        E::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn router(ops: Ops) -> Router {
    Router::new()
        .route("/v1/targets/{target}/messages", post(ingest))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(page))
        .route("/api/status", get(api_status))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "not found\n") })
        .with_state(ops)
}

/// The ops endpoint bound to its listener, not serving yet.
pub struct OpsServer {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    app: Router,
}

/// A listen address that cannot be bound (exit code 2: a configuration
/// problem).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on http.listen {listen}: {source}")]
pub struct ListenError {
    pub listen: String,
    pub source: std::io::Error,
}

impl OpsServer {
    /// Binds `listen` (port 0 picks a free one).
    pub async fn bind(listen: &str, ops: Ops) -> Result<OpsServer, ListenError> {
        let bound = tokio::net::TcpListener::bind(listen)
            .await
            .and_then(|l| Ok((l.local_addr()?, l)));
        let (addr, listener) = bound.map_err(|source| ListenError {
            listen: listen.to_string(),
            source,
        })?;
        tracing::info!(%addr, "ops endpoint listening");
        Ok(OpsServer {
            listener,
            addr,
            app: router(ops),
        })
    }

    /// The address it is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop`, then lets open requests finish.
    pub async fn run(self, stop: CancellationToken) {
        let served = axum::serve(self.listener, self.app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "ops endpoint stopped");
        }
    }
}

/// Binds `listen` and serves on a task of its own until `stop`; returns
/// the bound address.
pub async fn serve(listen: &str, ops: Ops, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let server = OpsServer::bind(listen, ops).await?;
    let addr = server.local_addr();
    tokio::spawn(server.run(stop));
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_token_opens_by_header_or_session_cookie_only() {
        let token = SecretString::new("t0k; en=\"x\"".into());
        let t = Some(&token);
        assert!(authorized(None, &HeaderMap::new()), "no token configured: open");
        assert!(!authorized(t, &HeaderMap::new()));
        assert!(authorized(
            t,
            &headers(&[(header::AUTHORIZATION, "Bearer t0k; en=\"x\"")])
        ));
        assert!(!authorized(t, &headers(&[(header::AUTHORIZATION, "Bearer t0k")])));
        assert!(!authorized(
            t,
            &headers(&[(header::AUTHORIZATION, "Basic t0k; en=\"x\"")])
        ));
        let session = format!("a=1; {COOKIE}={}", cookie_value("t0k; en=\"x\""));
        assert!(authorized(t, &headers(&[(header::COOKIE, &session)])));
        // The raw token is not a session.
        assert!(!authorized(
            t,
            &headers(&[(header::COOKIE, "chatferry_token=t0k")])
        ));
        assert!(!cookie_value("t0k").contains("t0k"));
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
