//! Tencent Cloud IM: `v4/openim/importmsg` with an admin UserSig.
//!
//! The wire format is in `body`, the UserSig in `usersig`, the code table
//! in `codes`.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::Retryable;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use super::http::{self, snippet};
use super::{
    int_field, Accepted, LaneReadBack, Outcome, Provider, ProviderError, ReadBack, Registered, SendJob,
    UserProfile,
};
use crate::backoff::Backoff;
use crate::config::{tencent_base_url, TencentTarget};
use crate::lane_key::LaneKey;
use crate::ratelimit;

pub mod body;
pub mod codes;
pub mod probe;
pub mod usersig;

struct CachedSig {
    sig: SecretString,
    renew_at: Instant,
}

/// A Tencent REST client for one app, as its admin.
pub struct TencentClient {
    target: String,
    sdk_app_id: u32,
    admin: String,
    key: SecretString,
    ttl: Duration,
    base: reqwest::Url,
    http: reqwest::Client,
    sig: Mutex<Option<CachedSig>>,
    ensure_accounts: bool,
    roaming_days: u32,
    query_bucket: ratelimit::Bucket,
    account_bucket: ratelimit::Bucket,
    ensure: super::EnsureUsers,
}

/// Accounts per multiaccount_import call.
const ACCOUNT_BATCH: usize = 100;
/// Retries of an idempotent call: 400 ms, doubling, five at most.
const IDEMPOTENT_RETRIES: Backoff = http::idempotent_retries(Duration::from_millis(400));

impl TencentClient {
    /// Builds a client from a target's configuration.
    pub fn new(target: &str, cfg: &TencentTarget, http: reqwest::Client) -> anyhow::Result<Self> {
        let base = tencent_base_url(cfg).map_err(anyhow::Error::msg)?;
        Ok(Self {
            target: target.to_string(),
            sdk_app_id: cfg.sdk_app_id,
            admin: cfg.admin_identifier.clone(),
            key: cfg.secret_key.clone().expect("resolved at config load"),
            ttl: Duration::from_secs(cfg.usersig_ttl_secs),
            base: reqwest::Url::parse(&base)?,
            http,
            sig: Mutex::new(None),
            ensure_accounts: cfg.ensure_accounts,
            roaming_days: cfg.roaming_days,
            query_bucket: ratelimit::bucket(cfg.query_rate_per_sec),
            account_bucket: ratelimit::bucket(cfg.account_rate_per_sec),
            ensure: super::EnsureUsers::default(),
        })
    }

    /// The cached admin UserSig, renewed when a quarter of its life is left.
    fn usersig(&self, force_new: bool) -> SecretString {
        let mut guard = self.sig.lock();
        if let Some(c) = guard.as_ref() {
            if !force_new && Instant::now() < c.renew_at {
                return c.sig.clone();
            }
        }
        let now = super::unix_ms() / 1000;
        let sig = SecretString::new(usersig::generate(
            u64::from(self.sdk_app_id),
            &self.admin,
            self.key.expose_secret(),
            now,
            self.ttl.as_secs() as i64,
        ));
        *guard = Some(CachedSig {
            sig: sig.clone(),
            renew_at: Instant::now() + self.ttl * 3 / 4,
        });
        sig
    }

    fn url(&self, api: &str, force_new_sig: bool) -> reqwest::Url {
        let mut url = self.base.join(api).expect("api path joins a base URL");
        let sig = self.usersig(force_new_sig);
        url.query_pairs_mut()
            .append_pair("sdkappid", &self.sdk_app_id.to_string())
            .append_pair("identifier", &self.admin)
            .append_pair("usersig", sig.expose_secret())
            .append_pair("random", &rand::random::<u32>().to_string())
            .append_pair("contenttype", "json");
        url
    }

    /// Posts a body to `api` and returns the parsed answer object.
    async fn call(&self, api: &str, body: &str, force_new_sig: bool) -> Result<Value, Outcome> {
        let (status, bytes) = http::post_json(&self.http, self.url(api, force_new_sig), body).await?;
        parse_answer(status.as_u16(), &bytes)
    }

