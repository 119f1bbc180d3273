//! The ZIM server API as the simulator serves it: `ImportPeerMsg`,
//! `QueryPeerMsg` and `UserRegister`, with the rules of providers.md.
//!
//! - Public parameters: `AppId` (100000001), `Timestamp` (100000002 missing,
//!   100000003 malformed, 100000004 more than 600 s from now),
//!   `SignatureNonce` (100000008 missing or reused within the window: a
//!   replay), `Signature` (100000009 missing, 100000005 wrong),
//!   `SignatureVersion` (100000013 missing, 100000014 not `2.0`), an
//!   unknown app (100000010: no ServerSecret for it).
//! - Each `ImportedUserId` has its own view of a conversation, an ordered
//!   list in arrival order. There is no dedup: the same body sent twice is
//!   stored twice (and counted in `duplicates_stored`).
//! - `MsgId` is a u64 above 2^53 (consecutive ids differ by 1, so a client
//!   that goes through f64 loses them): a **string** in the import answer, a
//!   **number** in `QueryPeerMsg`. `MsgSeq` counts from 1 per view.
//! - `QueryPeerMsg` pages newest (latest arrival) first; `Next` is the
//!   `MsgSeq` of the next older message, 0 when done. Items follow
//!   ZEGO's zim-server/conversation/query-the-message-list-of-one-on-one-chats.md:
//!   `MsgBody` of text and custom as sent, of media and multi-item
//!   URL-encoded JSON in the read-back schema (`download_url`,
//!   `file_name`, ...; `multi_msg[{msg_type, sub_msg_type?,
//!   callback_content}]`), `Payload` = `ExtendedData`, `IsEmpty` 0.
//! - Validation codes: not JSON / missing or mistyped field / `MessageType`
//!   2 or unknown / `Priority` outside 1..=3 / `SubMsgType` missing or
//!   outside 0..=200 for type 200 / `ImportedUserId` neither From nor To /
//!   bad user id characters: 660000002; user id over 32 bytes: 660000012;
//!   From == To: 660600030; `SendMessageTime` in the future: 660800046,
//!   older than the target's `retention_days`: 660600023 (the code is the
//!   simulator's guess); an empty `Message`, a media `Message` that is not
//!   a JSON object string with its required keys (image `Uid`,
//!   `Origin{Url,Width,Height}`, `FileName`; others `Uid`, `Url`,
//!   `FileName`), a multi-item `Message` that is not `{"MultiMsg": [..]}`
//!   with 1 to 20 items of types 1, 11..=14, 200 (ZEGO:
//!   zim-server/messaging/messagebody-introduction.md): 660000002; `Message`, `ExtendedData`, `SearchedContent`, a
//!   media URL or file name over its limit: 660400001; a user who is not
//!   registered: 660500002.
//! - `UserRegister` (ZEGO: zim-server/user/batch-register-users.md): 1 to
//!   100 users; `UserName` over 256 bytes 660700006, `UserAvatar` over 500
//!   660700007. `Code` 0 when at least one user registered, the others in
//!   `ErrorList`; when all of them exist already, `Code` 660700002 with the
//!   `ErrorList`; when none registered for another reason, that code and
//!   no `ErrorList`. Profiles are kept (`GET /_sim/users`); an existing
//!   user keeps its first profile.
//! - Every code is a named constant of `providers::zim::codes`, with the
//!   meaning ZEGO's return-code page gives it.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::MsgTime;
use super::ratelimit::RateWindow;
use super::state::{Api, ProviderStats};
use super::{Answer, Ctx, Query, Reply};
use crate::config::ZimTarget;
use crate::providers::zim::codes;

/// How far a signature's `Timestamp` may be from now, in seconds.
pub const SKEW_SECS: i64 = 600;
/// The first `MsgId` handed out: above 2^53 on purpose.
const FIRST_MSG_ID: u64 = (1 << 60) + 1;
const DAY_MS: i64 = 86_400_000;

/// A refused signature: ZIM's code and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthRefusal {
    pub code: i64,
    pub message: &'static str,
}

fn refuse(code: i64, message: &'static str) -> AuthRefusal {
    AuthRefusal { code, message }
}

/// Checks a ZIM signature and its timestamp against `now_secs` (the replay
/// check needs state and is done by the caller).
pub fn check_signature(
    app_id: u32,
    nonce: &str,
    secret: &str,
    timestamp: i64,
    signature: &str,
    now_secs: i64,
) -> Result<(), AuthRefusal> {
    if (now_secs - timestamp).abs() > SKEW_SECS {
        return Err(refuse(
            codes::SIGNATURE_EXPIRED,
            "signature expired: Timestamp is more than 10 minutes from the server's clock",
        ));
    }
    let expected = crate::providers::zim::sign::signature(app_id, nonce, secret, timestamp);
    if expected != signature {
        return Err(refuse(codes::SIGNATURE_WRONG, "signature error"));
    }
    Ok(())
}

