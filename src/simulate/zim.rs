//! The ZIM server API as the simulator serves it: `ImportPeerMsg`,
//! `QueryPeerMsg` and `UserRegister`, with the rules of providers.md.
//!
//! - Public parameters: `AppId` (100000001), `Timestamp` (100000002 missing,
//!   100000003 malformed, 100000004 more than 600 s from now:
//!   zim-server/accessing-server-apis.md, "最多允许 10 分钟的误差"),
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

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::apps::sorted;
use super::faults::{FaultKind, MsgTime};
use super::ratelimit::RateWindow;
use super::state::Api;
use super::users::{Directory, Profile};
use super::{bad, Answer, Ctx, Query, Refusal, Reply};
use crate::config::ZimTarget;
use crate::lane_key::LaneKey;
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

/// What an import says about a message.
#[derive(Debug, Clone)]
struct Content {
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
}

impl Content {
    fn hash(&self) -> u64 {
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

/// One stored message of a view.
#[derive(Debug, Clone)]
pub(crate) struct ZimMsg {
    msg_id: u64,
    seq: u64,
    content: Content,
    /// What QueryPeerMsg reports as `MsgTime` (see faults.rs, `msg_time`).
    msg_time: i64,
    /// Written by a user chatting on ZIM, not by an import.
    live: bool,
}

impl ZimMsg {
    fn json(&self, imported: &str) -> Value {
        let c = &self.content;
        json!({
            "MsgId": self.msg_id,
            "MsgSeq": self.seq,
            "Sender": c.from,
            "FromUserId": c.from,
            "ToUserId": c.to,
            "ImportedUserId": imported,
            "MsgType": c.msg_type,
            "SubMsgType": c.sub_type,
            "Priority": c.priority,
            "MsgBody": c.body,
            "ExtendedData": c.ext,
            "SearchedContent": c.searched,
            "SendMessageTime": c.time,
            "MsgTime": self.msg_time,
            "Live": self.live,
        })
    }

    /// A message a user sent on ZIM itself, received now.
    fn live(view: &View, user: &str, peer: &str, msg_id: u64, now_ms: i64) -> ZimMsg {
        let n = view.msgs.len() as u64 + 1;
        let (from, to) = if n % 2 == 0 { (user, peer) } else { (peer, user) };
        let content = Content {
            from: from.to_string(),
            to: to.to_string(),
            msg_type: 1,
            sub_type: None,
            priority: 2,
            body: format!("live message {n} of {user}/{peer}"),
            ext: None,
            searched: None,
            time: now_ms,
        };
        ZimMsg {
            msg_id,
            seq: n,
            content,
            msg_time: now_ms,
            live: true,
        }
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
    /// With the UserName and UserAvatar of users registered through
    /// UserRegister.
    users: Directory,
    /// (ImportedUserId, peer) → that user's view.
    views: HashMap<ViewKey, View>,
    nonces: HashSet<String>,
    nonce_expiry: VecDeque<(i64, String)>,
    next_msg_id: u64,
}

impl ZimState {
    fn new(users: &[String]) -> Self {
        Self {
            users: Directory::new(users),
            views: HashMap::new(),
            nonces: HashSet::new(),
            nonce_expiry: VecDeque::new(),
            next_msg_id: FIRST_MSG_ID,
        }
    }

    fn take_msg_id(&mut self) -> u64 {
        let id = self.next_msg_id;
        self.next_msg_id += 1;
        id
    }

    /// The view of `key`, created as chatferry first finds it:
    /// `live_per_view` messages users already exchanged on ZIM (faults.rs,
    /// live users).
    fn view(&mut self, key: &ViewKey, cx: &Ctx) -> &mut View {
        if !self.views.contains_key(key) {
            let mut view = View::default();
            for _ in 0..cx.view.live_per_view {
                let id = self.take_msg_id();
                view.msgs.push(ZimMsg::live(&view, &key.0, &key.1, id, cx.now_ms));
            }
            self.views.insert(key.clone(), view);
        }
        self.views.get_mut(key).expect("inserted above")
    }
}

/// The rate windows of one app, per API.
struct Limits {
    import: RateWindow,
    query: RateWindow,
    register: RateWindow,
}

/// One simulated ZIM app.
pub(crate) struct ZimApp {
    pub app_id: u32,
    secret: String,
    retention_days: u32,
    max_message: usize,
    max_multi: usize,
    max_ext: usize,
    limits: Limits,
    state: Mutex<ZimState>,
}

/// (ImportedUserId, peer): one user's view of a conversation.
type ViewKey = (String, String);

impl ZimApp {
    /// The app of target `t`, with `users` registered.
    pub(crate) fn new(t: &ZimTarget, secret: String, rate_override: Option<f64>, users: &[String]) -> Self {
        let rate = |r: f64| rate_override.unwrap_or(r);
        Self {
            app_id: t.app_id,
            secret,
            retention_days: t.retention_days,
            max_message: t.max_message_bytes,
            max_multi: t.max_multi_message_bytes,
            max_ext: t.max_extended_bytes,
            limits: Limits {
                import: RateWindow::new(rate(t.rate_per_sec)),
                query: RateWindow::new(rate(t.query_rate_per_sec)),
                register: RateWindow::new(rate(t.register_rate_per_sec)),
            },
            state: Mutex::new(ZimState::new(users)),
        }
    }

    /// Whether `other` is the same app with the same secret.
    pub(crate) fn same_credentials(&self, other: &ZimApp) -> bool {
        self.secret == other.secret
    }

    /// Forgets everything; `users` are registered again.
    pub(crate) fn reset(&self, users: &[String]) {
        *self.state.lock() = ZimState::new(users);
        for l in [&self.limits.import, &self.limits.query, &self.limits.register] {
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
        let views: Vec<Value> = sorted(&st.views)
            .map(|(k, v)| {
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
            "users": st.users.count(),
            "views": views,
        })
    }
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
        Api::ImportPeerMsg => (&app.limits.import, codes::APP_RATE_LIMITED),
        Api::QueryPeerMsg => (&app.limits.query, codes::APP_RATE_LIMITED),
        _ => (&app.limits.register, codes::REGISTER_RATE_LIMITED),
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
                v["Code"] = json!(codes::SUCCESS);
                v["Message"] = json!("success");
            }
            v["RequestId"] = json!(cx.rid.to_string());
            Answer::ok(v.to_string())
        }
        Ok(Reply::Text(text)) => Answer::ok(text),
        Err(r) => {
            stats.validation_failure(r.code);
            error(r.code, &r.message, cx.rid)
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

/// An ImportPeerMsg that passed its checks.
struct NewMsg {
    content: Content,
    /// `ImportedUserId` is the sender (else the recipient).
    imported_is_from: bool,
}

impl NewMsg {
    /// The view it goes to: `ImportedUserId`'s, with the other user.
    fn view_key(&self) -> ViewKey {
        let c = &self.content;
        if self.imported_is_from {
            (c.from.clone(), c.to.clone())
        } else {
            (c.to.clone(), c.from.clone())
        }
    }

    fn into_stored(self, msg_id: u64, seq: u64, cx: &Ctx) -> ZimMsg {
        let msg_time = match cx.view.msg_time {
            MsgTime::Receive => cx.now_ms,
            MsgTime::Echo => self.content.time,
        };
        ZimMsg {
            msg_id,
            seq,
            content: self.content,
            msg_time,
            live: false,
        }
    }
}

/// A body as `T`; not JSON, or not its shape, is bad input.
fn parse_body<T: DeserializeOwned>(body: &[u8], api: &str) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        bad(
            codes::INVALID_INPUT,
            format!("the body is not a valid {api}: {e}"),
        )
    })
}

/// `FromUserId`, `ToUserId` (two different users) and `ImportedUserId`
/// (one of them); whether the imported user is the sender.
fn import_users(b: &ImportBody) -> Result<(String, String, bool), Refusal> {
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
    let imported_is_from = imported == from;
    Ok((from, to, imported_is_from))
}

/// `MessageType`: text, multi-item, media or custom; never signalling.
fn check_msg_type(msg_type: Option<i64>) -> Result<i64, Refusal> {
    let msg_type = msg_type.ok_or_else(|| bad(codes::INVALID_INPUT, "MessageType is missing"))?;
    match msg_type {
        1 | 10 | 11 | 12 | 13 | 14 | 200 => Ok(msg_type),
        2 => Err(bad(
            codes::INVALID_INPUT,
            "signalling messages (MessageType 2) cannot be imported",
        )),
        _ => Err(bad(codes::INVALID_INPUT, "unsupported MessageType")),
    }
}

/// A custom message's `SubMsgType` (required, 0..=200) and
/// `SearchedContent` (at most 64 bytes); other types carry neither.
fn check_custom(
    msg_type: i64,
    sub_type: Option<i64>,
    searched: Option<String>,
) -> Result<(Option<i64>, Option<String>), Refusal> {
    if msg_type != 200 {
        return Ok((None, None));
    }
    let sub =
        sub_type.ok_or_else(|| bad(codes::INVALID_INPUT, "SubMsgType is required for MessageType 200"))?;
    if !(0..=200).contains(&sub) {
        return Err(bad(codes::INVALID_INPUT, "SubMsgType must be within 0..=200"));
    }
    if searched.as_ref().is_some_and(|s| s.len() > 64) {
        return Err(bad(
            codes::MESSAGE_TOO_LARGE,
            "SearchedContent is longer than 64 bytes",
        ));
    }
    Ok((Some(sub), searched))
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
pub(crate) fn url_encode(s: &str) -> String {
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
    let limits = [
        (
            "UserName",
            &u.user_name,
            codes::MAX_USER_NAME_BYTES,
            codes::USER_NAME_TOO_LONG,
        ),
        (
            "UserAvatar",
            &u.user_avatar,
            codes::MAX_USER_AVATAR_BYTES,
            codes::USER_AVATAR_TOO_LONG,
        ),
    ];
    for (field, value, max, code) in limits {
        if value.as_ref().is_some_and(|v| v.len() > max) {
            return Err(bad(code, format!("{field} is longer than {max} bytes")));
        }
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
                codes::NONCE_REPLAYED,
                "SignatureNonce was already used within the signature window (replay)",
            ));
        }
        st.nonce_expiry.push_back((ts + SKEW_SECS, nonce.to_string()));
        Ok(())
    }

    /// ImportPeerMsg: validated, then stored in the view of
    /// `ImportedUserId`.
    fn import(&self, body: &[u8], cx: &Ctx) -> Result<Reply, Refusal> {
        let msg = self.check_import(parse_body(body, "ImportPeerMsg")?, cx.now_ms)?;
        let (msg_id, seq) = self.store(msg, cx)?;
        Ok(Reply::Text(format!(
            r#"{{"Code":{},"Message":"success","RequestId":"{}","MsgId":"{msg_id}","MsgSeq":{seq}}}"#,
            codes::SUCCESS,
            cx.rid
        )))
    }

    /// The import's checks, in the order ZIM answers them (see the module
    /// doc).
    fn check_import(&self, b: ImportBody, now_ms: i64) -> Result<NewMsg, Refusal> {
        let (from, to, imported_is_from) = import_users(&b)?;
        let msg_type = check_msg_type(b.message_type)?;
        let priority = b
            .priority
            .ok_or_else(|| bad(codes::INVALID_INPUT, "Priority is missing"))?;
        if !(1..=3).contains(&priority) {
            return Err(bad(codes::INVALID_INPUT, "Priority must be 1, 2 or 3"));
        }
        let (body, ext) = self.check_message_body(msg_type, b.message_body)?;
        let (sub_type, searched) = check_custom(msg_type, b.sub_msg_type, b.searched_content)?;
        let time = self.check_send_time(b.send_message_time, now_ms)?;
        let content = Content {
            from,
            to,
            msg_type,
            sub_type,
            priority,
            body,
            ext,
            searched,
            time,
        };
        Ok(NewMsg {
            content,
            imported_is_from,
        })
    }

    /// `MessageBody`: a non-empty `Message` within the type's limit, an
    /// `ExtendedData` within its own, and a media or multi-item `Message`
    /// in its documented form.
    fn check_message_body(
        &self,
        msg_type: i64,
        mb: Option<MessageBody>,
    ) -> Result<(String, Option<String>), Refusal> {
        let mb = mb.ok_or_else(|| bad(codes::INVALID_INPUT, "MessageBody is missing"))?;
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
        if mb
            .extended_data
            .as_ref()
            .is_some_and(|ext| ext.len() > self.max_ext)
        {
            return Err(bad(
                codes::MESSAGE_TOO_LARGE,
                format!("ExtendedData is longer than {} bytes", self.max_ext),
            ));
        }
        match msg_type {
            11..=14 => check_media(msg_type, &message)?,
            10 => check_multi(&message)?,
            _ => {}
        }
        Ok((message, mb.extended_data))
    }

    /// `SendMessageTime`: 0 or absent is now; never in the future, nor
    /// older than the plan's history retention.
    fn check_send_time(&self, time: Option<i64>, now_ms: i64) -> Result<i64, Refusal> {
        match time {
            None | Some(0) => Ok(now_ms),
            Some(t) if t > now_ms => Err(bad(codes::TIME_IN_FUTURE, "SendMessageTime is in the future")),
            Some(t) if t < now_ms - i64::from(self.retention_days) * DAY_MS => Err(bad(
                codes::SEND_TIME_BEYOND_RETENTION,
                "SendMessageTime is older than the plan's history retention",
            )),
            Some(t) => Ok(t),
        }
    }

    /// Appends `m` to its view (after a live user's message when one is
    /// due); returns its `MsgId` and `MsgSeq`.
    fn store(&self, m: NewMsg, cx: &Ctx) -> Result<(u64, u64), Refusal> {
        let mut st = self.state.lock();
        for u in [&m.content.from, &m.content.to] {
            if !st.users.admit(u, cx.auto_register) {
                return Err(bad(
                    codes::OPERATOR_NOT_REGISTERED,
                    format!("user {u} is not registered"),
                ));
            }
        }
        let msg_id = st.take_msg_id();
        let key = m.view_key();
        let view = st.view(&key, cx);
        let seq = view.msgs.len() as u64 + 1;
        let msg = m.into_stored(msg_id, seq, cx);
        let stats = cx.stats;
        if !view.content.insert(msg.content.hash()) {
            stats.duplicates_stored.fetch_add(1, Ordering::Relaxed);
        }
        let last_history = view.msgs.iter().rev().find(|m| !m.live);
        let inverted = last_history.is_some_and(|last| msg.content.time < last.content.time);
        if inverted {
            view.inversions += 1;
        }
        view.msgs.push(msg);
        if cx.live {
            let id = st.take_msg_id();
            let view = st.views.get_mut(&key).expect("stored above");
            let live = ZimMsg::live(view, &key.0, &key.1, id, cx.now_ms);
            view.msgs.push(live);
            stats.fault(FaultKind::Live);
        }
        drop(st);
        if inverted {
            stats.inversion(format!(
                "{}/{}",
                self.app_id,
                LaneKey::view(&key.0, &key.1).as_str()
            ));
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.stored.fetch_add(1, Ordering::Relaxed);
        Ok((msg_id, seq))
    }

    fn query(&self, body: &[u8]) -> Result<Reply, Refusal> {
        let b: QueryBody = parse_body(body, "QueryPeerMsg")?;
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
                let c = &m.content;
                // query-the-message-list-of-one-on-one-chats.md: the List
                // item's fields; MsgId a number, IsEmpty a number (0: normal).
                json!({
                    "Sender": c.from,
                    "MsgType": c.msg_type,
                    "SubMsgType": c.sub_type.unwrap_or(0),
                    "MsgBody": read_back_body(c.msg_type, &c.body),
                    "MsgId": m.msg_id,
                    "MsgSeq": m.seq,
                    "Payload": c.ext.as_deref().unwrap_or(""),
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
        let b: RegisterBody = parse_body(body, "UserRegister")?;
        let users = b.user_info.unwrap_or_default();
        if users.is_empty() || users.len() > 100 {
            return Err(bad(codes::INVALID_INPUT, "UserInfo must hold 1 to 100 users"));
        }
        let (registered, errors) = self.register(users);
        let list: Vec<Value> = errors
            .iter()
            .map(|(u, r)| json!({"UserId": u, "SubCode": r.code, "SubMessage": r.message}))
            .collect();
        if registered > 0 {
            return Ok(Reply::Fields(json!({ "ErrorList": list })));
        }
        match errors.into_iter().find(|(_, r)| r.code != codes::USER_EXISTS) {
            None => Ok(Reply::Fields(json!({
                "Code": codes::ALL_USERS_EXIST,
                "Message": "user already exists",
                "ErrorList": list,
            }))),
            Some((_, refusal)) => Err(refusal),
        }
    }

    /// Registers each new, valid user; returns how many, and each other
    /// user with why it was not registered.
    fn register(&self, users: Vec<RegisterUser>) -> (usize, Vec<(String, Refusal)>) {
        let mut errors = Vec::new();
        let mut registered = 0;
        let mut st = self.state.lock();
        for u in users {
            let shown = u.user_id.clone().unwrap_or_default();
            match check_register_user(&u) {
                Err(r) => errors.push((shown, r)),
                Ok(id) if st.users.contains(&id) => {
                    errors.push((id, bad(codes::USER_EXISTS, "user already exists")))
                }
                Ok(id) => {
                    let profile = Profile {
                        name: u.user_name,
                        avatar: u.user_avatar,
                    };
                    st.users.register(id, profile);
                    registered += 1;
                }
            }
        }
        (registered, errors)
    }

    /// Every user of this app, with the profile registered for it
    /// (`GET /_sim/users`).
    pub(crate) fn users_json(&self) -> Value {
        self.state.lock().users.json(self.app_id)
    }
}
