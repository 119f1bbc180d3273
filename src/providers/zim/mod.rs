//! ZEGO ZIM: `ImportPeerMsg` over the server API, signed per call.
//!
//! The wire format is in `body`, the signature in `sign`, the code table in
//! `codes`.

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::{
    read_capped, snippet, transport_outcome, Accepted, LaneReadBack, Outcome, Provider, ReadBack, Reconciled,
    Registered, SendJob, UserProfile,
};
use crate::config::{zim_base_url, ZimTarget};
use crate::ratelimit;

pub mod body;
pub mod codes;
pub mod sign;

/// Largest answer we read; ZIM answers are small.
const MAX_ANSWER: usize = 1 << 20;

/// A ZIM server-API client for one app.
pub struct ZimClient {
    target: String,
    app_id: u32,
    secret: SecretString,
    base: reqwest::Url,
    http: reqwest::Client,
    ensure_users: bool,
    /// QueryPeerMsg has its own 20/s budget (reconcile and verify).
    query_bucket: ratelimit::Bucket,
    register_bucket: ratelimit::Bucket,
    ensure: super::EnsureUsers,
}

/// Users per UserRegister call.
const REGISTER_BATCH: usize = 100;
/// QueryPeerMsg page size.
const QUERY_PAGE: u32 = 100;

impl ZimClient {
    /// Builds a client from a target's configuration.
    pub fn new(target: &str, cfg: &ZimTarget, http: reqwest::Client) -> anyhow::Result<Self> {
        let base = zim_base_url(cfg).map_err(anyhow::Error::msg)?;
        Ok(Self {
            target: target.to_string(),
            app_id: cfg.app_id,
            secret: cfg.server_secret.clone().expect("resolved at config load"),
            base: reqwest::Url::parse(&base)?,
            http,
            ensure_users: cfg.ensure_users,
            query_bucket: ratelimit::bucket(cfg.query_rate_per_sec),
            register_bucket: ratelimit::bucket(cfg.register_rate_per_sec),
            ensure: super::EnsureUsers::default(),
        })
    }

    /// The signed URL of one call to `action`.
    fn url(&self, action: &str) -> reqwest::Url {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let nonce = sign::nonce();
        let sig = sign::signature(self.app_id, &nonce, self.secret.expose_secret(), ts);
        let mut url = self.base.clone();
        url.query_pairs_mut()
            .append_pair("Action", action)
            .append_pair("AppId", &self.app_id.to_string())
            .append_pair("SignatureNonce", &nonce)
            .append_pair("Timestamp", &ts.to_string())
            .append_pair("SignatureVersion", "2.0")
            .append_pair("Signature", &sig);
        url
    }

    /// Posts a body to `action` and returns the parsed answer object.
    async fn call(&self, action: &str, body: &str) -> Result<Value, Outcome> {
        let resp = self
            .http
            .post(self.url(action))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| transport_outcome(&e))?;
        let status = resp.status();
        let bytes = read_capped(resp, MAX_ANSWER).await?;
        parse_answer(status.as_u16(), &bytes)
    }

    /// The target name this client serves.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// Parses a ZIM answer (HTTP status and body) into its JSON object, or
/// the outcome that an unusable answer means. Never panics.
pub fn parse_answer(status: u16, bytes: &[u8]) -> Result<Value, Outcome> {
    let status = reqwest::StatusCode::from_u16(status).unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) if v.get("Code").is_some() => Ok(v),
        _ if !status.is_success() => Err(super::http_status_outcome(status, bytes)),
        _ => Err(Outcome::Unknown {
            code: None,
            reason: format!(
                "HTTP {} with an answer that is not ZIM's JSON: {}",
                status.as_u16(),
                snippet(bytes)
            ),
        }),
    }
}