    /// The target name this client serves.
    pub fn target(&self) -> &str {
        &self.target
    }
}

/// Parses a Tencent answer (HTTP status and body) into its JSON object,
/// or the outcome that an unusable answer means. Never panics.
pub fn parse_answer(status: u16, bytes: &[u8]) -> Result<Value, Outcome> {
    http::json_answer(status, bytes, "Tencent", |v| {
        v.get("ActionStatus").is_some() || v.get("ErrorCode").is_some()
    })
}

/// Classifies a parsed Tencent answer; `sent_seq` is the MsgSeq we sent.
pub fn classify_answer(v: &Value, sent_seq: Option<i64>) -> Outcome {
    let code = int_field(v, "ErrorCode").unwrap_or_else(|| {
        if v.get("ActionStatus").and_then(Value::as_str) == Some("OK") {
            0
        } else {
            -1
        }
    });
    let info = v
        .get("ErrorInfo")
        .and_then(Value::as_str)
        .map(|s| snippet(s.as_bytes()))
        .unwrap_or_default();
    // A success code beside ActionStatus "FAIL" contradicts itself: it
    // must not mark a job done. In doubt, it is settled by a resend.
    if code == 0
        && v.get("ActionStatus")
            .and_then(Value::as_str)
            .is_some_and(|s| s != "OK")
    {
        return Outcome::Unknown {
            code: None,
            reason: format!("answer says ErrorCode 0 but ActionStatus is not OK ({info})"),
        };
    }
    use codes::Class::*;
    let class = codes::classify(code);
    match class {
        Success => {
            return Outcome::Accepted(Accepted {
                msg_id: v.get("MsgKey").and_then(Value::as_str).map(str::to_string),
                msg_seq: int_field(v, "MsgSeq").or(sent_seq),
                request_id: None,
            })
        }
        Unrecognized if code < 0 => {
            return Outcome::Unknown {
                code: None,
                reason: "answer has neither ErrorCode nor ActionStatus OK".into(),
            }
        }
        _ => {}
    }
    let reason = refusal_reason(class, &info);
    let code = Some(code);
    let (delay, throttled) = match class {
        RateLimited => (None, true),
        SigLockout => (Some(Duration::from_secs(60)), true),
        Transient => (None, false),
        SigExpired | SigInvalid | AppUnusable | AppCapped => return Outcome::Halt { code, reason },
        Success | BadMessage | AccountMissing | Unrecognized => return Outcome::Permanent { code, reason },
    };
    Outcome::RetryLater {
        code,
        reason,
        delay,
        throttled,
    }
}

/// What an answer of class `class` tells the operator.
fn refusal_reason(class: codes::Class, info: &str) -> String {
    use codes::Class::*;
    match class {
        RateLimited => format!("rate limited ({info})"),
        SigLockout => format!("too many bad UserSigs; waiting a minute ({info})"),
        Transient => format!("transient server error ({info})"),
        SigExpired | SigInvalid => {
            format!("Tencent refused the UserSig ({info}); check sdk_app_id and secret_key")
        }
        AppUnusable => format!(
            "Tencent refused the app or the admin identity ({info}); admin_identifier must be an \
             app admin of this sdk_app_id, and the app must be enabled, paid up and allow this host's IP"
        ),
        AppCapped => format!("the Tencent app hit its account cap ({info}); upgrade the app"),
        BadMessage => format!("Tencent refused the message ({info})"),
        AccountMissing => format!(
            "an account is missing in Tencent IM ({info}); import accounts with \
             `chatferry accounts import` or set ensure_accounts = true, then `chatferry retry`"
        ),
        Success | Unrecognized => format!("unrecognized Tencent code ({info})"),
    }
}

