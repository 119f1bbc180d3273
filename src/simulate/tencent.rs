//! The Tencent Cloud IM REST API as the simulator serves it:
//! `v4/openim/importmsg`, `v4/openim/admin_getroammsg`,
//! `v4/im_open_login_svc/account_import` and `multiaccount_import`.
//!
//! Every answer is HTTP 200 with `ActionStatus`/`ErrorCode`/`ErrorInfo`.
//!
//! - Auth: `sdkappid` missing 60012, unknown 70020; `identifier` or
//!   `usersig` missing 60004; UserSig malformed 70003, wrong key 70009,
//!   expired 70001, for another identifier 70013, for another app 70014;
//!   an identifier that is not the configured admin 60010. A UserSig that
//!   verified once is cached (its expiry is still checked on every call).
//! - `importmsg`: the whole body over the target's `max_message_bytes`
//!   93000; not JSON 90001; `MsgBody` not an array 90007, empty or with a
//!   bad element (unknown `MsgType`, `MsgContent` not an object, a text
//!   without `Text`, two `TIMCustomElem`) 90002; `To_Account` missing
//!   90003; `MsgRandom` missing or not a u32 90005; `MsgTimeStamp` missing
//!   or not positive 90006; `From_Account` missing 90008; `MsgSeq` not a
//!   u32, `CloudCustomData` not a string 90010; `SyncFromOldSystem` not 1,
//!   2 or 5 90030; sender not imported 20003, recipient not imported 90012.
//! - Accounts (导入单个账号, 导入多个账号): `UserID` 1 to 32 bytes, `Nick`
//!   and `FaceUrl` at most 500 bytes (40601; `FailAccounts` in the batch
//!   call); importing again is harmless and updates the profile
//!   (`GET /_sim/users`). Codes are the constants of
//!   `providers::tencent::codes`.
//! - Dedup (导入单聊消息, api/269/2568: messages with the same MsgSeq,
//!   MsgRandom and MsgTimeStamp are treated as duplicates): in a
//!   conversation (either direction, the simulator's reading), a triple
//!   seen before is answered OK and stores nothing; the first import wins
//!   (the simulator's choice: the page does not say which copy is kept).
//!   A missing `MsgSeq` gets a random one (the same page: optional field). Conversations read
//!   back in (MsgTimeStamp, MsgSeq) order.
//! - The success answer also carries `MsgKey` (`{MsgSeq}_{MsgRandom}_{MsgTimeStamp}`),
//!   the key `admin_getroammsg` uses; do not rely on it from the real API.
//! - `admin_getroammsg` pages backwards: each page holds the newest
//!   messages in `[MinTime, MaxTime]` older than `LastMsgKey`, newest
//!   first, at most `MaxCnt` and about 13 KB (查询单聊消息, product/269/42794;
//!   the size cap is the simulator's stand-in for the page's note that a
//!   page may hold fewer than `MaxCnt`); `LastMsgTime`/`LastMsgKey`
//!   name the page's oldest message, `Complete` is 1 when nothing older is
//!   left. Only the last `roaming_days` (7) days can be read back.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::apps::sorted;
use super::ratelimit::RateWindow;
use super::state::Api;
use super::users::{Directory, Profile};
use super::{bad, Answer, Ctx, Query, Refusal, Reply};
use crate::config::TencentTarget;
use crate::lane_key::LaneKey;
use crate::providers::tencent::codes;
use crate::providers::tencent::usersig::{self, Fields, UserSigError};

const ROAM_ANSWER_CAP: usize = 13 * 1024;
const SIG_CACHE_MAX: usize = 4096;

/// One stored message of a conversation.
#[derive(Debug, Clone)]
struct TimMsg {
    from: String,
    to: String,
    seq: u32,
    random: u32,
    ts: i64,
    /// `MsgBody` as compact JSON: a tenth of a `Value`'s memory.
    body: Box<str>,
    custom: Option<String>,
    sync: i64,
    seq_assigned: bool,
    arrival: u64,
}

impl TimMsg {
    fn key(&self) -> String {
        format!("{}_{}_{}", self.seq, self.random, self.ts)
    }

