//! The HTTP side: the routes, and each provider call with the faults drawn
//! for it applied around it (the order is the module doc of `faults`).
//!
//! A dropped connection (a reset before or after the call is applied, or
//! an outage in `reset` mode) is a [`HangUp`]; `conn` explains how it
//! reaches the socket.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, MethodRouter};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::conn::{Conn, HangUp};
use super::faults::{Action, FaultKind, OutageMode, Plan, Side};
use super::state::{Api, ProviderStats};
use super::{control, tencent, zim, Answer, Ctx, Query, Shared};
use crate::providers::tencent::codes as tencent_codes;

/// The largest request body read.
pub(crate) const MAX_BODY: usize = 1 << 20;

/// Every route: ZIM on `/?Action=..`, Tencent under `/v4/`, the
/// simulator's own endpoints under `/_sim/`.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let routes = Router::new()
        .route("/", any(zim_call))
        .route("/v4/openim/importmsg", tencent_call(Api::ImportMsg))
        .route("/v4/openim/admin_getroammsg", tencent_call(Api::GetRoamMsg))
        .route(
            "/v4/im_open_login_svc/account_import",
            tencent_call(Api::AccountImport),
        )
        .route(
            "/v4/im_open_login_svc/multiaccount_import",
            tencent_call(Api::MultiAccountImport),
        )
        .merge(control::routes())
        .fallback(unknown_path)
        .with_state(shared);
    // A path is matched without its trailing slashes. That must happen
    // before routing, so the routes sit behind a router of their own.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::map_request(trim_trailing_slashes))
}

/// `/v4/openim/importmsg/` is `/v4/openim/importmsg` (`/` stays `/`).
async fn trim_trailing_slashes(mut req: Request) -> Request {
    let path = req.uri().path();
    let trimmed = path.trim_end_matches('/');
    if trimmed.len() == path.len() || trimmed.is_empty() {
        return req;
    }
    let target = match req.uri().query() {
        Some(q) => format!("{trimmed}?{q}"),
        None => trimmed.to_string(),
    };
    if let Ok(uri) = target.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    req
}

/// A path that is no provider API and no simulator endpoint.
async fn unknown_path(uri: Uri) -> Answer {
    let path = uri.path();
    if path == "/_sim" || path.starts_with("/_sim/") {
        control::unknown_endpoint()
    } else if path.starts_with("/v4/") {
        tencent::unknown_api()
    } else {
        Answer::json(
            StatusCode::NOT_FOUND,
            r#"{"error":"not a ZIM or Tencent IM API path; the simulator's own endpoints are under /_sim/"}"#,
        )
    }
}

/// `/?Action=..`: a ZIM call, or ZIM's answer to a missing or unknown
/// `Action` (counted as no call).
async fn zim_call(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let q = Query::parse(parts.uri.query().unwrap_or(""));
    let action = q.get("Action");
    match action.and_then(Api::from_zim_action) {
        Some(api) => provider_call(&sh, &conn, api, q, body).await,
        None => zim::bad_action(action, sh.next_request_id()).into_response(),
    }
}

/// The route of one Tencent API.
fn tencent_call(api: Api) -> MethodRouter<Arc<Shared>> {
    any(
        move |State(sh): State<Arc<Shared>>, ConnectInfo(conn): ConnectInfo<Conn>, req: Request| async move {
            let (parts, body) = req.into_parts();
            let q = Query::parse(parts.uri.query().unwrap_or(""));
            provider_call(&sh, &conn, api, q, body).await
        },
    )
}

async fn provider_call(sh: &Arc<Shared>, conn: &Conn, api: Api, q: Query<'_>, body: Body) -> Response {
    match call(sh, api, q, body).await {
        Ok(answer) => answer.into_response(),
        Err(how) => conn.hang_up(how),
    }
}

