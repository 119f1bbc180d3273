//! ZEGO ZIM: `ImportPeerMsg` over the server API, signed per call.
//!
//! The wire format is in `body`, the signature in `sign`, the code table in
//! `codes`, the parsing of what QueryPeerMsg gives back in `readback`.

use std::time::Duration;

use async_trait::async_trait;
use backon::Retryable;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::http::{self, snippet};
use super::{
    id_field, int_field, Accepted, LaneReadBack, Outcome, Provider, ProviderError, ReadBack, Reconciled,
    Registered, SendJob, UserProfile,
};
use crate::backoff::Backoff;
use crate::config::{zim_base_url, ZimTarget};
use crate::lane_key::LaneKey;
use crate::probe::MsgTimeMode;
use crate::ratelimit;
use readback::Expected;

pub mod body;
pub mod codes;
pub mod probe;
pub mod readback;
pub mod sign;

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
    /// The plan's history window; a job older than this is never sent.
    retention_days: u32,
    /// Clock skew a reconcile allows around the in-flight mark, ms.
    skew_ms: i64,
    /// What `chatferry probe` found `MsgTime` to be (None: not probed).
    msg_time: parking_lot::Mutex<Option<MsgTimeMode>>,
    ensure: super::EnsureUsers,
}

/// Users per UserRegister call.
const REGISTER_BATCH: usize = 100;
/// QueryPeerMsg page size.
const QUERY_PAGE: u32 = 100;
/// Retries of a QueryPeerMsg page (a read): 200 ms, doubling, five at most.
const QUERY_RETRIES: Backoff = http::idempotent_retries(Duration::from_millis(200));
/// Retries of a UserRegister call (idempotent): 400 ms, doubling, five at most.
const REGISTER_RETRIES: Backoff = http::idempotent_retries(Duration::from_millis(400));