/// One stored message of a view.
#[derive(Debug, Clone)]
pub(crate) struct ZimMsg {
    msg_id: u64,
    seq: u64,
    from: String,
    to: String,
    msg_type: i64,
    sub_type: Option<i64>,
    priority: i64,
    body: String,
    ext: Option<String>,
    searched: Option<String>,
    /// `SendMessageTime` as imported (the history's order).
    time: i64,
    /// What QueryPeerMsg reports as `MsgTime` (see faults.rs, `msg_time`).
    msg_time: i64,
    /// Written by a user chatting on ZIM, not by an import.
    live: bool,
}

impl ZimMsg {
    fn json(&self, imported: &str) -> Value {
        json!({
            "MsgId": self.msg_id,
            "MsgSeq": self.seq,
            "Sender": self.from,
            "FromUserId": self.from,
            "ToUserId": self.to,
            "ImportedUserId": imported,
            "MsgType": self.msg_type,
            "SubMsgType": self.sub_type,
            "Priority": self.priority,
            "MsgBody": self.body,
            "ExtendedData": self.ext,
            "SearchedContent": self.searched,
            "SendMessageTime": self.time,
            "MsgTime": self.msg_time,
            "Live": self.live,
        })
    }

    /// A message a user sent on ZIM itself, received now.
    fn live(view: &View, user: &str, peer: &str, msg_id: u64, now_ms: i64) -> ZimMsg {
        let n = view.msgs.len() as u64 + 1;
        let (from, to) = if n % 2 == 0 { (user, peer) } else { (peer, user) };
        ZimMsg {
            msg_id,
            seq: n,
            from: from.to_string(),
            to: to.to_string(),
            msg_type: 1,
            sub_type: None,
            priority: 2,
            body: format!("live message {n} of {user}/{peer}"),
            ext: None,
            searched: None,
            time: now_ms,
            msg_time: now_ms,
            live: true,
        }
    }

    fn content_hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &self.from,
            self.msg_type,
            self.sub_type,
            &self.body,
            &self.ext,
            self.time,
        )
            .hash(&mut h);
        h.finish()
    }
}

#[derive(Debug, Default)]
struct View {
    msgs: Vec<ZimMsg>,
    content: HashSet<u64>,
    inversions: u64,
}

#[derive(Debug)]
struct ZimState {
    users: HashSet<String>,
    /// UserName and UserAvatar of users registered through UserRegister.
    profiles: HashMap<String, (Option<String>, Option<String>)>,
    /// (ImportedUserId, peer) → that user's view.
    views: HashMap<(String, String), View>,
    nonces: HashSet<String>,
    nonce_expiry: VecDeque<(i64, String)>,
    next_msg_id: u64,
}

impl ZimState {
    fn new(users: &[String]) -> Self {
        Self {
            users: users.iter().cloned().collect(),
            profiles: HashMap::new(),
            views: HashMap::new(),
            nonces: HashSet::new(),
            nonce_expiry: VecDeque::new(),
            next_msg_id: FIRST_MSG_ID,
        }
    }
}

/// One simulated ZIM app.
pub(crate) struct ZimApp {
    pub app_id: u32,
    secret: String,
    retention_days: u32,
    max_message: usize,
    max_multi: usize,
    max_ext: usize,
    /// ImportPeerMsg, QueryPeerMsg, UserRegister.
    limits: [RateWindow; 3],
    state: Mutex<ZimState>,
}

type Refusal = (i64, String);

fn bad(code: i64, msg: impl Into<String>) -> Refusal {
    (code, msg.into())
}

impl ZimApp {
    pub(crate) fn new(t: &ZimTarget, secret: String, rate_override: Option<f64>, users: &[String]) -> Self {
        let rate = |r: f64| rate_override.unwrap_or(r);
        Self {
            app_id: t.app_id,
            secret,
            retention_days: t.retention_days,
            max_message: t.max_message_bytes,
            max_multi: t.max_multi_message_bytes,
            max_ext: t.max_extended_bytes,
            limits: [
                RateWindow::new(rate(t.rate_per_sec)),
                RateWindow::new(rate(t.query_rate_per_sec)),
                RateWindow::new(rate(t.register_rate_per_sec)),
            ],
            state: Mutex::new(ZimState::new(users)),
        }
    }

    pub(crate) fn same_secret(&self, secret: &str) -> bool {
        self.secret == secret
    }

    pub(crate) fn reset(&self, users: &[String]) {
        *self.state.lock() = ZimState::new(users);
        for l in &self.limits {
            l.reset();
        }
    }

