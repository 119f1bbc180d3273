//! The simulator's own endpoints under `/_sim/` (listed in the module doc
//! of `simulate`). Faults never apply here.
//!
//! A wrong method gets the same 404 as an unknown endpoint: each route
//! takes every method and checks it itself ([`only`]), since axum's own
//! method routing would answer 405 with an `Allow` header and serve
//! `HEAD` as `GET`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{any, MethodRouter};
use axum::Router;
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};

use super::apps::listed;
use super::faults::FaultConfig;
use super::server::MAX_BODY;
use super::zim::ZimApp;
use super::{Answer, Query, Shared};

/// What a control handler answers: an object (200), or an error answer.
type Reply = Result<Value, Answer>;

const GET: &[Method] = &[Method::GET];
const FAULTS: &[Method] = &[Method::GET, Method::POST, Method::PUT];
const POST: &[Method] = &[Method::POST];

/// The `/_sim/` routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_sim/health", only(GET, || async { ok(json!({ "ok": true })) }))
        .route(
            "/_sim/stats",
            only(
                GET,
                |State(sh): State<Arc<Shared>>| async move { ok(sh.stats_json()) },
            ),
        )
        .route("/_sim/messages", only(GET, messages))
        .route(
            "/_sim/dump",
            only(
                GET,
                |State(sh): State<Arc<Shared>>| async move { ok(sh.dump_json()) },
            ),
        )
        .route("/_sim/users", only(GET, users))
        .route("/_sim/faults", only(FAULTS, faults))
        .route("/_sim/reset", only(POST, reset))
}

/// A route that serves `methods` with `handler`; any other method gets the
/// unknown-endpoint 404.
fn only<H, T>(methods: &'static [Method], handler: H) -> MethodRouter<Arc<Shared>>
where
    H: Handler<T, Arc<Shared>>,
    T: 'static,
{
    any(move |State(sh): State<Arc<Shared>>, req: Request| async move {
        if methods.contains(req.method()) {
            handler.call(req, sh).await
        } else {
            unknown_endpoint().into_response()
        }
    })
}

/// The answer to a path under `/_sim/` that is not served.
pub(crate) fn unknown_endpoint() -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "unknown simulator endpoint; use GET /_sim/stats, /_sim/messages, /_sim/users, \
         /_sim/faults, /_sim/dump, /_sim/health, POST /_sim/faults or /_sim/reset",
    )
}

fn ok(v: Value) -> Answer {
    Answer::ok(v.to_string())
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Answer {
    Answer::json(status, json!({ "error": msg.to_string() }).to_string())
}

fn bad_request(msg: impl std::fmt::Display) -> Answer {
    error(StatusCode::BAD_REQUEST, msg)
}

fn answer(reply: Reply) -> Answer {
    reply.map_or_else(|e| e, ok)
}

/// `GET /_sim/faults`: the fault settings. `POST` (or `PUT`): a JSON
/// merge patch of them, or with `?replace=true` the whole settings.
async fn faults(State(sh): State<Arc<Shared>>, req: Request) -> Answer {
    if req.method() == Method::GET {
        return ok(json!(sh.faults.config()));
    }
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad_request(format!("cannot read the body: {e}")),
    };
    let patch: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("the body is not JSON: {e}")),
    };
    let q = Query::parse(parts.uri.query().unwrap_or(""));
    let next = if matches!(q.get("replace"), Some("1" | "true" | "yes")) {
        FaultConfig::from_value(patch)
    } else {
        let mut cfg = sh.faults.config();
        cfg.merge_patch(&patch).map(|()| cfg)
    };
    match next.and_then(|cfg| sh.faults.replace(cfg)) {
        Ok(()) => ok(json!(sh.faults.config())),
        Err(e) => bad_request(format!("{e:#}")),
    }
}

async fn reset(State(sh): State<Arc<Shared>>) -> Answer {
    sh.reset();
    ok(json!({ "ok": true }))
}