/// Sender and the dedup triple: what identifies an imported message.
///
/// Tencent: admin_getroammsg ("查询单聊消息", product/269/42794) answers
/// every message with `From_Account`, `MsgSeq`, `MsgRandom` and
/// `MsgTimeStamp`, whatever its elements; its `MsgBody` elements are in the
/// send format of "消息格式描述" (media included). The element content is
/// left out on purpose: the triple is what Tencent deduplicates on, so it
/// identifies the message, and media elements then verify like text.
fn fingerprint_of(v: &Value) -> Option<String> {
    Some(format!(
        "{}|{}|{}|{}",
        v.get("From_Account")?.as_str()?,
        int_field(v, "MsgSeq")?,
        int_field(v, "MsgRandom")?,
        int_field(v, "MsgTimeStamp")?
    ))
}

impl TencentClient {
    /// Posts to an API and classifies the answer; a `RetryLater` or an
    /// unknown outcome is retried a few times (these calls are idempotent).
    /// A retry signs with a fresh UserSig.
    async fn idempotent_call(
        &self,
        api: &str,
        body: &str,
        bucket: &ratelimit::Bucket,
    ) -> Result<Value, ProviderError> {
        let mut calls = 0u32;
        let once = || {
            let fresh_sig = calls > 0;
            calls += 1;
            async move {
                bucket.until_ready().await;
                let v = self.call(api, body, fresh_sig).await?;
                match classify_answer(&v, None) {
                    Outcome::Accepted(_) => Ok(v),
                    o => Err(o),
                }
            }
        };
        Ok(once
            .retry(IDEMPOTENT_RETRIES.iter())
            .when(http::worth_retrying)
            .await?)
    }

    /// Imports accounts with their profiles (multiaccount_import's
    /// `AccountList`), 100 per call. Importing an account again is
    /// harmless (Tencent: 导入多个账号: one internal id per account, and an
    /// existing account takes the new Nick/FaceUrl), so re-runs succeed.
    async fn import_accounts(&self, users: &[UserProfile]) -> Result<Registered, ProviderError> {
        let mut out = Registered::default();
        for chunk in users.chunks(ACCOUNT_BATCH) {
            let list: Vec<Value> = chunk.iter().map(account_item).collect();
            let body = json!({"AccountList": list}).to_string();
            let v = self
                .idempotent_call(
                    "v4/im_open_login_svc/multiaccount_import",
                    &body,
                    &self.account_bucket,
                )
                .await?;
            let failed: Vec<String> = v
                .get("FailAccounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect();
            out.ok += chunk.len().saturating_sub(failed.len());
            out.failed.extend(
                failed
                    .into_iter()
                    .map(|u| (u, "refused by multiaccount_import".to_string())),
            );
        }
        Ok(out)
    }
}

/// One `AccountList` entry (Tencent: 导入多个账号, multiaccount_import).
fn account_item(u: &UserProfile) -> Value {
    let mut v = json!({"UserID": u.id});
    if let Some(n) = &u.name {
        v["Nick"] = json!(n);
    }
    if let Some(a) = &u.avatar {
        v["FaceUrl"] = json!(a);
    }
    v
}

#[async_trait]
impl Provider for TencentClient {
    // Tencent: 导入单聊消息 (cloud.tencent.com/document/api/269/2568):
    // "单聊消息历史记录对同一个会话的消息先以时间戳排序,同秒内的消息再以 MsgSeq 排序":
    // a conversation is ordered by MsgTimeStamp, then MsgSeq, whatever order
    // the imports came in, and imports are deduplicated on (MsgSeq,
    // MsgRandom, MsgTimeStamp). So a live message need not wait for older
    // history, and a lane may send with a window.
    fn orders_by_time(&self) -> bool {
        true
    }