    /// One view in stored order, or None when it does not exist.
    pub(crate) fn view_json(&self, user: &str, peer: &str) -> Option<Value> {
        let st = self.state.lock();
        let v = st.views.get(&(user.to_string(), peer.to_string()))?;
        Some(json!({
            "provider": "zim",
            "app": self.app_id,
            "user": user,
            "peer": peer,
            "count": v.msgs.len(),
            "order_inversions": v.inversions,
            "messages": v.msgs.iter().map(|m| m.json(user)).collect::<Vec<_>>(),
        }))
    }

    /// Every view with its size; with `full`, with its messages too.
    pub(crate) fn views_json(&self, full: bool) -> Value {
        let st = self.state.lock();
        let mut keys: Vec<&(String, String)> = st.views.keys().collect();
        keys.sort();
        let views: Vec<Value> = keys
            .into_iter()
            .map(|k| {
                let v = &st.views[k];
                let mut o = json!({
                    "user": k.0,
                    "peer": k.1,
                    "count": v.msgs.len(),
                    "order_inversions": v.inversions,
                });
                if full {
                    o["messages"] = v.msgs.iter().map(|m| m.json(&k.0)).collect();
                }
                o
            })
            .collect();
        json!({
            "provider": "zim",
            "app": self.app_id,
            "users": st.users.len(),
            "views": views,
        })
    }
}

/// A view as chatferry first finds it: `live_per_view` messages users
/// already exchanged on ZIM (faults.rs, live users).
fn seed_live_view(next_msg_id: &mut u64, key: &(String, String), cx: &Ctx) -> View {
    let mut view = View::default();
    for _ in 0..cx.view.live_per_view {
        let m = ZimMsg::live(&view, &key.0, &key.1, *next_msg_id, cx.now_ms);
        *next_msg_id += 1;
        view.msgs.push(m);
    }
    view
}

fn error(code: i64, message: &str, rid: u64) -> Answer {
    Answer::ok(json!({"Code": code, "Message": message, "RequestId": rid.to_string()}).to_string())
}

/// The answer of a fault-injected transient error.
pub(crate) fn transient(code: i64, rid: u64) -> Answer {
    error(code, "simulated transient server error, retry later", rid)
}

/// The answer of an unknown or missing `Action`.
pub(crate) fn bad_action(action: Option<&str>, rid: u64) -> Answer {
    match action {
        None | Some("") => error(codes::ACTION_MISSING, "Action is empty", rid),
        Some(_) => error(codes::ACTION_UNSUPPORTED, "unsupported Action", rid),
    }
}

/// Handles one ZIM call whose `Action` is `api`.
pub(crate) fn handle(apps: &HashMap<u32, ZimApp>, api: Api, q: &Query, body: &[u8], cx: &Ctx) -> Answer {
    let stats = cx.stats;
    let auth_fail = |code: i64, msg: &str| {
        stats.auth_failure(code);
        error(code, msg, cx.rid)
    };
    let Some(app_id) = q.get("AppId").and_then(|s| s.parse::<u32>().ok()) else {
        return auth_fail(codes::APP_ID_MALFORMED, "AppId is missing or not a u32");
    };
    let Some(app) = apps.get(&app_id) else {
        return auth_fail(
            codes::SERVER_SECRET_FAILED,
            "failed to get the ServerSecret: unknown AppId",
        );
    };
    if !cx.no_auth {
        if let Err(r) = app.authenticate(q, cx.now_ms / 1000) {
            return auth_fail(r.code, r.message);
        }
    }
    let (limit, limited_code) = match api {
        Api::ImportPeerMsg => (&app.limits[0], codes::APP_RATE_LIMITED),
        Api::QueryPeerMsg => (&app.limits[1], codes::APP_RATE_LIMITED),
        _ => (&app.limits[2], codes::REGISTER_RATE_LIMITED),
    };
    if !limit.try_acquire(cx.mono_ns) {
        stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        return error(
            limited_code,
            "too many requests: the API's rate limit is exceeded",
            cx.rid,
        );
    }
    let result = match api {
        Api::ImportPeerMsg => app.import(body, cx),
        Api::QueryPeerMsg => app.query(body),
        _ => app.register_call(body),
    };
    match result {
        Ok(Reply::Fields(mut v)) => {
            // A call whose every user exists answers its own Code.
            if v.get("Code").is_none() {
                v["Code"] = json!(0);
                v["Message"] = json!("success");
            }
            v["RequestId"] = json!(cx.rid.to_string());
            Answer::ok(v.to_string())
        }
        Ok(Reply::Text(text)) => Answer::ok(text),
        Err((code, msg)) => {
            stats.validation_failure(code);
            error(code, &msg, cx.rid)
        }
    }
}