/// Reads an integer that may come as a number or a string.
pub(crate) fn int_field(v: &Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|u| u as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads an id that may come as a string or a (u64) number, as text.
pub(crate) fn id_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Classifies a parsed ZIM answer as an `ImportPeerMsg` outcome.
///
/// Only answers that prove nothing was written are retried blindly (rate
/// limits; auth and parameter refusals are not retried at all). A
/// server-side error or a code ZEGO does not document may come after the
/// write, so it is in doubt: the worker reconciles before resending
/// (providers.md, Corrections 5). Reads (QueryPeerMsg) and UserRegister
/// are idempotent and retry an in-doubt answer themselves.
pub fn classify_answer(v: &Value) -> Outcome {
    let Some(code) = int_field(v, "Code") else {
        return Outcome::Unknown {
            code: None,
            reason: "answer has no numeric Code".into(),
        };
    };
    let request_id = id_field(v, "RequestId");
    use codes::Class::*;
    let class = codes::classify(code);
    if class == Success {
        return Outcome::Accepted(Accepted {
            msg_id: id_field(v, "MsgId"),
            msg_seq: int_field(v, "MsgSeq"),
            request_id,
        });
    }
    let message = v
        .get("Message")
        .and_then(Value::as_str)
        .map(|s| snippet(s.as_bytes()))
        .unwrap_or_default();
    let reason = refusal_reason(class, code, &message, request_id.as_deref().unwrap_or("-"));
    let code = Some(code);
    match class {
        RateLimited => Outcome::RetryLater {
            code,
            reason,
            delay: None,
            throttled: true,
        },
        ServerError | Unrecognized | Success => Outcome::Unknown { code, reason },
        ClockSkew | Auth | AppUnusable => Outcome::Halt { code, reason },
        BadMessage | Moderation | UserMissing => Outcome::Permanent { code, reason },
    }
}

/// What a refusal of class `class` tells the operator.
fn refusal_reason(class: codes::Class, code: i64, message: &str, rid: &str) -> String {
    use codes::Class::*;
    match class {
        RateLimited => format!("rate limited ({message}; request {rid})"),
        ServerError => {
            format!("ZIM server error {code} ({message}; request {rid}); the write may have happened")
        }
        Unrecognized | Success => {
            format!("undocumented ZIM code {code} ({message}; request {rid}); the write may have happened")
        }
        ClockSkew | Auth => {
            format!("ZIM refused the credentials ({message}); check app_id, server_secret and the host clock")
        }
        AppUnusable => format!(
            "the ZIM endpoint or app cannot be used ({message}); check the endpoint's host and \
             the app's status and services in the console"
        ),
        BadMessage => format!("ZIM refused the message ({message})"),
        Moderation => format!("refused by moderation or by the app's own callback ({message})"),
        UserMissing => format!(
            "a user is not registered in ZIM ({message}); register users with \
             `chatferry accounts import` or set ensure_users = true, then `chatferry retry`"
        ),
    }
}

/// The parts of an ImportPeerMsg body that identify its content.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Content {
    sender: String,
    msg_type: i64,
    sub_type: Option<i64>,
    body: String,
    time_ms: i64,
    view: String,
    peer: String,
}

impl Content {
    fn of_body(body: &str) -> Option<Content> {
        let v: Value = serde_json::from_str(body).ok()?;
        let from = v.get("FromUserId")?.as_str()?.to_string();
        let to = v.get("ToUserId")?.as_str()?.to_string();
        let view = v.get("ImportedUserId")?.as_str()?.to_string();
        let peer = if view == from { to } else { from.clone() };
        Some(Content {
            sender: from,
            msg_type: int_field(&v, "MessageType")?,
            sub_type: int_field(&v, "SubMsgType"),
            body: v.get("MessageBody")?.get("Message")?.as_str()?.to_string(),
            time_ms: int_field(&v, "SendMessageTime").unwrap_or(0),
            view,
            peer,
        })
    }

    /// Same sender, type and body as a QueryPeerMsg list item.
    fn matches(&self, item: &Value) -> bool {
        item.get("Sender").and_then(Value::as_str) == Some(self.sender.as_str())
            && int_field(item, "MsgType") == Some(self.msg_type)
            && item.get("MsgBody").and_then(Value::as_str) == Some(self.body.as_str())
            && (self.msg_type != 200 || int_field(item, "SubMsgType") == self.sub_type)
    }

    fn fingerprint(sender: &str, msg_type: i64, body: &str, time_ms: i64) -> String {
        format!("{sender}\u{1f}{msg_type}\u{1f}{time_ms}\u{1f}{body}")
    }
}