/// One provider call: counted, then the drawn faults and the call itself
/// in the order of the `faults` module doc.
async fn call(sh: &Arc<Shared>, api: Api, q: Query<'_>, body: Body) -> Result<Answer, HangUp> {
    let side = api.side();
    let stats = sh.stats.side(side);
    stats.call(api);
    let plan = sh
        .faults
        .plan(side, api.name(), sh.clock.mono_ns())
        .unwrap_or_default();
    if let Some(Action::Outage(mode)) = plan.action {
        return outage(stats, mode);
    }
    // The way-in half of the latency: before the call is counted against
    // the rate window.
    if !plan.latency.is_zero() {
        stats.fault(FaultKind::Latency);
        pause(sh, plan.latency).await?;
    }
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return Ok(too_large(side, stats)),
        // The client went away mid-body.
        Err(BodyError::Unreadable) => return Err(HangUp::Close),
    };
    if let Some(refused) = refuse_unapplied(sh, side, plan.action) {
        return refused;
    }
    let answer = apply_when_planned(sh, api, q, body, &plan).await?;
    // The way-back half.
    if !plan.latency_after.is_zero() {
        pause(sh, plan.latency_after).await?;
    }
    after_apply(sh, side, plan.action, answer).await
}

/// Sleeps `d`, or hangs up when the simulator stops first.
async fn pause(sh: &Shared, d: Duration) -> Result<(), HangUp> {
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = sh.cancel.cancelled() => Err(HangUp::Close),
    }
}

fn outage(stats: &ProviderStats, mode: OutageMode) -> Result<Answer, HangUp> {
    stats.fault(FaultKind::Outage);
    match mode {
        OutageMode::Http503 => Ok(Answer::html(StatusCode::SERVICE_UNAVAILABLE)),
        OutageMode::Reset => Err(HangUp::Reset),
    }
}

enum BodyError {
    TooLarge,
    Unreadable,
}

async fn read_body(body: Body) -> Result<Bytes, BodyError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Unreadable),
    }
}

/// The answer to a body over [`MAX_BODY`]: Tencent answers 200 whatever
/// happens; ZIM's gateway refuses.
fn too_large(side: Side, stats: &ProviderStats) -> Answer {
    match side {
        Side::Zim => Answer::html(StatusCode::PAYLOAD_TOO_LARGE),
        Side::Tencent => {
            stats.validation_failure(tencent_codes::PACKET_TOO_LONG);
            tencent::too_large()
        }
    }
}

/// The faults that end the call before it is handled, nothing applied.
fn refuse_unapplied(sh: &Shared, side: Side, action: Option<Action>) -> Option<Result<Answer, HangUp>> {
    let stats = sh.stats.side(side);
    match action? {
        Action::Reset => {
            stats.fault(FaultKind::Reset);
            Some(Err(HangUp::Reset))
        }
        Action::Http5xx(status) => {
            stats.fault(FaultKind::Http5xx);
            Some(Ok(Answer::html(status)))
        }
        Action::Transient(code) => {
            stats.fault(FaultKind::Transient);
            Some(Ok(server_error(sh, side, code)))
        }
        _ => None,
    }
}

/// The provider's own error answer with `code`.
fn server_error(sh: &Shared, side: Side, code: i64) -> Answer {
    let rid = sh.next_request_id();
    match side {
        Side::Zim => zim::transient(code, rid),
        Side::Tencent => tencent::transient(code),
    }
}

/// Handles the call: now, or after the planned delay of a late answer.
async fn apply_when_planned(
    sh: &Arc<Shared>,
    api: Api,
    q: Query<'_>,
    body: Bytes,
    plan: &Plan,
) -> Result<Answer, HangUp> {
    let Some(Action::Late(delay)) = plan.action else {
        return Ok(apply(sh, api, &q, &body, plan.live));
    };
    sh.stats.side(api.side()).fault(FaultKind::Late);
    // In a task of its own, so the write lands even after the client gave
    // up and hung up.
    let (sh, q, live) = (sh.clone(), q.into_owned(), plan.live);
    let late = tokio::spawn(async move {
        pause(&sh, delay).await.ok()?;
        Some(apply(&sh, api, &q, &body, live))
    });
    late.await.ok().flatten().ok_or(HangUp::Close)
}