fn user_id(field: &str, v: &Option<String>) -> Result<String, Refusal> {
    let Some(id) = v.as_deref() else {
        return Err(bad(codes::INVALID_INPUT, format!("{field} is missing")));
    };
    if id.is_empty() {
        return Err(bad(codes::INVALID_INPUT, format!("{field} is empty")));
    }
    if id.len() > 32 {
        return Err(bad(
            codes::USER_ID_TOO_LONG,
            format!("{field} is longer than 32 bytes"),
        ));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " !#$%&()+-:;<=.>?@[]^_{}|~".contains(c))
    {
        return Err(bad(
            codes::INVALID_INPUT,
            format!("{field} has a character ZIM refuses"),
        ));
    }
    Ok(id.to_string())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImportBody {
    from_user_id: Option<String>,
    to_user_id: Option<String>,
    message_type: Option<i64>,
    priority: Option<i64>,
    message_body: Option<MessageBody>,
    sub_msg_type: Option<i64>,
    searched_content: Option<String>,
    send_message_time: Option<i64>,
    imported_user_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MessageBody {
    message: Option<String>,
    extended_data: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QueryBody {
    from_user_id: Option<String>,
    to_user_id: Option<String>,
    limit: Option<i64>,
    next: Option<u64>,
}

#[derive(Deserialize)]
struct RegisterBody {
    #[serde(rename = "UserInfo")]
    user_info: Option<Vec<RegisterUser>>,
}

#[derive(Deserialize)]
struct RegisterUser {
    #[serde(rename = "UserId")]
    user_id: Option<String>,
    #[serde(rename = "UserName")]
    user_name: Option<String>,
    #[serde(rename = "UserAvatar")]
    user_avatar: Option<String>,
}

/// The required keys of a media `Message` object
/// (ZEGO: zim-server/messaging/messagebody-introduction.md, "Message 结构"
/// of 图片/文件/音频/视频消息): image `Uid`, `Origin{Url,Width,Height}`,
/// `FileName`; file, audio and video `Uid`, `Url`, `FileName`.
fn check_media_required(msg_type: i64, v: &Value) -> Result<(), Refusal> {
    let required: &[&str] = if msg_type == 11 {
        &["Uid", "Origin", "FileName"]
    } else {
        &["Uid", "Url", "FileName"]
    };
    for k in required {
        if v.get(*k).is_none() {
            return Err(bad(
                codes::INVALID_INPUT,
                format!("{k} is required in a type {msg_type} Message"),
            ));
        }
    }
    if msg_type == 11 {
        let o = &v["Origin"];
        if !(o.get("Url").is_some_and(Value::is_string)
            && o.get("Width").is_some()
            && o.get("Height").is_some())
        {
            return Err(bad(codes::INVALID_INPUT, "Origin needs Url, Width and Height"));
        }
    }
    Ok(())
}

/// Checks a media `Message` (or a multi item's `Msg`): a JSON object
/// string with the required keys, URLs at most 500 bytes, file names 150.
fn check_media(msg_type: i64, message: &str) -> Result<(), Refusal> {
    let v: Value = serde_json::from_str(message)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            bad(
                codes::INVALID_INPUT,
                "a media message's Message must be a JSON object string",
            )
        })?;
    check_media_required(msg_type, &v)?;
    fn walk(v: &Value) -> Result<(), Refusal> {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("Url" | "Thumbnail", Value::String(s)) if s.len() > 500 => {
                            return Err(bad(
                                codes::MESSAGE_TOO_LARGE,
                                format!("{k} is longer than 500 bytes"),
                            ))
                        }
                        ("FileName", Value::String(s)) if s.len() > 150 => {
                            return Err(bad(codes::MESSAGE_TOO_LARGE, "FileName is longer than 150 bytes"))
                        }
                        _ => walk(v)?,
                    }
                }
                Ok(())
            }
            Value::Array(a) => a.iter().try_for_each(walk),
            _ => Ok(()),
        }
    }
    walk(&v)
}

/// Most items of a multi-item message (messagebody-introduction.md, "组合消息").
const MAX_MULTI_ITEMS: usize = 20;