impl ZimClient {
    /// One page of a user's view, newest first, and the next cursor (0: done).
    /// A query only reads, so a transient failure is retried a few times.
    async fn query_page(&self, view: &str, peer: &str, next: u64) -> Result<(Vec<Value>, u64), Outcome> {
        let mut attempt = 0u32;
        loop {
            match self.query_page_once(view, peer, next).await {
                Err(Outcome::RetryLater { .. } | Outcome::Unknown { .. }) if attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn query_page_once(&self, view: &str, peer: &str, next: u64) -> Result<(Vec<Value>, u64), Outcome> {
        self.query_bucket.until_ready().await;
        let body = json!({"FromUserId": view, "ToUserId": peer, "Limit": QUERY_PAGE, "Next": next, "WithEmptyMsg": 0});
        let v = self.call("QueryPeerMsg", &body.to_string()).await?;
        match classify_answer(&v) {
            Outcome::Accepted(_) => {}
            other => return Err(other),
        }
        let list = v
            .get("List")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let next = v
            .get("Next")
            .and_then(|n| n.as_u64().or_else(|| n.as_str().and_then(|s| s.parse().ok())))
            .unwrap_or(0);
        Ok((list, next))
    }

    /// Registers users (UserRegister), 100 per call, with their profiles.
    /// Registering is idempotent, so an in-doubt or rate-limited call is
    /// retried; a user who exists already counts as registered.
    async fn register(&self, users: &[UserProfile]) -> Result<Registered, String> {
        let mut out = Registered::default();
        for chunk in users.chunks(REGISTER_BATCH) {
            let infos: Vec<Value> = chunk.iter().map(user_info).collect();
            let body = json!({"UserInfo": infos}).to_string();
            let ids: Vec<&str> = chunk.iter().map(|u| u.id.as_str()).collect();
            let mut attempt = 0u32;
            let (ok, failed) = loop {
                self.register_bucket.until_ready().await;
                let step = match self.call("UserRegister", &body).await {
                    Ok(v) => judge_register(&ids, &v),
                    Err(o) => RegisterStep::Retry(describe_outcome(&o)),
                };
                match step {
                    RegisterStep::Done { ok, failed } => break (ok, failed),
                    RegisterStep::Retry(_) if attempt < 5 => {
                        attempt += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                    }
                    RegisterStep::Retry(why) | RegisterStep::Fail(why) => return Err(why),
                }
            };
            out.ok += ok;
            out.failed.extend(failed);
        }
        Ok(out)
    }
}

/// One `UserInfo` entry (ZEGO: zim-server/user/batch-register-users.md).
fn user_info(u: &UserProfile) -> Value {
    let mut v = json!({"UserId": u.id});
    if let Some(n) = &u.name {
        v["UserName"] = json!(n);
    }
    if let Some(a) = &u.avatar {
        v["UserAvatar"] = json!(a);
    }
    v
}

/// What one UserRegister answer means.
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterStep {
    /// Users now known to ZIM, and those refused (with the reason).
    Done {
        ok: usize,
        failed: Vec<(String, String)>,
    },
    /// Nothing learnt (rate limit, server error, unreadable): call again.
    Retry(String),
    /// The call cannot work (credentials, app): stop.
    Fail(String),
}

/// Judges a UserRegister answer for the users `ids` of the call.
///
/// ZEGO: zim-server/user/batch-register-users.md. `Code` 0 when at least
/// one user registered, the others in `ErrorList[{UserId, SubCode,
/// SubMessage}]`; when every user failed, `Code` is non-zero, and a
/// non-empty `ErrorList` then means they all exist already. Whatever the
/// `Code`, a listed user is judged by its own `SubCode` (660700002, exists:
/// success), so a mixed answer the page does not describe is still read
/// safely. A non-zero `Code` with an empty list is a refusal of the call.
pub fn judge_register(ids: &[&str], v: &Value) -> RegisterStep {
    let Some(code) = int_field(v, "Code") else {
        return RegisterStep::Retry("UserRegister answer has no numeric Code".into());
    };
    let listed: Vec<&Value> = v
        .get("ErrorList")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if code != codes::SUCCESS && code != codes::USER_EXISTS && listed.is_empty() {
        return match classify_answer(v) {
            Outcome::RetryLater { .. } | Outcome::Unknown { .. } => {
                RegisterStep::Retry(describe_outcome(&classify_answer(v)))
            }
            o @ Outcome::Halt { .. } => RegisterStep::Fail(describe_outcome(&o)),
            o => RegisterStep::Done {
                ok: 0,
                failed: ids
                    .iter()
                    .map(|u| (u.to_string(), describe_outcome(&o)))
                    .collect(),
            },
        };
    }
    let mut failed = Vec::new();
    for e in listed {
        let sub = int_field(e, "SubCode").unwrap_or(-1);
        if sub == codes::USER_EXISTS {
            continue;
        }
        let user = e.get("UserId").and_then(Value::as_str).unwrap_or("?").to_string();
        let msg = e.get("SubMessage").and_then(Value::as_str).unwrap_or("");
        failed.push((user, format!("code {sub}: {}", snippet(msg.as_bytes()))));
    }
    RegisterStep::Done {
        ok: ids.len().saturating_sub(failed.len()),
        failed,
    }
}

/// An outcome as one line for an error message.
pub(crate) fn describe_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Accepted(_) => "accepted".into(),
        Outcome::RetryLater { code, reason, .. }
        | Outcome::Permanent { code, reason }
        | Outcome::Halt { code, reason } => match code {
            Some(c) => format!("code {c}: {reason}"),
            None => reason.clone(),
        },
        Outcome::Unknown {
            code: Some(c),
            reason,
        } => format!("code {c}: {reason}"),
        Outcome::Unknown { reason, .. } => reason.clone(),
    }
}

#[async_trait]
impl Provider for ZimClient {
    async fn send(&self, job: &SendJob<'_>) -> Outcome {
        let mut fresh_signature_tried = false;
        loop {
            let sent_at = std::time::Instant::now();
            let outcome = match self.call("ImportPeerMsg", job.body).await {
                Ok(v) => classify_answer(&v),
                Err(o) => o,
            };
            // A skewed timestamp is refused before anything is applied, so
            // one retry with a fresh signature is safe.
            if let Outcome::Halt {
                code: Some(codes::SIGNATURE_EXPIRED),
                ..
            } = outcome
            {
                if !fresh_signature_tried {
                    fresh_signature_tried = true;
                    continue;
                }
            }
            if let Outcome::Permanent { code: Some(c), .. } = &outcome {
                if self.ensure_users && codes::classify(*c) == codes::Class::UserMissing {
                    if let Some(content) = Content::of_body(job.body) {
                        let users = [content.view.clone(), content.peer.clone()];
                        let register = |u: Vec<UserProfile>| async move { self.register(&u).await };
                        return self.ensure.on_missing(*c, &users, sent_at, register).await;
                    }
                }
            }
            return outcome;
        }
    }

