//! The HTTP side: accepting, routing, and applying the drawn faults around
//! a provider call.
//!
//! A dropped connection (reset before or after the call is applied, or an
//! outage in `reset` mode) is the service returning an error, which makes
//! hyper close the connection without an answer; the socket then closes
//! with `SO_LINGER` 0 so the client sees a TCP reset.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::faults::{
    Action, OutageMode, Side, F_APPLY_THEN_DROP, F_APPLY_THEN_ERROR, F_HTTP_5XX, F_LATE, F_LATENCY, F_OUTAGE,
    F_RESET, F_SLOW, F_TRANSIENT,
};
use super::state::Api;
use super::{control, tencent, zim, Answer, Ctx, Query, Shared};

/// The largest request body read.
pub(crate) const MAX_BODY: usize = 1 << 20;

/// The error that makes hyper drop a connection without an answer.
#[derive(Debug)]
pub(crate) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the simulator")
    }
}

impl std::error::Error for Dropped {}

/// A TCP stream that resets (instead of closing) when asked to.
struct ResetOnDrop {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ResetOnDrop {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetOnDrop {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Accepts connections until cancelled.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "simulator: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tracker.spawn(serve_connection(stream, shared.clone(), cancel.clone()));
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, cancel: CancellationToken) {
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ResetOnDrop {
        stream,
        reset: reset.clone(),
    });
    let svc = service_fn(move |req| handle(shared.clone(), reset.clone(), req));
    let conn = http1::Builder::new().serve_connection(io, svc);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = cancel.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Which provider API a path and query name.
enum Route {
    Api(Api),
    ZimBadAction,
    TencentUnknown,
    NotFound,
}

fn route(path: &str, q: &Query) -> Route {
    if path == "/" || path.is_empty() {
        return match q.get("Action") {
            Some("ImportPeerMsg") => Route::Api(Api::ImportPeerMsg),
            Some("QueryPeerMsg") => Route::Api(Api::QueryPeerMsg),
            Some("UserRegister") => Route::Api(Api::UserRegister),
            _ => Route::ZimBadAction,
        };
    }
    match path.trim_end_matches('/') {
        "/v4/openim/importmsg" => Route::Api(Api::ImportMsg),
        "/v4/openim/admin_getroammsg" => Route::Api(Api::GetRoamMsg),
        "/v4/im_open_login_svc/account_import" => Route::Api(Api::AccountImport),
        "/v4/im_open_login_svc/multiaccount_import" => Route::Api(Api::MultiAccountImport),
        p if p.starts_with("/v4/") => Route::TencentUnknown,
        _ => Route::NotFound,
    }
}

pub(crate) fn response(a: Answer) -> Response<Full<Bytes>> {
    Response::builder()
        .status(a.status)
        .header(hyper::header::CONTENT_TYPE, a.content_type)
        .body(Full::new(a.body))
        .expect("status and header are valid")
}

async fn handle(
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    if path == "/_sim" || path.starts_with("/_sim/") {
        return Ok(response(control::handle(&shared, &parts, body).await));
    }
    let q = Query::parse(parts.uri.query().unwrap_or(""));
    let api = match route(path, &q) {
        Route::Api(api) => api,
        Route::ZimBadAction => {
            let rid = shared.request_ids.fetch_add(1, Ordering::Relaxed);
            return Ok(response(zim::bad_action(q.get("Action"), rid)));
        }
        Route::TencentUnknown => return Ok(response(tencent::unknown_api())),
        Route::NotFound => return Ok(response(Answer::json(
            404,
            r#"{"error":"not a ZIM or Tencent IM API path; the simulator's own endpoints are under /_sim/"}"#
                .into(),
        ))),
    };
    let side = api.side();
    let stats = shared.stats.side(side);
    stats.call(api);

    let mut after: Option<Action> = None;
    let mut plan_live = false;
    let mut latency_after = std::time::Duration::ZERO;
    if let Some(plan) = shared.faults.plan(side, api.name(), shared.clock.mono_ns()) {
        if let Some(Action::Outage(mode)) = plan.action {
            stats.fault(F_OUTAGE);
            return match mode {
                OutageMode::Http503 => Ok(response(Answer::html(503))),
                OutageMode::Reset => {
                    reset.store(true, Ordering::SeqCst);
                    Err(Dropped)
                }
            };
        }
        if !plan.latency.is_zero() {
            stats.fault(F_LATENCY);
            tokio::select! {
                _ = tokio::time::sleep(plan.latency) => {}
                _ = shared.cancel.cancelled() => return Err(Dropped),
            }
        }
        after = plan.action;
        plan_live = plan.live;
        latency_after = plan.latency_after;
    }

    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            if e.is::<http_body_util::LengthLimitError>() {
                // Tencent answers 200 whatever happens; ZIM's gateway refuses.
                return Ok(response(match side {
                    Side::Zim => Answer::html(413),
                    Side::Tencent => {
                        stats.validation_failure(crate::providers::tencent::codes::PACKET_TOO_LONG);
                        tencent::too_large()
                    }
                }));
            }
            // The client went away mid-body.
            return Err(Dropped);
        }
    };

