//! The simulator's own endpoints under `/_sim/` (listed in the module doc
//! of `simulate`). Faults never apply here.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::Method;
use serde_json::{json, Value};

use super::faults::FaultConfig;
use super::server::MAX_BODY;
use super::{Answer, Query, Shared};

fn ok(v: Value) -> Answer {
    Answer::json(200, v.to_string())
}

fn err(status: u16, msg: impl std::fmt::Display) -> Answer {
    Answer::json(status, json!({ "error": msg.to_string() }).to_string())
}

pub(crate) async fn handle(sh: &Shared, parts: &Parts, body: Incoming) -> Answer {
    let q = Query::parse(parts.uri.query().unwrap_or(""));
    let path = parts.uri.path().trim_end_matches('/');
    match (&parts.method, path) {
        (&Method::GET, "/_sim/health") => ok(json!({ "ok": true })),
        (&Method::GET, "/_sim/stats") => ok(sh.stats_json()),
        (&Method::GET, "/_sim/messages") => messages(sh, &q),
        (&Method::GET, "/_sim/dump") => ok(sh.dump_json()),
        (&Method::GET, "/_sim/users") => users(sh, &q),
        (&Method::GET, "/_sim/faults") => ok(json!(sh.faults.config())),
        (&Method::POST | &Method::PUT, "/_sim/faults") => {
            let bytes = match Limited::new(body, MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return err(400, format!("cannot read the body: {e}")),
            };
            let patch: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => return err(400, format!("the body is not JSON: {e}")),
            };
            let replace = matches!(q.get("replace"), Some("1" | "true" | "yes"));
            let next = if replace {
                FaultConfig::from_value(patch)
            } else {
                let mut cfg = sh.faults.config();
                cfg.merge_patch(&patch).map(|()| cfg)
            };
            match next.and_then(|cfg| sh.faults.replace(cfg)) {
                Ok(()) => ok(json!(sh.faults.config())),
                Err(e) => err(400, format!("{e:#}")),
            }
        }
        (&Method::POST, "/_sim/reset") => {
            sh.reset();
            ok(json!({ "ok": true }))
        }
        _ => err(
            404,
            "unknown simulator endpoint; use GET /_sim/stats, /_sim/messages, /_sim/users, \
             /_sim/faults, /_sim/dump, /_sim/health, POST /_sim/faults or /_sim/reset",
        ),
    }
}

fn messages(sh: &Shared, q: &Query) -> Answer {
    let app: Option<u32> = match q.get("app") {
        None | Some("") => None,
        Some(s) => match s.parse() {
            Ok(a) => Some(a),
            Err(_) => return err(400, "app must be a u32 app id"),
        },
    };
    match q.get("provider") {
        Some("zim") => {
            let mut ids: Vec<u32> = sh.zim.keys().copied().collect();
            ids.sort_unstable();
            match (q.get("user"), q.get("peer")) {
                (Some(user), Some(peer)) => {
                    let Some(id) = app.or_else(|| (ids.len() == 1).then(|| ids[0])) else {
                        return err(400, "app is required: several (or no) ZIM apps are configured");
                    };
                    let Some(a) = sh.zim.get(&id) else {
                        return err(404, format!("ZIM app {id} is not configured"));
                    };
                    ok(a.view_json(user, peer).unwrap_or_else(|| {
                        json!({"provider": "zim", "app": id, "user": user, "peer": peer,
                               "count": 0, "order_inversions": 0, "messages": []})
                    }))
                }
                (None, None) => {
                    let apps: Vec<Value> = ids
                        .iter()
                        .filter(|id| app.map_or(true, |a| a == **id))
                        .map(|id| sh.zim[id].views_json(false))
                        .collect();
                    ok(json!({ "provider": "zim", "apps": apps }))
                }
                _ => err(400, "give both user and peer (one view), or neither (every view)"),
            }
        }
        Some("tencent") => {
            let mut ids: Vec<u32> = sh.tencent.keys().copied().collect();
            ids.sort_unstable();
            match (q.get("a"), q.get("b")) {
                (Some(a), Some(b)) => {
                    let Some(id) = app.or_else(|| (ids.len() == 1).then(|| ids[0])) else {
                        return err(
                            400,
                            "app is required: several (or no) Tencent apps are configured",
                        );
                    };
                    let Some(t) = sh.tencent.get(&id) else {
                        return err(404, format!("Tencent app {id} is not configured"));
                    };
                    let arrival = q.get("order") == Some("arrival");
                    ok(t.conv_json(a, b, arrival).unwrap_or_else(|| {
                        json!({"provider": "tencent", "app": id, "a": a, "b": b,
                               "count": 0, "order_inversions": 0, "messages": []})
                    }))
                }
                (None, None) => {
                    let apps: Vec<Value> = ids
                        .iter()
                        .filter(|id| app.map_or(true, |a| a == **id))
                        .map(|id| sh.tencent[id].convs_json(false))
                        .collect();
                    ok(json!({ "provider": "tencent", "apps": apps }))
                }
                _ => err(
                    400,
                    "give both a and b (one conversation), or neither (every conversation)",
                ),
            }
        }
        _ => err(400, "provider must be zim or tencent"),
    }
}

/// `GET /_sim/users?provider=zim|tencent[&app=ID]`: every user (account)
/// of each app, with the profile registered for it, so a test can check
/// what `accounts import` sent.
fn users(sh: &Shared, q: &Query) -> Answer {
    let app: Option<u32> = match q.get("app") {
        None | Some("") => None,
        Some(s) => match s.parse() {
            Ok(a) => Some(a),
            Err(_) => return err(400, "app must be a u32 app id"),
        },
    };
    let keep = |id: &u32| app.map_or(true, |a| a == *id);
    let mut apps: Vec<(u32, Value)> = match q.get("provider") {
        Some("zim") => sh
            .zim
            .iter()
            .filter(|(id, _)| keep(id))
            .map(|(id, a)| (*id, a.users_json()))
            .collect(),
        Some("tencent") => sh
            .tencent
            .iter()
            .filter(|(id, _)| keep(id))
            .map(|(id, t)| (*id, t.users_json()))
            .collect(),
        _ => return err(400, "provider must be zim or tencent"),
    };
    apps.sort_by_key(|(id, _)| *id);
    let apps: Vec<Value> = apps.into_iter().map(|(_, v)| v).collect();
    ok(json!({ "provider": q.get("provider"), "apps": apps }))
}