    /// ImportPeerMsg has no idempotency key: find out whether the in-doubt
    /// message reached the view before sending it again.
    ///
    /// Nothing later in the lane was sent, so if the message was applied
    /// it is among the newest of that user's view. A candidate matches on
    /// sender, type and body, must not carry a MsgId already checkpointed
    /// in this lane (an identical earlier message), and, when the provider
    /// echoes MsgTime, must have our SendMessageTime. Assumes nothing
    /// but chatferry writes to that view during the import.
    async fn reconcile(&self, job: &SendJob<'_>) -> Reconciled {
        let Some(content) = Content::of_body(job.body) else {
            return Reconciled::NotApplied;
        };
        let (list, _) = match self.query_page(&content.view, &content.peer, 0).await {
            Ok(x) => x,
            Err(Outcome::Halt { code, reason }) => return Reconciled::Halt { code, reason },
            Err(o) => {
                return Reconciled::Unknown {
                    reason: format!("QueryPeerMsg: {}", describe_outcome(&o)),
                }
            }
        };
        let known: std::collections::HashSet<&str> = job.known_ids.iter().map(String::as_str).collect();
        // Newest first: the first candidate is the latest such message.
        let found = list.iter().find(|item| {
            content.matches(item)
                && !id_field(item, "MsgId").is_some_and(|i| known.contains(i.as_str()))
                // When the provider echoes the time, it must be ours.
                && int_field(item, "MsgTime").map_or(true, |t| t == content.time_ms)
        });
        match found {
            Some(item) => Reconciled::Applied(Accepted {
                msg_id: id_field(item, "MsgId"),
                msg_seq: int_field(item, "MsgSeq"),
                request_id: None,
            }),
            None => Reconciled::NotApplied,
        }
    }

    async fn register_users(&self, users: &[UserProfile]) -> Result<Registered, String> {
        self.register(users).await
    }

    fn buckets(&self) -> Vec<&ratelimit::Bucket> {
        vec![&self.query_bucket, &self.register_bucket]
    }

    fn fingerprint(&self, body: &str) -> Option<String> {
        let c = Content::of_body(body)?;
        Some(Content::fingerprint(&c.sender, c.msg_type, &c.body, c.time_ms))
    }

    async fn read_back(&self, lane_key: &str) -> Result<LaneReadBack, String> {
        let (view, peer) = lane_key.split_once('\u{1f}').ok_or("not a ZIM lane")?;
        let mut out = Vec::new();
        let mut next = 0u64;
        loop {
            let (list, n) = self
                .query_page(view, peer, next)
                .await
                .map_err(|o| describe_outcome(&o))?;
            for item in &list {
                out.push(ReadBack {
                    fingerprint: Content::fingerprint(
                        item.get("Sender").and_then(Value::as_str).unwrap_or(""),
                        int_field(item, "MsgType").unwrap_or(-1),
                        item.get("MsgBody").and_then(Value::as_str).unwrap_or(""),
                        int_field(item, "MsgTime").unwrap_or(0),
                    ),
                    msg_id: id_field(item, "MsgId"),
                });
            }
            if n == 0 || list.is_empty() {
                break;
            }
            next = n;
        }
        out.reverse();
        Ok(LaneReadBack {
            messages: out,
            readable_from_ms: None,
        })
    }
}