    match after {
        Some(Action::Reset) => {
            stats.fault(F_RESET);
            reset.store(true, Ordering::SeqCst);
            return Err(Dropped);
        }
        Some(Action::Http5xx(status)) => {
            stats.fault(F_HTTP_5XX);
            return Ok(response(Answer::html(status)));
        }
        Some(Action::Transient(code)) => {
            stats.fault(F_TRANSIENT);
            let rid = shared.request_ids.fetch_add(1, Ordering::Relaxed);
            return Ok(response(match side {
                Side::Zim => zim::transient(code, rid),
                Side::Tencent => tencent::transient(code),
            }));
        }
        _ => {}
    }

    let live = plan_live;
    let answer = match after {
        // Handled in a task of its own, so the write lands even after the
        // client gave up and hung up.
        Some(Action::Late(delay)) => {
            stats.fault(F_LATE);
            let sh = shared.clone();
            let query = parts.uri.query().unwrap_or("").to_string();
            let late = tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = sh.cancel.cancelled() => return None,
                }
                Some(apply(&sh, api, &Query::parse(&query), &body, live))
            });
            match late.await {
                Ok(Some(a)) => a,
                _ => return Err(Dropped),
            }
        }
        _ => apply(&shared, api, &q, &body, live),
    };
    if !latency_after.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(latency_after) => {}
            _ = shared.cancel.cancelled() => return Err(Dropped),
        }
    }

    match after {
        Some(Action::ApplyThenDrop) => {
            stats.fault(F_APPLY_THEN_DROP);
            reset.store(true, Ordering::SeqCst);
            Err(Dropped)
        }
        Some(Action::ApplyThenError(code)) => {
            stats.fault(F_APPLY_THEN_ERROR);
            let rid = shared.request_ids.fetch_add(1, Ordering::Relaxed);
            Ok(response(match side {
                Side::Zim => zim::transient(code, rid),
                Side::Tencent => tencent::transient(code),
            }))
        }
        Some(Action::Slow(delay)) => {
            stats.fault(F_SLOW);
            tokio::select! {
                _ = tokio::time::sleep(delay) => Ok(response(answer)),
                _ = shared.cancel.cancelled() => Err(Dropped),
            }
        }
        _ => Ok(response(answer)),
    }
}

/// Handles (and applies, when valid) one provider call.
fn apply(shared: &Shared, api: Api, q: &Query, body: &[u8], live: bool) -> Answer {
    let side = api.side();
    let cx = Ctx {
        now_ms: shared.clock.now_ms(),
        mono_ns: shared.clock.mono_ns(),
        stats: shared.stats.side(side),
        auto_register: shared.auto_register,
        no_auth: shared.no_auth,
        rid: shared.request_ids.fetch_add(1, Ordering::Relaxed),
        live,
        view: shared.faults.view_settings(),
    };
    match side {
        Side::Zim => zim::handle(&shared.zim, api, q, body, &cx),
        Side::Tencent => tencent::handle(&shared.tencent, api, q, body, &cx),
    }
}