/// The faults that act once the call was handled (and applied when valid).
async fn after_apply(
    sh: &Shared,
    side: Side,
    action: Option<Action>,
    answer: Answer,
) -> Result<Answer, HangUp> {
    let stats = sh.stats.side(side);
    match action {
        Some(Action::ApplyThenDrop) => {
            stats.fault(FaultKind::ApplyThenDrop);
            Err(HangUp::Reset)
        }
        Some(Action::ApplyThenError(code)) => {
            stats.fault(FaultKind::ApplyThenError);
            Ok(server_error(sh, side, code))
        }
        Some(Action::Slow(delay)) => {
            stats.fault(FaultKind::Slow);
            pause(sh, delay).await.map(|()| answer)
        }
        _ => Ok(answer),
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
        rid: shared.next_request_id(),
        live,
        view: shared.faults.view_settings(),
    };
    match side {
        Side::Zim => zim::handle(&shared.apps.zim, api, q, body, &cx),
        Side::Tencent => tencent::handle(&shared.apps.tencent, api, q, body, &cx),
    }
}

#[cfg(test)]
mod tests {
    use reqwest::{Method, StatusCode};
    use serde_json::Value;

    use crate::config::Config;
    use crate::providers::{tencent, zim};
    use crate::simulate::{SimOptions, Simulator};

    async fn sim() -> Simulator {
        let config = Config::from_toml(
            r#"
[targets.zim]
kind = "zim"
endpoint = "http://127.0.0.1:9/"
app_id = 1
server_secret = "s"

[targets.tim]
kind = "tencent"
endpoint = "http://127.0.0.1:9/"
sdk_app_id = 2
admin_identifier = "admin"
secret_key = "k"
"#,
        )
        .unwrap();
        Simulator::start(&config, SimOptions::default()).await.unwrap()
    }

    async fn call(sim: &Simulator, method: Method, path: &str) -> (StatusCode, Option<String>, String) {
        let url = format!("http://{}{path}", sim.addr());
        let r = reqwest::Client::new().request(method, url).send().await.unwrap();
        let allow = r.headers().get("allow").map(|v| v.to_str().unwrap().to_string());
        (r.status(), allow, r.text().await.unwrap())
    }

    fn code(body: &str) -> i64 {
        let v: Value = serde_json::from_str(body).unwrap();
        v.get("Code")
            .or_else(|| v.get("ErrorCode"))
            .and_then(Value::as_i64)
            .unwrap()
    }

    /// Paths match without trailing slashes; a wrong method is the same
    /// 404 as an unknown endpoint, with no `Allow` header; each provider
    /// answers an unknown API its own way.
    #[tokio::test]
    async fn routes_answer_as_the_providers_and_the_contract_say() {
        let sim = sim().await;
        let (status, _, body) = call(&sim, Method::GET, "/_sim/health/").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"ok":true}"#));
        for (method, path) in [
            (Method::DELETE, "/_sim/stats"),
            (Method::HEAD, "/_sim/stats"),
            (Method::GET, "/_sim/reset"),
            (Method::GET, "/_sim/nope"),
            (Method::GET, "/_sim"),
        ] {
            let (status, allow, _) = call(&sim, method.clone(), path).await;
            assert_eq!((status, allow), (StatusCode::NOT_FOUND, None), "{method} {path}");
        }
        let (status, _, body) = call(&sim, Method::POST, "/v4/openim/importmsg//").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(code(&body), tencent::codes::SDKAPPID_MISSING, "{body}");
        let (_, _, body) = call(&sim, Method::GET, "/v4/openim/nope").await;
        assert_eq!(code(&body), tencent::codes::UNKNOWN_API, "{body}");
        let (_, _, body) = call(&sim, Method::POST, "/?Action=Nope").await;
        assert_eq!(code(&body), zim::codes::ACTION_UNSUPPORTED, "{body}");
        let (_, _, body) = call(&sim, Method::GET, "/").await;
        assert_eq!(code(&body), zim::codes::ACTION_MISSING, "{body}");
        let (status, _, body) = call(&sim, Method::GET, "//").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("not a ZIM or Tencent IM API path"), "{body}");
        sim.shutdown().await;
    }
}