/// `?app=ID`, when given.
fn app_param(q: &Query) -> Result<Option<u32>, Answer> {
    match q.get("app") {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| bad_request("app must be a u32 app id")),
    }
}

/// The app `app` names, or the only one configured.
fn one_app<'a, A>(
    apps: &'a HashMap<u32, A>,
    app: Option<u32>,
    provider: &str,
) -> Result<(u32, &'a A), Answer> {
    let only = || (apps.len() == 1).then(|| *apps.keys().next().expect("one app"));
    let Some(id) = app.or_else(only) else {
        return Err(bad_request(format!(
            "app is required: several (or no) {provider} apps are configured"
        )));
    };
    match apps.get(&id) {
        Some(a) => Ok((id, a)),
        None => Err(error(
            StatusCode::NOT_FOUND,
            format!("{provider} app {id} is not configured"),
        )),
    }
}

/// What `/_sim/messages` calls one provider, its views and their users.
struct ViewNames {
    provider: &'static str,
    label: &'static str,
    user: &'static str,
    peer: &'static str,
    give_both: &'static str,
}

const ZIM_VIEWS: ViewNames = ViewNames {
    provider: "zim",
    label: "ZIM",
    user: "user",
    peer: "peer",
    give_both: "give both user and peer (one view), or neither (every view)",
};

const TENCENT_VIEWS: ViewNames = ViewNames {
    provider: "tencent",
    label: "Tencent",
    user: "a",
    peer: "b",
    give_both: "give both a and b (one conversation), or neither (every conversation)",
};

/// `GET /_sim/messages`: one view (conversation), or every one with its size.
async fn messages(State(sh): State<Arc<Shared>>, uri: Uri) -> Answer {
    let q = Query::parse(uri.query().unwrap_or(""));
    let arrival = q.get("order") == Some("arrival");
    answer(app_param(&q).and_then(|app| match q.get("provider") {
        Some("zim") => views(&sh.apps.zim, &q, app, &ZIM_VIEWS, ZimApp::view_json, |a| {
            a.views_json(false)
        }),
        Some("tencent") => views(
            &sh.apps.tencent,
            &q,
            app,
            &TENCENT_VIEWS,
            |t, a, b| t.conv_json(a, b, arrival),
            |t| t.convs_json(false),
        ),
        _ => Err(bad_request("provider must be zim or tencent")),
    }))
}

/// The view of the two users the query names (`one`), or every view of
/// each app with its size (`all`).
fn views<A>(
    apps: &HashMap<u32, A>,
    q: &Query,
    app: Option<u32>,
    names: &ViewNames,
    one: impl Fn(&A, &str, &str) -> Option<Value>,
    all: impl Fn(&A) -> Value,
) -> Reply {
    match (q.get(names.user), q.get(names.peer)) {
        (Some(user), Some(peer)) => {
            let (id, a) = one_app(apps, app, names.label)?;
            Ok(one(a, user, peer).unwrap_or_else(|| {
                json!({"provider": names.provider, "app": id, names.user: user, names.peer: peer,
                       "count": 0, "order_inversions": 0, "messages": []})
            }))
        }
        (None, None) => Ok(json!({ "provider": names.provider, "apps": listed(apps, app, all) })),
        _ => Err(bad_request(names.give_both)),
    }
}

/// `GET /_sim/users?provider=zim|tencent[&app=ID]`: every user (account)
/// of each app, with the profile registered for it, so a test can check
/// what `accounts import` sent.
async fn users(State(sh): State<Arc<Shared>>, uri: Uri) -> Answer {
    let q = Query::parse(uri.query().unwrap_or(""));
    answer(app_param(&q).and_then(|app| {
        let apps = match q.get("provider") {
            Some("zim") => listed(&sh.apps.zim, app, |a| a.users_json()),
            Some("tencent") => listed(&sh.apps.tencent, app, |t| t.users_json()),
            _ => return Err(bad_request("provider must be zim or tencent")),
        };
        Ok(json!({ "provider": q.get("provider"), "apps": apps }))
    }))
}