impl ZimClient {
    /// Builds a client from a target's configuration.
    pub fn new(target: &str, cfg: &ZimTarget, http: reqwest::Client, skew: Duration) -> anyhow::Result<Self> {
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
            retention_days: cfg.retention_days,
            skew_ms: skew.as_millis() as i64,
            msg_time: parking_lot::Mutex::new(None),
            ensure: super::EnsureUsers::default(),
        })
    }

    /// The signed URL of one call to `action`.
    fn url(&self, action: &str) -> reqwest::Url {
        let ts = super::unix_ms() / 1000;
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
        let (status, bytes) = http::post_json(&self.http, self.url(action), body).await?;
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
    http::json_answer(status, bytes, "ZIM", |v| v.get("Code").is_some())
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

/// Most QueryPeerMsg pages one reconcile reads (100 messages each) before
/// it gives up for now.
const MAX_RECONCILE_PAGES: usize = 2_000;

impl ZimClient {
    /// A refusal for a job that aged out of the plan's retention window
    /// since it was loaded: ZEGO refuses a `SendMessageTime` older than
    /// the retention days (zim-server ImportPeerMsg page), and a message
    /// that cannot be imported any more must say so, not fail as a bad
    /// request. A minute of margin covers clock skew.
    fn aged_out(&self, body: &str) -> Option<Outcome> {
        let v: Value = serde_json::from_str(body).ok()?;
        let sent = int_field(&v, "SendMessageTime").filter(|t| *t > 0)?;
        let now = super::unix_ms();
        let window = i64::from(self.retention_days) * 86_400_000;
        (sent < now - window + 60_000).then(|| Outcome::Permanent {
            code: None,
            reason: format!(
                "aged out of the ZIM retention window: sent at {sent} ms, more than retention_days = {} \
                 before now; ZIM refuses it, so it was not sent",
                self.retention_days
            ),
        })
    }

    /// Looks for an in-doubt import in its view, newest first.
    ///
    /// QueryPeerMsg lists newest first by `MsgTime`, documented as the time
    /// the server *received* the message; whether an import echoes
    /// `SendMessageTime` there is not documented, so both are accepted
    /// unless `chatferry probe` settled it: a candidate matches on content,
    /// is not a MsgId already checkpointed in this lane (an identical
    /// earlier message), and its `MsgTime` equals our `SendMessageTime` or
    /// falls between our first in-flight mark and now (± the allowed skew).
    /// Users already chatting on ZIM put newer messages on top, so the
    /// search pages back until the messages are older than every time our
    /// import could carry.
    async fn find_in_view(
        &self,
        content: &Expected,
        job: &SendJob<'_>,
    ) -> Result<Option<readback::Item>, Outcome> {
        let mode = *self.msg_time.lock();
        let now = super::unix_ms();
        let sent = content.send_time_ms;
        let since = job.first_mark_ms.unwrap_or(sent).min(now) - self.skew_ms;
        let time_ok = |t: i64| match mode {
            Some(MsgTimeMode::Echo) => t == sent,
            _ => t == sent || (since..=now + self.skew_ms).contains(&t),
        };
        let floor = match mode {
            Some(MsgTimeMode::Echo) => sent,
            Some(MsgTimeMode::Receive) => since,
            None => sent.min(since),
        };
        let known: std::collections::HashSet<&str> = job.known_ids.iter().map(String::as_str).collect();
        let mut next = 0u64;
        for _ in 0..MAX_RECONCILE_PAGES {
            let (list, n) = self.query_page(&content.view, &content.peer, next).await?;
            metrics::counter!(crate::ops::metrics::RECONCILE_READS, "target" => self.target.clone())
                .increment(1);
            let items: Vec<readback::Item> = list.iter().filter_map(readback::parse_item).collect();
            let found = items.iter().find(|item| {
                content.matches(item)
                    && !item.msg_id.as_deref().is_some_and(|i| known.contains(i))
                    && item.msg_time.is_some_and(time_ok)
            });
            if let Some(item) = found {
                return Ok(Some(item.clone()));
            }
            let oldest = items.iter().filter_map(|i| i.msg_time).min();
            if n == 0 || list.is_empty() || oldest.is_some_and(|t| t < floor) {
                return Ok(None);
            }
            next = n;
        }
        Err(Outcome::Unknown {
            code: None,
            reason: format!("the view is longer than {MAX_RECONCILE_PAGES} pages; cannot search it all"),
        })
    }

    /// One page of a user's view, newest first, and the next cursor (0: done)
    /// (ZEGO: zim-server/conversation/query-the-message-list-of-one-on-one-chats.md;
    /// `Next` is also accepted as a string, defensively: the page shows a
    /// number). A query only reads, so a transient failure is retried.
    async fn query_page(&self, view: &str, peer: &str, next: u64) -> Result<(Vec<Value>, u64), Outcome> {
        (|| self.query_page_once(view, peer, next))
            .retry(QUERY_RETRIES.iter())
            .when(http::worth_retrying)
            .await
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
    async fn register(&self, users: &[UserProfile]) -> Result<Registered, ProviderError> {
        let mut out = Registered::default();
        for chunk in users.chunks(REGISTER_BATCH) {
            let (ok, failed) = self.register_chunk(chunk).await?;
            out.ok += ok;
            out.failed.extend(failed);
        }
        Ok(out)
    }

    /// One UserRegister call, retried while its answer leaves it open
    /// (any failed call included): the users registered, and those refused.
    async fn register_chunk(&self, chunk: &[UserProfile]) -> Result<(usize, Vec<(String, String)>), Outcome> {
        let infos: Vec<Value> = chunk.iter().map(user_info).collect();
        let body = json!({"UserInfo": infos}).to_string();
        let ids: Vec<&str> = chunk.iter().map(|u| u.id.as_str()).collect();
        let once = || async {
            self.register_bucket.until_ready().await;
            match self.call("UserRegister", &body).await {
                Ok(v) => judge_register(&ids, &v).into_result(),
                Err(o) => Err(RegisterStep::Retry(o)),
            }
        };
        let step = once
            .retry(REGISTER_RETRIES.iter())
            .when(|step| matches!(step, RegisterStep::Retry(_)))
            .await;
        step.map_err(|step| match step {
            RegisterStep::Retry(o) | RegisterStep::Fail(o) => o,
            RegisterStep::Done { .. } => unreachable!("into_result keeps Done as Ok"),
        })
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
    Retry(Outcome),
    /// The call cannot work (credentials, app): stop.
    Fail(Outcome),
}

impl RegisterStep {
    /// `Done` as its counts; any other step as the error a retry judges.
    fn into_result(self) -> Result<(usize, Vec<(String, String)>), RegisterStep> {
        match self {
            RegisterStep::Done { ok, failed } => Ok((ok, failed)),
            other => Err(other),
        }
    }
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
        return RegisterStep::Retry(Outcome::Unknown {
            code: None,
            reason: "UserRegister answer has no numeric Code".into(),
        });
    };
    let listed: Vec<&Value> = v
        .get("ErrorList")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if code != codes::SUCCESS && code != codes::USER_EXISTS && listed.is_empty() {
        return match classify_answer(v) {
            o if http::worth_retrying(&o) => RegisterStep::Retry(o),
            o @ Outcome::Halt { .. } => RegisterStep::Fail(o),
            o => RegisterStep::Done {
                ok: 0,
                failed: ids.iter().map(|u| (u.to_string(), o.to_string())).collect(),
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

#[async_trait]
impl Provider for ZimClient {
    async fn send(&self, job: &SendJob<'_>) -> Outcome {
        if let Some(refusal) = self.aged_out(job.body) {
            return refusal;
        }
        let mut fresh_signature_tried = false;
        loop {
            let sent_at = std::time::Instant::now();
            let outcome = match self.call("ImportPeerMsg", job.body).await {
                Ok(v) => classify_answer(&v),
                Err(o) => o,
            };
            // A skewed timestamp is refused before anything is applied, so
            // one retry with a fresh signature is safe: the signature is a
            // public parameter checked before the API runs (ZEGO:
            // zim-server/accessing-server-apis.md; code 100000004 in
            // zim-server/return-codes.md).
            if let Outcome::Halt {
                code: Some(codes::SIGNATURE_EXPIRED),
                ..
            } = outcome
            {
                if !fresh_signature_tried && job.may_call_again() {
                    fresh_signature_tried = true;
                    continue;
                }
            }
            if let Outcome::Permanent { code: Some(c), .. } = &outcome {
                if self.ensure_users && codes::classify(*c) == codes::Class::UserMissing {
                    if let Some(content) = Expected::of_body(job.body) {
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
    /// message reached the view before sending it again (see
    /// `ZimClient::find_in_view`).
    async fn reconcile(&self, job: &SendJob<'_>) -> Reconciled {
        // A body reconcile cannot search for stays undecided: after
        // `max_reconcile_attempts` the job fails with a reason, never resent.
        let Some(content) = Expected::of_body(job.body) else {
            return Reconciled::Unknown {
                reason: "the stored body is not an ImportPeerMsg body chatferry can search the view for"
                    .into(),
            };
        };
        match self.find_in_view(&content, job).await {
            Ok(Some(item)) => Reconciled::Applied(Accepted {
                msg_id: item.msg_id,
                msg_seq: item.msg_seq,
                request_id: None,
            }),
            Ok(None) => Reconciled::NotApplied,
            Err(Outcome::Halt { code, reason }) => Reconciled::Halt { code, reason },
            Err(o) => Reconciled::Unknown {
                reason: format!("QueryPeerMsg: {o}"),
            },
        }
    }

    fn reconcile_settles(&self) -> bool {
        true
    }

    fn apply_findings(&self, findings: &crate::probe::Findings) {
        *self.msg_time.lock() = findings.msg_time;
    }

    async fn probe(&self, users: [&str; 2]) -> Result<crate::probe::Findings, ProviderError> {
        probe::run(self, users).await
    }

    async fn register_users(&self, users: &[UserProfile]) -> Result<Registered, ProviderError> {
        self.register(users).await
    }

    fn buckets(&self) -> Vec<&ratelimit::Bucket> {
        vec![&self.query_bucket, &self.register_bucket]
    }

    fn fingerprint(&self, body: &str) -> Option<String> {
        // Content only: MsgTime is the server's receive time by the doc,
        // and ids are the provider's.
        Some(Expected::of_body(body)?.fingerprint())
    }

    async fn read_back(&self, lane: &LaneKey) -> Result<LaneReadBack, ProviderError> {
        let (view, peer) = lane.users().ok_or(ProviderError::NotALane("ZIM"))?;
        let mut out = Vec::new();
        let mut next = 0u64;
        loop {
            let (list, n) = self.query_page(view, peer, next).await?;
            out.extend(list.iter().map(read_back_item));
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

/// One QueryPeerMsg list item for `verify`; an item without sender or type
/// still counts (as extra).
fn read_back_item(raw: &Value) -> ReadBack {
    match readback::parse_item(raw) {
        Some(item) => ReadBack {
            fingerprint: item.fingerprint(),
            msg_id: item.msg_id,
        },
        None => ReadBack {
            fingerprint: format!("unreadable list item {raw}"),
            msg_id: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::zim_target;

    /// An in-doubt job whose stored body reconcile cannot search for (not
    /// an ImportPeerMsg body chatferry wrote) must not be taken as "not
    /// applied": that would resend a message ZIM may already hold.
    #[tokio::test]
    async fn an_unsearchable_body_is_undecided_not_unsent() {
        let http = http::client(Duration::from_secs(1)).unwrap();
        let zim = ZimClient::new("zim", &zim_target(""), http, Duration::from_secs(120)).unwrap();
        let job = SendJob {
            job_id: 1,
            body: r#"{"FromUserId":"a","ToUserId":"b"}"#,
            lane_key: "a\u{1f}b",
            attempt: 2,
            known_ids: &[],
            first_mark_ms: None,
            start_by: None,
        };
        let got = zim.reconcile(&job).await;
        assert!(matches!(got, Reconciled::Unknown { .. }), "{got:?}");
    }
}