    async fn send(&self, job: &SendJob<'_>) -> Outcome {
        let parsed = serde_json::from_str::<Value>(job.body).ok();
        let sent_seq = parsed.as_ref().and_then(|v| int_field(v, "MsgSeq"));
        let mut regenerated = false;
        loop {
            let sent_at = Instant::now();
            let outcome = match self.call("v4/openim/importmsg", job.body, regenerated).await {
                Ok(v) => classify_answer(&v, sent_seq),
                Err(o) => o,
            };
            // An expired or invalidated UserSig is refused before anything
            // is applied (Tencent: REST API 公共错误码, 70001/70052 are
            // authentication failures): regenerate it once, then fail
            // loudly. Were it ever applied, the resend carries the same
            // triple, which 导入单聊消息 deduplicates.
            if let Outcome::Halt {
                code: Some(codes::USERSIG_EXPIRED | codes::USERSIG_INVALIDATED),
                ..
            } = outcome
            {
                if !regenerated && job.may_call_again() {
                    regenerated = true;
                    continue;
                }
            }
            if let Outcome::Permanent { code: Some(c), .. } = &outcome {
                if self.ensure_accounts && codes::classify(*c) == codes::Class::AccountMissing {
                    let users: Vec<String> = ["From_Account", "To_Account"]
                        .iter()
                        .filter_map(|k| parsed.as_ref()?.get(*k)?.as_str().map(str::to_string))
                        .collect();
                    let import = |u: Vec<UserProfile>| async move { self.import_accounts(&u).await };
                    return self.ensure.on_missing(*c, &users, sent_at, import).await;
                }
            }
            return outcome;
        }
    }

    async fn probe(&self, users: [&str; 2]) -> Result<crate::probe::Findings, ProviderError> {
        probe::run(self, users).await
    }

    async fn register_users(&self, users: &[UserProfile]) -> Result<Registered, ProviderError> {
        self.import_accounts(users).await
    }

    fn buckets(&self) -> Vec<&ratelimit::Bucket> {
        vec![&self.query_bucket, &self.account_bucket]
    }

    fn fingerprint(&self, body: &str) -> Option<String> {
        fingerprint_of(&serde_json::from_str::<Value>(body).ok()?)
    }

    /// Pages a conversation backwards with admin_getroammsg and returns it
    /// in display order (time, then MsgSeq) (Tencent: 查询单聊消息,
    /// product/269/42794: `MaxCnt`, `MinTime`/`MaxTime`, `LastMsgKey`,
    /// `Complete`; only the roaming period can be read back).
    async fn read_back(&self, lane: &LaneKey) -> Result<LaneReadBack, ProviderError> {
        let (a, b) = lane.users().ok_or(ProviderError::NotALane("Tencent"))?;
        let now = super::unix_ms() / 1000;
        let min_time = now - i64::from(self.roaming_days) * 86_400;
        let mut max_time = now + 60;
        let mut last_key: Option<String> = None;
        let mut out: Vec<(i64, i64, ReadBack)> = Vec::new();
        for _page in 0..100_000 {
            let mut body = json!({"Operator_Account": a, "Peer_Account": b, "MaxCnt": 100,
                                  "MinTime": min_time, "MaxTime": max_time});
            if let Some(k) = &last_key {
                body["LastMsgKey"] = json!(k);
            }
            let v = self
                .idempotent_call(
                    "v4/openim/admin_getroammsg",
                    &body.to_string(),
                    &self.query_bucket,
                )
                .await?;
            let list = v.get("MsgList").and_then(Value::as_array).into_iter().flatten();
            out.extend(list.filter_map(roam_item));
            let complete = int_field(&v, "Complete").unwrap_or(1) == 1;
            let key = v.get("LastMsgKey").and_then(Value::as_str).map(str::to_string);
            if complete || key.is_none() || key == last_key {
                break;
            }
            max_time = int_field(&v, "LastMsgTime").unwrap_or(max_time);
            last_key = key;
        }
        out.sort_by_key(|(t, s, _)| (*t, *s));
        Ok(LaneReadBack {
            messages: out.into_iter().map(|x| x.2).collect(),
            readable_from_ms: Some(min_time * 1000),
        })
    }
}

/// One admin_getroammsg message for `verify`, with its display order
/// (time, then MsgSeq); None without the dedup triple.
fn roam_item(m: &Value) -> Option<(i64, i64, ReadBack)> {
    let read_back = ReadBack {
        fingerprint: fingerprint_of(m)?,
        msg_id: m.get("MsgKey").and_then(Value::as_str).map(str::to_string),
    };
    Some((
        int_field(m, "MsgTimeStamp").unwrap_or(0),
        int_field(m, "MsgSeq").unwrap_or(0),
        read_back,
    ))
}