    fn body(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn json(&self) -> Value {
        json!({
            "From_Account": self.from,
            "To_Account": self.to,
            "MsgSeq": self.seq,
            "MsgRandom": self.random,
            "MsgTimeStamp": self.ts,
            "MsgKey": self.key(),
            "MsgBody": self.body(),
            "CloudCustomData": self.custom,
            "SyncFromOldSystem": self.sync,
            "MsgSeqAssigned": self.seq_assigned,
            "Arrival": self.arrival,
        })
    }

    /// One `MsgList` item of admin_getroammsg (Tencent: "查询单聊消息",
    /// product/269/42794): `MsgBody` elements as they were imported, in the
    /// "消息格式描述" format, media elements included.
    fn roam_json(&self) -> Value {
        json!({
            "IsPeerRead": 0,
            "From_Account": self.from,
            "To_Account": self.to,
            "MsgSeq": self.seq,
            "MsgRandom": self.random,
            "MsgTimeStamp": self.ts,
            "MsgFlagBits": 0,
            "MsgKey": self.key(),
            "MsgBody": self.body(),
            "CloudCustomData": self.custom.as_deref().unwrap_or(""),
        })
    }
}

#[derive(Debug, Default)]
struct Conv {
    /// Arrival order.
    msgs: Vec<TimMsg>,
    /// (MsgTimeStamp, MsgSeq, MsgRandom) → index in `msgs`: the display
    /// order and the dedup set at once.
    order: BTreeMap<(i64, u32, u32), usize>,
    content: HashSet<u64>,
    inversions: u64,
}

impl Conv {
    /// Whether the message imported last is also the newest in display
    /// order. 导入单聊消息 says the API "updates the conversation" (该接口会
    /// 更新会话) without saying from which message; displayed history is
    /// ordered by time and MsgSeq whatever the arrival order. So arrival
    /// order is harmless for the history, and the one thing it can spoil
    /// is the conversation's latest message, if Tencent takes it from the
    /// last import: this is what a client must keep right.
    fn last_is_newest(&self) -> bool {
        let newest = self.order.values().next_back();
        newest.map_or(true, |&i| i + 1 == self.msgs.len())
    }
}

#[derive(Debug)]
struct TimState {
    /// With the Nick and FaceUrl of imported accounts.
    accounts: Directory,
    /// (smaller id, larger id) → conversation.
    convs: HashMap<(String, String), Conv>,
    arrivals: u64,
}

impl TimState {
    fn new(users: &[String]) -> Self {
        Self {
            accounts: Directory::new(users),
            convs: HashMap::new(),
            arrivals: 0,
        }
    }
}

fn conv_key(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// The rate windows of one app, per API.
struct Limits {
    import: RateWindow,
    roam: RateWindow,
    account: RateWindow,
    multiaccount: RateWindow,
}

/// One simulated Tencent IM app.
pub(crate) struct TimApp {
    pub sdk_app_id: u32,
    admin: String,
    key: String,
    max_message: usize,
    roaming_days: u32,
    limits: Limits,
    sig_cache: Mutex<HashMap<String, Fields>>,
    state: Mutex<TimState>,
}

fn fail(code: i64, info: &str) -> Answer {
    Answer::ok(json!({"ActionStatus": "FAIL", "ErrorCode": code, "ErrorInfo": info}).to_string())
}

/// The answer of a fault-injected transient error.
pub(crate) fn transient(code: i64) -> Answer {
    fail(code, "simulated transient server error, retry later")
}

/// The answer to a body over the simulator's read limit.
pub(crate) fn too_large() -> Answer {
    fail(codes::PACKET_TOO_LONG, "the JSON packet is too long")
}

/// The answer to a path under `/v4/` that is not served.
pub(crate) fn unknown_api() -> Answer {
    fail(codes::UNKNOWN_API, "request resource error: unknown REST API")
}

impl TimApp {
    /// The app of target `t`, with `users` imported.
    pub(crate) fn new(
        t: &TencentTarget,
        key: String,
        rate_override: Option<f64>,
        roaming_days: u32,
        users: &[String],
    ) -> Self {
        let rate = |r: f64| rate_override.unwrap_or(r);
        Self {
            sdk_app_id: t.sdk_app_id,
            admin: t.admin_identifier.clone(),
            key,
            max_message: t.max_message_bytes,
            roaming_days,
            limits: Limits {
                import: RateWindow::new(rate(t.rate_per_sec)),
                roam: RateWindow::new(rate(t.query_rate_per_sec)),
                account: RateWindow::new(rate(t.account_rate_per_sec)),
                multiaccount: RateWindow::new(rate(t.account_rate_per_sec)),
            },
            sig_cache: Mutex::new(HashMap::new()),
            state: Mutex::new(TimState::new(users)),
        }
    }

    /// Whether `other` has the same admin and key.
    pub(crate) fn same_credentials(&self, other: &TimApp) -> bool {
        self.admin == other.admin && self.key == other.key
    }

    /// Forgets everything; `users` are imported again.
    pub(crate) fn reset(&self, users: &[String]) {
        *self.state.lock() = TimState::new(users);
        let l = &self.limits;
        for w in [&l.import, &l.roam, &l.account, &l.multiaccount] {
            w.reset();
        }
    }

    /// One conversation in display order (or arrival order), or None.
    pub(crate) fn conv_json(&self, a: &str, b: &str, arrival_order: bool) -> Option<Value> {
        let st = self.state.lock();
        let c = st.convs.get(&conv_key(a, b))?;
        let msgs: Vec<Value> = if arrival_order {
            c.msgs.iter().map(TimMsg::json).collect()
        } else {
            c.order.values().map(|&i| c.msgs[i].json()).collect()
        };
        let (a, b) = conv_key(a, b);
        Some(json!({
            "provider": "tencent",
            "app": self.sdk_app_id,
            "a": a,
            "b": b,
            "count": msgs.len(),
            "order": if arrival_order { "arrival" } else { "display" },
            "order_inversions": c.inversions,
            "messages": msgs,
        }))
    }

    /// Every conversation with its size; with `full`, its messages in
    /// display order too.
    pub(crate) fn convs_json(&self, full: bool) -> Value {
        let st = self.state.lock();
        let convs: Vec<Value> = sorted(&st.convs)
            .map(|(k, c)| {
                let mut o = json!({
                    "a": k.0,
                    "b": k.1,
                    "count": c.msgs.len(),
                    "order_inversions": c.inversions,
                    "last_is_newest": c.last_is_newest(),
                });
                if full {
                    o["messages"] = c.order.values().map(|&i| c.msgs[i].json()).collect();
                }
                o
            })
            .collect();
        json!({
            "provider": "tencent",
            "app": self.sdk_app_id,
            "accounts": st.accounts.count(),
            "conversations": convs,
        })
    }

    fn authenticate(&self, q: &Query, now_secs: i64) -> Result<(), Refusal> {
        let identifier = match q.get("identifier") {
            None | Some("") => {
                return Err(bad(
                    codes::URL_PARAMS_INVALID,
                    "identifier is missing from the URL",
                ))
            }
            Some(i) => i,
        };
        let sig = match q.get("usersig") {
            None | Some("") => return Err(bad(codes::URL_PARAMS_INVALID, "usersig is missing from the URL")),
            Some(s) => s,
        };
        // A sig that verified once is only checked for its identifier and
        // expiry (under the lock, without copying it).
        let cached = self
            .sig_cache
            .lock()
            .get(sig)
            .map(|f| (f.identifier == identifier, f.time.saturating_add(f.expire)));
        let (same_identifier, expires_at) = match cached {
            Some(c) => c,
            None => {
                // Verify against the sig's own identifier; whether it is the
                // request's is checked below, as for a cached sig.
                let f = usersig::decode(sig).map_err(|e| sig_refusal(&e))?;
                let f = usersig::verify(
                    sig,
                    u64::from(self.sdk_app_id),
                    &f.identifier,
                    &self.key,
                    i64::MIN,
                )
                .map_err(|e| sig_refusal(&e))?;
                let checked = (f.identifier == identifier, f.time.saturating_add(f.expire));
                let mut cache = self.sig_cache.lock();
                if cache.len() >= SIG_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(sig.to_string(), f);
                checked
            }
        };
        if !same_identifier {
            return Err(sig_refusal(&UserSigError::WrongIdentifier));
        }
        if now_secs > expires_at {
            return Err(sig_refusal(&UserSigError::Expired));
        }
        if identifier != self.admin {
            return Err(bad(
                codes::NOT_ADMIN,
                "the request needs the App admin's identity",
            ));
        }
        Ok(())
    }
}

fn sig_refusal(e: &UserSigError) -> Refusal {
    let code = match e {
        UserSigError::Malformed => codes::USERSIG_MALFORMED,
        UserSigError::BadSignature => codes::USERSIG_BAD_SIGNATURE,
        UserSigError::Expired => codes::USERSIG_EXPIRED,
        UserSigError::WrongIdentifier => codes::USERSIG_WRONG_IDENTIFIER,
        UserSigError::WrongApp => codes::USERSIG_WRONG_APP,
    };
    bad(code, e.to_string())
}

/// Handles one Tencent call to `api`.
pub(crate) fn handle(apps: &HashMap<u32, TimApp>, api: Api, q: &Query, body: &[u8], cx: &Ctx) -> Answer {
    let stats = cx.stats;
    let auth_fail = |code: i64, msg: &str| {
        stats.auth_failure(code);
        fail(code, msg)
    };
    let app_id = match q.get("sdkappid") {
        None | Some("") => {
            return auth_fail(codes::SDKAPPID_MISSING, "the REST API needs sdkappid in the URL")
        }
        Some(s) => s.parse::<u32>().ok(),
    };
    let Some(app) = app_id.and_then(|id| apps.get(&id)) else {
        return auth_fail(
            codes::SDKAPPID_NOT_FOUND,
            "SDKAppID does not exist: UserSig verification failed",
        );
    };
    if !cx.no_auth {
        if let Err(r) = app.authenticate(q, cx.now_ms / 1000) {
            return auth_fail(r.code, &r.message);
        }
    }
    let limit = match api {
        Api::ImportMsg => &app.limits.import,
        Api::GetRoamMsg => &app.limits.roam,
        Api::AccountImport => &app.limits.account,
        _ => &app.limits.multiaccount,
    };
    if !limit.try_acquire(cx.mono_ns) {
        stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        return fail(
            codes::RATE_LIMITED_60007,
            "REST API call frequency exceeds the limit",
        );
    }
    let result = match api {
        Api::ImportMsg => app.import(body, cx),
        Api::GetRoamMsg => app.roam(body, cx),
        Api::AccountImport => app.account_import(body),
        _ => app.multiaccount_import(body),
    };
    match result {
        Ok(Reply::Text(text)) => Answer::ok(text),
        Ok(Reply::Fields(mut v)) => {
            v["ActionStatus"] = json!("OK");
            v["ErrorCode"] = json!(codes::SUCCESS);
            v["ErrorInfo"] = json!("");
            Answer::ok(v.to_string())
        }
        Err(r) => {
            stats.validation_failure(r.code);
            fail(r.code, &r.message)
        }
    }
}

fn u32_field(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// One account to import: `UserID` (1 to 32 bytes), `Nick` and `FaceUrl`
/// at most 500 bytes each (导入单个账号: 40601).
fn account_entry(v: &Value) -> Result<(String, Profile), Refusal> {
    let id = account(v.get("UserID").cloned()).ok_or_else(|| {
        bad(
            codes::ACCOUNT_PARAMS_INVALID,
            "UserID is missing or longer than 32 bytes",
        )
    })?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let (nick, face) = (text("Nick"), text("FaceUrl"));
    for (k, val) in [("Nick", &nick), ("FaceUrl", &face)] {
        if val
            .as_ref()
            .is_some_and(|s| s.len() > codes::MAX_PROFILE_VALUE_BYTES)
        {
            return Err(bad(
                codes::PROFILE_VALUE_TOO_LONG,
                format!("{k} is longer than 500 bytes"),
            ));
        }
    }
    let profile = Profile {
        name: nick,
        avatar: face,
    };
    Ok((id, profile))
}

fn account(v: Option<Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 32 => Some(s),
        _ => None,
    }
}

fn check_body(body: &Value) -> Result<(), Refusal> {
    let Some(elems) = body.as_array() else {
        return Err(bad(codes::MSG_BODY_NOT_ARRAY, "MsgBody is not an array"));
    };
    if elems.is_empty() {
        return Err(bad(codes::MSG_BODY_INVALID, "MsgBody is empty"));
    }
    let mut customs = 0;
    for e in elems {
        let (Some(kind), Some(content)) = (
            e.get("MsgType").and_then(Value::as_str),
            e.get("MsgContent").and_then(Value::as_object),
        ) else {
            return Err(bad(
                codes::MSG_BODY_INVALID,
                "a MsgBody element needs MsgType and a MsgContent object",
            ));
        };
        match kind {
            "TIMTextElem" => {
                if !content.get("Text").is_some_and(Value::is_string) {
                    return Err(bad(codes::MSG_BODY_INVALID, "TIMTextElem needs MsgContent.Text"));
                }
            }
            "TIMCustomElem" => {
                customs += 1;
                if customs > 1 {
                    return Err(bad(
                        codes::MSG_BODY_INVALID,
                        "a message holds at most one TIMCustomElem",
                    ));
                }
            }
            "TIMFaceElem" | "TIMLocationElem" | "TIMSoundElem" | "TIMImageElem" | "TIMFileElem"
            | "TIMVideoFileElem" => {}
            _ => return Err(bad(codes::MSG_BODY_INVALID, "unknown MsgBody element MsgType")),
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct ImportBody {
    #[serde(rename = "SyncFromOldSystem")]
    sync: Option<Value>,
    #[serde(rename = "From_Account")]
    from: Option<Value>,
    #[serde(rename = "To_Account")]
    to: Option<Value>,
    #[serde(rename = "MsgSeq")]
    seq: Option<Value>,
    #[serde(rename = "MsgRandom")]
    random: Option<Value>,
    #[serde(rename = "MsgTimeStamp")]
    ts: Option<Value>,
    #[serde(rename = "MsgBody")]
    body: Option<Value>,
    #[serde(rename = "CloudCustomData")]
    custom: Option<Value>,
}

#[derive(Deserialize)]
struct RoamBody {
    #[serde(rename = "Operator_Account")]
    operator: Option<String>,
    #[serde(rename = "Peer_Account")]
    peer: Option<String>,
    #[serde(rename = "MaxCnt")]
    max_cnt: Option<i64>,
    #[serde(rename = "MinTime")]
    min_time: Option<i64>,
    #[serde(rename = "MaxTime")]
    max_time: Option<i64>,
    #[serde(rename = "LastMsgKey")]
    last_key: Option<String>,
}

fn content_hash(from: &str, ts: i64, body: &str, custom: &Option<String>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (from, ts, body, custom).hash(&mut h);
    h.finish()
}

impl TimApp {
    /// importmsg: validated, then stored in the conversation unless its
    /// (MsgSeq, MsgRandom, MsgTimeStamp) is there already.
    fn import(&self, raw: &[u8], cx: &Ctx) -> Result<Reply, Refusal> {
        if raw.len() > self.max_message {
            return Err(bad(
                codes::PACKET_TOO_LONG,
                format!("the JSON packet is longer than {} bytes", self.max_message),
            ));
        }
        let msg = check_import(parse_json(raw)?)?;
        let msg_key = msg.key();
        let stored = self.store(msg, cx)?;
        let stats = cx.stats;
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        if !stored {
            stats.dedup_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Reply::Fields(json!({ "MsgKey": msg_key })));
        }
        stats.stored.fetch_add(1, Ordering::Relaxed);
        Ok(Reply::Text(format!(
            r#"{{"ActionStatus":"OK","ErrorCode":{},"ErrorInfo":"","MsgKey":"{msg_key}"}}"#,
            codes::SUCCESS
        )))
    }

    /// Stores `m` in its conversation; false when its dedup triple was
    /// stored before (the first import wins).
    fn store(&self, m: TimMsg, cx: &Ctx) -> Result<bool, Refusal> {
        let mut st = self.state.lock();
        if !st.accounts.admit(&m.from, cx.auto_register) {
            return Err(bad(
                codes::SENDER_NOT_IMPORTED,
                "the sender's account has not been imported",
            ));
        }
        if !st.accounts.admit(&m.to, cx.auto_register) {
            return Err(bad(
                codes::TO_ACCOUNT_NOT_IMPORTED,
                "To_Account has not been imported",
            ));
        }
        let stats = cx.stats;
        let triple = (m.ts, m.seq, m.random);
        let arrival = st.arrivals;
        let conv = st.convs.entry(conv_key(&m.from, &m.to)).or_default();
        if conv.order.contains_key(&triple) {
            return Ok(false);
        }
        if !conv
            .content
            .insert(content_hash(&m.from, m.ts, &m.body, &m.custom))
        {
            stats.duplicates_stored.fetch_add(1, Ordering::Relaxed);
        }
        let inverted = conv.msgs.last().is_some_and(|last| m.ts < last.ts);
        if inverted {
            conv.inversions += 1;
        }
        let lane = LaneKey::conversation(&m.from, &m.to);
        conv.order.insert(triple, conv.msgs.len());
        conv.msgs.push(TimMsg { arrival, ..m });
        st.arrivals += 1;
        drop(st);
        if inverted {
            stats.inversion(format!("{}/{}", self.sdk_app_id, lane.as_str()));
        }
        Ok(true)
    }

    /// admin_getroammsg: one page of a conversation, newest first (see the
    /// module doc).
    fn roam(&self, raw: &[u8], cx: &Ctx) -> Result<Reply, Refusal> {
        let r = RoamRequest::check(parse_json(raw)?)?;
        let lo = r
            .min_time
            .max(cx.now_ms / 1000 - i64::from(self.roaming_days) * 86_400);
        let hi_key = (r.max_time, u32::MAX, u32::MAX);
        let upper = match r.last {
            Some(k) if k <= hi_key => Bound::Excluded(k),
            _ => Bound::Included(hi_key),
        };
        let st = self.state.lock();
        let conv = st.convs.get(&conv_key(&r.operator, &r.peer));
        let page = match conv.filter(|_| lo <= r.max_time) {
            Some(conv) => {
                let newest_first = conv.order.range((Bound::Included((lo, 0, 0)), upper)).rev();
                RoamPage::fill(newest_first.map(|(_, &i)| &conv.msgs[i]), r.max_cnt)
            }
            None => RoamPage::default(),
        };
        Ok(Reply::Fields(page.json()))
    }

    /// Tencent: 导入单个账号. Importing again is harmless; an account
    /// imported again takes the new profile, as 导入多个账号 says of its own
    /// calls (the single-account page is silent: either way is safe for
    /// a re-run that carries the same profile).
    fn account_import(&self, raw: &[u8]) -> Result<Reply, Refusal> {
        let v: Value = parse_json(raw)?;
        let (id, profile) = account_entry(&v)?;
        self.state.lock().accounts.register(id, profile);
        Ok(Reply::Fields(json!({})))
    }

    /// Tencent: 导入多个账号. `AccountList[{UserID, Nick?, FaceUrl?}]` (the
    /// old form `Accounts[id]` too), 1 to 100; an existing account is
    /// updated with the new profile; refused entries in `FailAccounts`.
    fn multiaccount_import(&self, raw: &[u8]) -> Result<Reply, Refusal> {
        let v: Value = parse_json(raw)?;
        let entries: Vec<Value> = match (v.get("AccountList"), v.get("Accounts")) {
            (Some(Value::Array(a)), _) => a.clone(),
            (None, Some(Value::Array(a))) => a.iter().map(|id| json!({ "UserID": id })).collect(),
            _ => return Err(bad(codes::ACCOUNT_PARAMS_INVALID, "AccountList is missing")),
        };
        if entries.is_empty() || entries.len() > 100 {
            return Err(bad(
                codes::ACCOUNT_PARAMS_INVALID,
                "AccountList must hold 1 to 100 accounts",
            ));
        }
        let mut failed = Vec::new();
        let mut st = self.state.lock();
        for e in &entries {
            match account_entry(e) {
                Ok((id, profile)) => st.accounts.register(id, profile),
                Err(_) => failed.push(e.get("UserID").cloned().unwrap_or(Value::Null)),
            }
        }
        Ok(Reply::Fields(json!({ "FailAccounts": failed })))
    }

    /// Every account of this app, with its profile (`GET /_sim/users`).
    pub(crate) fn users_json(&self) -> Value {
        self.state.lock().accounts.json(self.sdk_app_id)
    }
}

/// A body as `T`; anything else is a JSON parse failure.
fn parse_json<T: DeserializeOwned>(raw: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(raw).map_err(|e| bad(codes::JSON_INVALID, format!("JSON parse failed: {e}")))
}

/// An importmsg's checks, in the order the module doc lists them; the
/// message to store (its arrival is set when stored).
fn check_import(b: ImportBody) -> Result<TimMsg, Refusal> {
    let sync = b.sync.as_ref().and_then(Value::as_i64).unwrap_or(-1);
    if ![1, 2, 5].contains(&sync) {
        return Err(bad(
            codes::SYNC_MODE_INVALID,
            "SyncFromOldSystem must be 2 (history) or 5 (live)",
        ));
    }
    let from = account(b.from).ok_or_else(|| {
        bad(
            codes::FROM_ACCOUNT_INVALID,
            "From_Account is missing or not a valid account",
        )
    })?;
    let to = account(b.to).ok_or_else(|| {
        bad(
            codes::TO_ACCOUNT_INVALID,
            "To_Account is missing or not a valid account",
        )
    })?;
    let seq = match &b.seq {
        None | Some(Value::Null) => None,
        Some(v) => Some(u32_field(v).ok_or_else(|| bad(codes::FIELD_INVALID, "MsgSeq is not a u32"))?),
    };
    let (random, ts) = check_random_and_time(&b.random, &b.ts)?;
    let custom = match b.custom {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(bad(codes::FIELD_INVALID, "CloudCustomData is not a string")),
    };
    let body = b
        .body
        .ok_or_else(|| bad(codes::MSG_BODY_NOT_ARRAY, "MsgBody is missing"))?;
    check_body(&body)?;
    // A missing MsgSeq gets a random one.
    let (seq, seq_assigned) = match seq {
        Some(s) => (s, false),
        None => (rand::random::<u32>(), true),
    };
    Ok(TimMsg {
        from,
        to,
        seq,
        random,
        ts,
        // serde_json's maps are ordered, so equal bodies give equal text.
        body: body.to_string().into_boxed_str(),
        custom,
        sync,
        seq_assigned,
        arrival: 0,
    })
}

/// `MsgRandom` (a u32) and `MsgTimeStamp` (positive Unix seconds).
fn check_random_and_time(random: &Option<Value>, ts: &Option<Value>) -> Result<(u32, i64), Refusal> {
    let random = random
        .as_ref()
        .and_then(u32_field)
        .ok_or_else(|| bad(codes::MSG_RANDOM_INVALID, "MsgRandom is missing or not a u32"))?;
    let ts = ts
        .as_ref()
        .and_then(Value::as_i64)
        .filter(|t| *t > 0)
        .ok_or_else(|| {
            bad(
                codes::MSG_TIMESTAMP_INVALID,
                "MsgTimeStamp is missing or not Unix seconds",
            )
        })?;
    Ok((random, ts))
}

/// A checked admin_getroammsg request.
struct RoamRequest {
    operator: String,
    peer: String,
    max_cnt: i64,
    min_time: i64,
    max_time: i64,
    /// The page starts below this (MsgTimeStamp, MsgSeq, MsgRandom).
    last: Option<(i64, u32, u32)>,
}

impl RoamRequest {
    fn check(b: RoamBody) -> Result<RoamRequest, Refusal> {
        let (Some(operator), Some(peer)) = (b.operator, b.peer) else {
            return Err(bad(
                codes::JSON_INVALID,
                "Operator_Account and Peer_Account are required",
            ));
        };
        let max_cnt = b
            .max_cnt
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad(codes::JSON_INVALID, "MaxCnt must be at least 1"))?;
        let (Some(min_time), Some(max_time)) = (b.min_time, b.max_time) else {
            return Err(bad(codes::JSON_INVALID, "MinTime and MaxTime are required"));
        };
        let last = match b.last_key.as_deref() {
            None | Some("") => None,
            Some(k) => Some(
                parse_key(k).ok_or_else(|| bad(codes::JSON_INVALID, "LastMsgKey is not a message key"))?,
            ),
        };
        Ok(RoamRequest {
            operator,
            peer,
            max_cnt,
            min_time,
            max_time,
            last,
        })
    }
}

/// One admin_getroammsg page.
struct RoamPage {
    msgs: Vec<Value>,
    complete: bool,
    last_time: i64,
    last_key: String,
}

impl Default for RoamPage {
    /// An empty page: nothing (older) is left.
    fn default() -> Self {
        Self {
            msgs: Vec::new(),
            complete: true,
            last_time: 0,
            last_key: String::new(),
        }
    }
}

impl RoamPage {
    /// Takes messages, newest first, while the page holds fewer than
    /// `max_cnt` and stays within [`ROAM_ANSWER_CAP`] (the first one always
    /// fits); incomplete when any message is left.
    fn fill<'a>(mut newest_first: impl Iterator<Item = &'a TimMsg>, max_cnt: i64) -> RoamPage {
        let mut page = RoamPage::default();
        let mut bytes = 0;
        for m in newest_first.by_ref() {
            let v = m.roam_json();
            let len = v.to_string().len();
            let full = page.msgs.len() as i64 >= max_cnt || bytes + len > ROAM_ANSWER_CAP;
            if !page.msgs.is_empty() && full {
                page.complete = false;
                return page;
            }
            bytes += len;
            page.last_time = m.ts;
            page.last_key = m.key();
            page.msgs.push(v);
        }
        if page.msgs.len() as i64 >= max_cnt && newest_first.next().is_some() {
            page.complete = false;
        }
        page
    }

    fn json(self) -> Value {
        json!({
            "Complete": i32::from(self.complete),
            "MsgCnt": self.msgs.len(),
            "LastMsgTime": self.last_time,
            "LastMsgKey": self.last_key,
            "MsgList": self.msgs,
        })
    }
}

fn parse_key(k: &str) -> Option<(i64, u32, u32)> {
    let mut it = k.split('_');
    let seq = it.next()?.parse().ok()?;
    let random = it.next()?.parse().ok()?;
    let ts = it.next()?.parse().ok()?;
    it.next().is_none().then_some((ts, seq, random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_in_display_order() {
        assert_eq!(parse_key("7_9_1700000000"), Some((1_700_000_000, 7, 9)));
        assert_eq!(parse_key("7_9"), None);
        assert_eq!(parse_key("7_9_1_2"), None);
        assert!(parse_key("1_1_5").unwrap() < parse_key("0_0_6").unwrap());
    }

    #[test]
    fn body_rules() {
        assert_eq!(
            check_body(&json!({})).unwrap_err().code,
            codes::MSG_BODY_NOT_ARRAY
        );
        assert_eq!(check_body(&json!([])).unwrap_err().code, codes::MSG_BODY_INVALID);
        assert_eq!(
            check_body(&json!([{"MsgType": "TIMTextElem", "MsgContent": {}}]))
                .unwrap_err()
                .code,
            codes::MSG_BODY_INVALID
        );
        let custom = json!({"MsgType": "TIMCustomElem", "MsgContent": {"Data": "x"}});
        assert!(check_body(&json!([custom.clone()])).is_ok());
        assert_eq!(
            check_body(&json!([custom.clone(), custom])).unwrap_err().code,
            codes::MSG_BODY_INVALID
        );
    }
}