/// Checks a multi-item `Message`: `{"MultiMsg": [{"MsgType", "Msg",
/// "SubMsgType"?, "SearchedContent"?}]}`, 1 to 20 items of types 1, 11,
/// 12, 13, 14, 200, a media item's `Msg` being the media type's JSON string
/// (ZEGO: zim-server/messaging/messagebody-introduction.md, "组合消息").
fn check_multi(message: &str) -> Result<(), Refusal> {
    let v: Value = serde_json::from_str(message).map_err(|_| {
        bad(
            codes::INVALID_INPUT,
            "a multi-item Message must be a JSON object string",
        )
    })?;
    let items = v.get("MultiMsg").and_then(Value::as_array).ok_or_else(|| {
        bad(
            codes::INVALID_INPUT,
            "a multi-item Message needs the array MultiMsg",
        )
    })?;
    if items.is_empty() || items.len() > MAX_MULTI_ITEMS {
        return Err(bad(codes::INVALID_INPUT, "MultiMsg must hold 1 to 20 items"));
    }
    for item in items {
        let msg = item.get("Msg").and_then(Value::as_str).unwrap_or("");
        if msg.is_empty() {
            return Err(bad(
                codes::INVALID_INPUT,
                "a MultiMsg item's Msg is missing or empty",
            ));
        }
        match item.get("MsgType").and_then(Value::as_i64) {
            Some(1) => {}
            Some(200) => match item.get("SubMsgType").and_then(Value::as_i64) {
                Some(0..=200) => {}
                _ => {
                    return Err(bad(
                        codes::INVALID_INPUT,
                        "a MultiMsg item of MsgType 200 needs SubMsgType 0..=200",
                    ))
                }
            },
            Some(t @ 11..=14) => check_media(t, msg)?,
            _ => {
                return Err(bad(
                    codes::INVALID_INPUT,
                    "a MultiMsg item's MsgType must be 1, 11, 12, 13, 14 or 200",
                ))
            }
        }
    }
    Ok(())
}

/// Form-style percent-encoding (space as `+`): the query doc tells the
/// reader to URLDecode media and multi-item bodies.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn num_text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_u64).unwrap_or(0).to_string()
}

/// A media import object in the read-back schema
/// (ZEGO: zim-server/conversation/query-the-message-list-of-one-on-one-chats.md,
/// "多媒体消息"): `file_size` and `media_duration` are strings there, the
/// sizes in pixels integers. `md5` is the file's digest, which only a
/// server holding the file could compute: the simulator returns it empty.
fn media_read_back(msg_type: i64, m: &Value) -> Value {
    let pic = |key: &str| {
        let p = &m[key];
        (
            p["Url"].as_str().unwrap_or("").to_string(),
            p["Width"].as_u64().unwrap_or(0),
            p["Height"].as_u64().unwrap_or(0),
        )
    };
    let url = if msg_type == 11 {
        m["Origin"]["Url"].as_str()
    } else {
        m["Url"].as_str()
    };
    let mut o = json!({
        "md5": "",
        "file_name": m["FileName"].as_str().unwrap_or(""),
        "file_size": num_text(m, "Size"),
        "download_url": url.unwrap_or(""),
        "media_duration": num_text(m, "MediaDuration"),
    });
    if msg_type == 11 {
        let (_, w, h) = pic("Origin");
        let (lu, lw, lh) = pic("LargeImage");
        let (tu, tw, th) = pic("Thumbnail");
        o["origin_image_width"] = json!(w);
        o["origin_image_height"] = json!(h);
        o["large_image_download_url"] = json!(lu);
        o["large_image_width"] = json!(lw);
        o["large_image_height"] = json!(lh);
        o["thumbnail_download_url"] = json!(tu);
        o["thumbnail_width"] = json!(tw);
        o["thumbnail_height"] = json!(th);
    } else if msg_type == 14 {
        let (u, w, h) = pic("Thumbnail");
        o["video_first_frame_download_url"] = json!(u);
        o["video_first_frame_width"] = json!(w);
        o["video_first_frame_height"] = json!(h);
    }
    o
}

/// A stored `Message` as QueryPeerMsg's `MsgBody`: text and custom as sent;
/// media and multi-item as URL-encoded JSON in the read-back schema, a
/// multi item's `callback_content` being the content of a text or custom
/// item and the media object for a media item (the doc types it "Object").
fn read_back_body(msg_type: i64, body: &str) -> String {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return body.to_string();
    };
    let decoded = match msg_type {
        11..=14 => media_read_back(msg_type, &v),
        10 => {
            let items: Vec<Value> = v["MultiMsg"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|it| {
                    let t = it["MsgType"].as_i64().unwrap_or(0);
                    let msg = it["Msg"].as_str().unwrap_or("");
                    let mut o = json!({"msg_type": t});
                    if t == 200 {
                        o["sub_msg_type"] = it["SubMsgType"].clone();
                    }
                    o["callback_content"] = match serde_json::from_str::<Value>(msg) {
                        Ok(m) if (11..=14).contains(&t) => media_read_back(t, &m),
                        _ => json!(msg),
                    };
                    o
                })
                .collect();
            json!({ "multi_msg": items })
        }
        _ => return body.to_string(),
    };
    url_encode(&decoded.to_string())
}

/// Checks one `UserInfo` entry: the id, `UserName` at most 256 bytes,
/// `UserAvatar` at most 500 (ZEGO: zim-server/user/batch-register-users.md).
fn check_register_user(u: &RegisterUser) -> Result<String, Refusal> {
    let id = user_id("UserId", &u.user_id)?;
    if u.user_name
        .as_ref()
        .is_some_and(|n| n.len() > codes::MAX_USER_NAME_BYTES)
    {
        return Err(bad(
            codes::USER_NAME_TOO_LONG,
            "UserName is longer than 256 bytes",
        ));
    }
    if u.user_avatar
        .as_ref()
        .is_some_and(|a| a.len() > codes::MAX_USER_AVATAR_BYTES)
    {
        return Err(bad(
            codes::USER_AVATAR_TOO_LONG,
            "UserAvatar is longer than 500 bytes",
        ));
    }
    Ok(id)
}

impl ZimApp {
    fn authenticate(&self, q: &Query, now_secs: i64) -> Result<(), AuthRefusal> {
        let ts = match q.get("Timestamp") {
            None | Some("") => return Err(refuse(codes::TIMESTAMP_MISSING, "Timestamp is empty")),
            Some(t) => t
                .parse::<i64>()
                .map_err(|_| refuse(codes::TIMESTAMP_MALFORMED, "Timestamp is not Unix seconds"))?,
        };
        let nonce = match q.get("SignatureNonce") {
            None | Some("") => return Err(refuse(codes::NONCE_MISSING, "SignatureNonce is empty")),
            Some(n) => n,
        };
        let sig = match q.get("Signature") {
            None | Some("") => return Err(refuse(codes::SIGNATURE_MISSING, "Signature is empty")),
            Some(s) => s,
        };
        match q.get("SignatureVersion") {
            None | Some("") => {
                return Err(refuse(
                    codes::SIGNATURE_VERSION_MISSING,
                    "SignatureVersion is empty",
                ))
            }
            Some("2.0") => {}
            Some(_) => {
                return Err(refuse(
                    codes::SIGNATURE_VERSION_UNSUPPORTED,
                    "unsupported SignatureVersion",
                ))
            }
        }
        check_signature(self.app_id, nonce, &self.secret, ts, sig, now_secs)?;
        let mut st = self.state.lock();
        while let Some((exp, _)) = st.nonce_expiry.front() {
            if *exp < now_secs {
                let (_, n) = st.nonce_expiry.pop_front().expect("front exists");
                st.nonces.remove(&n);
            } else {
                break;
            }
        }
        if !st.nonces.insert(nonce.to_string()) {
            return Err(refuse(
                codes::NONCE_MISSING,
                "SignatureNonce was already used within the signature window (replay)",
            ));
        }
        st.nonce_expiry.push_back((ts + SKEW_SECS, nonce.to_string()));
        Ok(())
    }

    fn import(&self, body: &[u8], cx: &Ctx) -> Result<Reply, Refusal> {
        let b: ImportBody = serde_json::from_slice(body).map_err(|e| {
            bad(
                codes::INVALID_INPUT,
                format!("the body is not a valid ImportPeerMsg: {e}"),
            )
        })?;
        let from = user_id("FromUserId", &b.from_user_id)?;
        let to = user_id("ToUserId", &b.to_user_id)?;
        if from == to {
            return Err(bad(
                codes::FROM_EQUALS_TO,
                "FromUserId and ToUserId are the same user",
            ));
        }
        let imported = user_id("ImportedUserId", &b.imported_user_id)?;
        if imported != from && imported != to {
            return Err(bad(
                codes::INVALID_INPUT,
                "ImportedUserId must be FromUserId or ToUserId",
            ));
        }
        let msg_type = b
            .message_type
            .ok_or_else(|| bad(codes::INVALID_INPUT, "MessageType is missing"))?;
        match msg_type {
            1 | 10 | 11 | 12 | 13 | 14 | 200 => {}
            2 => {
                return Err(bad(
                    codes::INVALID_INPUT,
                    "signalling messages (MessageType 2) cannot be imported",
                ))
            }
            _ => return Err(bad(codes::INVALID_INPUT, "unsupported MessageType")),
        }
        let priority = b
            .priority
            .ok_or_else(|| bad(codes::INVALID_INPUT, "Priority is missing"))?;
        if !(1..=3).contains(&priority) {
            return Err(bad(codes::INVALID_INPUT, "Priority must be 1, 2 or 3"));
        }
        let mb = b
            .message_body
            .ok_or_else(|| bad(codes::INVALID_INPUT, "MessageBody is missing"))?;
        let message = mb
            .message
            .ok_or_else(|| bad(codes::INVALID_INPUT, "MessageBody.Message is missing"))?;
        // messagebody-introduction.md: Message "不可为空" for every type.
        if message.is_empty() {
            return Err(bad(codes::INVALID_INPUT, "MessageBody.Message is empty"));
        }
        let limit = if msg_type == 10 {
            self.max_multi
        } else {
            self.max_message
        };
        if message.len() > limit {
            return Err(bad(
                codes::MESSAGE_TOO_LARGE,
                format!("Message is longer than {limit} bytes"),
            ));
        }
        if let Some(ext) = &mb.extended_data {
            if ext.len() > self.max_ext {
                return Err(bad(
                    codes::MESSAGE_TOO_LARGE,
                    format!("ExtendedData is longer than {} bytes", self.max_ext),
                ));
            }
        }
        match msg_type {
            11..=14 => check_media(msg_type, &message)?,
            10 => check_multi(&message)?,
            _ => {}
        }
        let (sub_type, searched) = if msg_type == 200 {
            let sub = b
                .sub_msg_type
                .ok_or_else(|| bad(codes::INVALID_INPUT, "SubMsgType is required for MessageType 200"))?;
            if !(0..=200).contains(&sub) {
                return Err(bad(codes::INVALID_INPUT, "SubMsgType must be within 0..=200"));
            }
            if b.searched_content.as_ref().is_some_and(|s| s.len() > 64) {
                return Err(bad(
                    codes::MESSAGE_TOO_LARGE,
                    "SearchedContent is longer than 64 bytes",
                ));
            }
            (Some(sub), b.searched_content)
        } else {
            (None, None)
        };
        let time = match b.send_message_time {
            None | Some(0) => cx.now_ms,
            Some(t) if t > cx.now_ms => {
                return Err(bad(codes::TIME_IN_FUTURE, "SendMessageTime is in the future"));
            }
            Some(t) if t < cx.now_ms - i64::from(self.retention_days) * DAY_MS => {
                return Err(bad(
                    codes::MESSAGE_LENGTH_EXCEEDED,
                    "SendMessageTime is older than the plan's history retention",
                ));
            }
            Some(t) => t,
        };

        let mut st = self.state.lock();
        for u in [&from, &to] {
            if !st.users.contains(u.as_str()) {
                if cx.auto_register {
                    st.users.insert(u.clone());
                } else {
                    return Err(bad(
                        codes::OPERATOR_NOT_REGISTERED,
                        format!("user {u} is not registered"),
                    ));
                }
            }
        }
        let msg_id = st.next_msg_id;
        st.next_msg_id += 1;
        let imported_is_from = imported == from;
        let peer = if imported_is_from {
            to.clone()
        } else {
            from.clone()
        };
        let key = (imported, peer);
        if !st.views.contains_key(&key) {
            let view = seed_live_view(&mut st.next_msg_id, &key, cx);
            st.views.insert(key.clone(), view);
        }
        let view = st.views.get_mut(&key).expect("inserted above");
        let seq = view.msgs.len() as u64 + 1;
        let msg = ZimMsg {
            msg_id,
            seq,
            from,
            to,
            msg_type,
            sub_type,
            priority,
            body: message,
            ext: mb.extended_data,
            searched,
            time,
            msg_time: match cx.view.msg_time {
                MsgTime::Receive => cx.now_ms,
                MsgTime::Echo => time,
            },
            live: false,
        };
        let stats: &ProviderStats = cx.stats;
        if !view.content.insert(msg.content_hash()) {
            stats.duplicates_stored.fetch_add(1, Ordering::Relaxed);
        }
        let last_history = view.msgs.iter().rev().find(|m| !m.live);
        let lane = if last_history.is_some_and(|last| time < last.time) {
            view.inversions += 1;
            let (u, p) = if imported_is_from {
                (&msg.from, &msg.to)
            } else {
                (&msg.to, &msg.from)
            };
            Some(format!("{}/{u}\u{1f}{p}", self.app_id))
        } else {
            None
        };
        view.msgs.push(msg);
        if cx.live {
            let id = st.next_msg_id;
            st.next_msg_id += 1;
            let view = st.views.get_mut(&key).expect("inserted above");
            let m = ZimMsg::live(view, &key.0, &key.1, id, cx.now_ms);
            view.msgs.push(m);
            stats.fault(super::faults::FaultKind::Live);
        }
        drop(st);
        if let Some(lane) = lane {
            stats.inversion(lane);
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.stored.fetch_add(1, Ordering::Relaxed);
        Ok(Reply::Text(format!(
            r#"{{"Code":0,"Message":"success","RequestId":"{}","MsgId":"{msg_id}","MsgSeq":{seq}}}"#,
            cx.rid
        )))
    }

    fn query(&self, body: &[u8]) -> Result<Reply, Refusal> {
        let b: QueryBody = serde_json::from_slice(body).map_err(|e| {
            bad(
                codes::INVALID_INPUT,
                format!("the body is not a valid QueryPeerMsg: {e}"),
            )
        })?;
        let from = user_id("FromUserId", &b.from_user_id)?;
        let to = user_id("ToUserId", &b.to_user_id)?;
        let limit = b.limit.unwrap_or(0);
        if !(1..=100).contains(&limit) {
            return Err(bad(codes::INVALID_INPUT, "Limit must be within 1..=100"));
        }
        let limit = limit as usize;
        let st = self.state.lock();
        let Some(view) = st.views.get(&(from, to)) else {
            return Ok(Reply::Fields(json!({ "Next": 0, "List": [] })));
        };
        // ZEGO: conversation/query-the-message-list-of-one-on-one-chats.md
        // lists newest first by MsgTime; `Next` is only a cursor. Here it
        // is the MsgSeq of the last message returned, so messages arriving
        // between two pages never shift the pages.
        let mut order: Vec<&ZimMsg> = view.msgs.iter().collect();
        order.sort_by_key(|m| std::cmp::Reverse((m.msg_time, m.seq)));
        let start = match b.next.unwrap_or(0) {
            0 => 0,
            cursor => order
                .iter()
                .position(|m| m.seq == cursor)
                .map_or(order.len(), |i| i + 1),
        };
        let page = &order[start.min(order.len())..(start + limit).min(order.len())];
        let next = if start + limit < order.len() {
            page.last().map_or(0, |m| m.seq)
        } else {
            0
        };
        let list: Vec<Value> = page
            .iter()
            .map(|m| {
                // query-the-message-list-of-one-on-one-chats.md: the List
                // item's fields; MsgId a number, IsEmpty a number (0: normal).
                json!({
                    "Sender": m.from,
                    "MsgType": m.msg_type,
                    "SubMsgType": m.sub_type.unwrap_or(0),
                    "MsgBody": read_back_body(m.msg_type, &m.body),
                    "MsgId": m.msg_id,
                    "MsgSeq": m.seq,
                    "Payload": m.ext.as_deref().unwrap_or(""),
                    "MsgTime": m.msg_time,
                    "IsEmpty": 0,
                })
            })
            .collect();
        Ok(Reply::Fields(json!({ "Next": next, "List": list })))
    }

    /// ZEGO: zim-server/user/batch-register-users.md. `Code` 0 when at
    /// least one user registered, the others in `ErrorList`. When every
    /// user failed: if they all exist already, a non-zero `Code` with the
    /// `ErrorList` ("ErrorList 不为空，表示所有用户都注册失败，全部都是已经存在的
    /// 用户"; the page does not say which code: the simulator uses
    /// 660700002); otherwise the first failure's code and no `ErrorList`
    /// ("ErrorList 为空，表示参数错误…"). An existing user keeps its profile:
    /// the page documents no update.
    fn register_call(&self, body: &[u8]) -> Result<Reply, Refusal> {
        let b: RegisterBody = serde_json::from_slice(body).map_err(|e| {
            bad(
                codes::INVALID_INPUT,
                format!("the body is not a valid UserRegister: {e}"),
            )
        })?;
        let users = b.user_info.unwrap_or_default();
        if users.is_empty() || users.len() > 100 {
            return Err(bad(codes::INVALID_INPUT, "UserInfo must hold 1 to 100 users"));
        }
        let mut errors: Vec<(String, i64, String)> = Vec::new();
        let mut registered = 0;
        let mut st = self.state.lock();
        for u in users {
            let shown = u.user_id.clone().unwrap_or_default();
            match check_register_user(&u) {
                Err((code, msg)) => errors.push((shown, code, msg)),
                Ok(id) if st.users.contains(&id) => {
                    errors.push((id, codes::USER_EXISTS, "user already exists".into()))
                }
                Ok(id) => {
                    st.profiles.insert(id.clone(), (u.user_name, u.user_avatar));
                    st.users.insert(id);
                    registered += 1;
                }
            }
        }
        let list: Vec<Value> = errors
            .iter()
            .map(|(u, c, m)| json!({"UserId": u, "SubCode": c, "SubMessage": m}))
            .collect();
        if registered > 0 {
            return Ok(Reply::Fields(json!({ "ErrorList": list })));
        }
        match errors.iter().find(|(_, c, _)| *c != codes::USER_EXISTS) {
            None => Ok(Reply::Fields(json!({
                "Code": codes::USER_EXISTS,
                "Message": "user already exists",
                "ErrorList": list,
            }))),
            Some((_, code, msg)) => Err(bad(*code, msg.clone())),
        }
    }

    /// Every user of this app, with the profile registered for it
    /// (`GET /_sim/users`).
    pub(crate) fn users_json(&self) -> Value {
        let st = self.state.lock();
        let mut ids: Vec<&String> = st.users.iter().collect();
        ids.sort();
        let users: Vec<Value> = ids
            .into_iter()
            .map(|id| {
                let (name, avatar) = st.profiles.get(id).cloned().unwrap_or_default();
                json!({"id": id, "name": name, "avatar": avatar})
            })
            .collect();
        json!({"app": self.app_id, "users": users})
    }
}
