//! The provider boundary: what the worker asks of a chat service, and the
//! one classified [`Outcome`] every answer becomes.
//!
//! Each provider's wire format, signing and code table live in its own
//! module (`zim`, `tencent`); the worker only sees this trait. What both
//! share: the HTTP helper (`http`) and the error types (`error`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::config::{Config, TargetConfig};
use crate::lane_key::LaneKey;
use crate::load::input::InputMessage;

mod error;
pub(crate) mod http;
pub mod tencent;
#[cfg(test)]
pub(crate) mod testing;
pub mod zim;

pub use error::{PlanError, ProviderError};

/// The ids a provider gave an accepted message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    pub msg_id: Option<String>,
    pub msg_seq: Option<i64>,
    pub request_id: Option<String>,
}

/// Every provider answer, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored; checkpoint the ids.
    Accepted(Accepted),
    /// Not applied; try again later. `throttled` marks a rate-limit answer.
    RetryLater {
        code: Option<i64>,
        reason: String,
        delay: Option<Duration>,
        throttled: bool,
    },
    /// Will never be accepted as it is.
    Permanent { code: Option<i64>, reason: String },
    /// May or may not have been applied (timeout after the send, reset,
    /// unreadable answer, a server-side error code): resolve through
    /// [`Provider::reconcile`]. `code` is the provider's code, when it gave one.
    Unknown { code: Option<i64>, reason: String },
    /// The target itself is unusable (credentials, app, endpoint): stop
    /// sending to it instead of failing the whole backlog.
    Halt { code: Option<i64>, reason: String },
}

impl Outcome {
    /// The metric label of this outcome.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted(_) => "accepted",
            Outcome::RetryLater { throttled: true, .. } => "throttled",
            Outcome::RetryLater { .. } => "retry_later",
            Outcome::Permanent { .. } => "permanent",
            Outcome::Unknown { .. } => "unknown",
            Outcome::Halt { .. } => "halt",
        }
    }

    /// The provider's code: 0 for an acceptance, None where it gave none.
    pub fn code(&self) -> Option<i64> {
        match self {
            Outcome::Accepted(_) => Some(0),
            Outcome::RetryLater { code, .. }
            | Outcome::Permanent { code, .. }
            | Outcome::Unknown { code, .. }
            | Outcome::Halt { code, .. } => *code,
        }
    }

    /// A rate-limit answer.
    pub fn is_throttled(&self) -> bool {
        matches!(self, Outcome::RetryLater { throttled: true, .. })
    }
}

impl fmt::Display for Outcome {
    /// One line for an error message: `code N: reason`, or the reason
    /// alone where the provider gave no code.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (code, reason) = match self {
            Outcome::Accepted(_) => return f.write_str("accepted"),
            Outcome::RetryLater { code, reason, .. }
            | Outcome::Permanent { code, reason }
            | Outcome::Unknown { code, reason }
            | Outcome::Halt { code, reason } => (code, reason),
        };
        match code {
            Some(c) => write!(f, "code {c}: {reason}"),
            None => f.write_str(reason),
        }
    }
}

/// What reconciling an in-doubt job found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The provider holds the message: record these ids.
    Applied(Accepted),
    /// The provider does not hold it, or holding it twice is harmless
    /// (dedup): send it (again).
    NotApplied,
    /// Could not tell now; try again later.
    Unknown { reason: String },
    /// Reconcile cannot work for this target now (auth, config).
    Halt { code: Option<i64>, reason: String },
}

impl Reconciled {
    /// The metric label of this result.
    pub fn label(&self) -> &'static str {
        match self {
            Reconciled::Applied(_) => "applied",
            Reconciled::NotApplied => "not_applied",
            Reconciled::Unknown { .. } => "unknown",
            Reconciled::Halt { .. } => "halt",
        }
    }
}

/// A job as the provider sees it: the frozen body and where it belongs.
#[derive(Debug, Clone)]
pub struct SendJob<'a> {
    pub job_id: i64,
    pub body: &'a str,
    pub lane_key: &'a str,
    pub attempt: i32,
    /// For reconcile: provider message ids already checkpointed in this
    /// lane, newest first, so an identical earlier message is not taken
    /// for the one in doubt.
    pub known_ids: &'a [String],
    /// For reconcile: when the job was first marked in flight (Unix ms,
    /// database clock). A provider that reports its own receive time got
    /// the message after this.
    pub first_mark_ms: Option<i64>,
    /// The last moment a call for this job may *start* and still end, its
    /// timeout included, while the lane is leased. A send that needs a
    /// second call (a fresh signature or UserSig) makes it only before
    /// this; None: no limit.
    pub start_by: Option<std::time::Instant>,
}

impl SendJob<'_> {
    /// Whether another call for this job may start now.
    pub fn may_call_again(&self) -> bool {
        self.start_by.map_or(true, |t| std::time::Instant::now() <= t)
    }
}

/// A user to register, with the profile the provider should show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserProfile {
    pub id: String,
    /// ZIM `UserName`, Tencent `Nick`.
    pub name: Option<String>,
    /// ZIM `UserAvatar`, Tencent `FaceUrl`.
    pub avatar: Option<String>,
}

impl UserProfile {
    /// A user known only by id (what the job table knows).
    pub fn bare(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            ..Self::default()
        }
    }
}

/// What registering users found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registered {
    /// Users now known to the provider (new or already there).
    pub ok: usize,
    /// Users refused, with the provider's reason.
    pub failed: Vec<(String, String)>,
}

/// One message read back from a provider, for `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBack {
    /// What identifies the message's content (sender, type, body, time).
    pub fingerprint: String,
    pub msg_id: Option<String>,
}

/// What a provider could read back of one lane.
#[derive(Debug, Clone, Default)]
pub struct LaneReadBack {
    /// Messages in the provider's display order, oldest first.
    pub messages: Vec<ReadBack>,
    /// Messages older than this (Unix ms) cannot be read back at all.
    pub readable_from_ms: Option<i64>,
}

/// A chat service chatferry imports into.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Sends one frozen request body.
    async fn send(&self, job: &SendJob<'_>) -> Outcome;

    /// Decides whether an in-doubt job was applied. The default resends,
    /// which is right only for providers that deduplicate.
    async fn reconcile(&self, _job: &SendJob<'_>) -> Reconciled {
        Reconciled::NotApplied
    }

    /// Whether an in-doubt job must wait `worker.reconcile_settle_secs`
    /// before its reconcile: true for a provider without dedup, where a
    /// late landing read as "not applied" would be stored twice.
    fn reconcile_settles(&self) -> bool {
        false
    }

    /// Whether the provider places each message by its own fields (time,
    /// then sequence) whatever order the calls arrive in, and deduplicates
    /// resends: then a lane's live messages may pass its history (issue
    /// 16) and a lane may keep several calls in flight (issue 14). False
    /// keeps the lane's send-time order, one call at a time.
    fn orders_by_time(&self) -> bool {
        false
    }

    /// Takes what `chatferry probe` measured for this target (see
    /// [`crate::probe`]); the default ignores it.
    fn apply_findings(&self, _findings: &crate::probe::Findings) {}

    /// Measures what the provider's documents leave open, with two
    /// dedicated users (`chatferry probe`).
    async fn probe(&self, _users: [&str; 2]) -> Result<crate::probe::Findings, ProviderError> {
        Err(ProviderError::ProbeUnavailable)
    }

    /// Registers users with the provider, within its rate limits.
    /// Registering a user who exists already counts as success, so a
    /// registration can be re-run.
    async fn register_users(&self, users: &[UserProfile]) -> Result<Registered, ProviderError>;

    /// The content fingerprint of a frozen body, as [`ReadBack`] has it.
    fn fingerprint(&self, body: &str) -> Option<String>;

    /// Reads a lane back from the provider (`verify`), oldest first.
    async fn read_back(&self, lane: &LaneKey) -> Result<LaneReadBack, ProviderError>;

    /// The provider's own buckets (query, registration APIs), so the worker
    /// can give them the same replica share as the send bucket.
    fn buckets(&self) -> Vec<&crate::ratelimit::Bucket> {
        Vec::new()
    }
}

/// Bounds `ensure_users` / `ensure_accounts`: a send refused because a
/// user is missing registers that user once; if a request sent *after*
/// that registration completed is refused the same way, registering again
/// cannot help, and the job fails for good with a reason that says so. A
/// refusal of a request that left before the registration completed is
/// simply retried, so concurrent lanes of the same users do not fail.
#[derive(Debug, Default)]
pub(crate) struct EnsureUsers {
    registered_at: parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl EnsureUsers {
    /// The outcome of a send of `users`' message (started at `sent_at`)
    /// refused with user-missing `code`; `register` registers them.
    pub(crate) async fn on_missing<F, Fut>(
        &self,
        code: i64,
        users: &[String],
        sent_at: std::time::Instant,
        register: F,
    ) -> Outcome
    where
        F: FnOnce(Vec<UserProfile>) -> Fut,
        Fut: std::future::Future<Output = Result<Registered, ProviderError>>,
    {
        let (fresh, stale) = {
            let map = self.registered_at.lock();
            let fresh: Vec<String> = users.iter().filter(|u| !map.contains_key(*u)).cloned().collect();
            let stale = users.iter().all(|u| map.get(u).is_some_and(|t| *t <= sent_at));
            (fresh, stale)
        };
        if fresh.is_empty() {
            return if stale {
                Outcome::Permanent {
                    code: Some(code),
                    reason: format!(
                        "users {users:?} are still missing although chatferry registered them before \
                         this send; check that these ids can be registered (`chatferry accounts import`), \
                         then `chatferry retry`"
                    ),
                }
            } else {
                Outcome::RetryLater {
                    code: Some(code),
                    reason: "users were missing; they were registered meanwhile".into(),
                    delay: Some(Duration::ZERO),
                    throttled: false,
                }
            };
        }
        let result = register(fresh.iter().map(UserProfile::bare).collect()).await;
        if let Ok(r) = &result {
            let now = std::time::Instant::now();
            let mut map = self.registered_at.lock();
            for u in fresh.iter().filter(|u| !r.failed.iter().any(|(f, _)| f == *u)) {
                map.insert(u.clone(), now);
            }
        }
        after_registration(code, result)
    }
}

/// The outcome of a send refused for missing users, once registering them
/// was tried: retry at once if it worked.
fn after_registration(code: i64, result: Result<Registered, ProviderError>) -> Outcome {
    match result {
        Ok(r) if r.failed.is_empty() => Outcome::RetryLater {
            code: Some(code),
            reason: "users were missing; registered them".into(),
            delay: Some(Duration::ZERO),
            throttled: false,
        },
        Ok(r) => Outcome::Permanent {
            code: Some(code),
            reason: format!("cannot register users: {:?}", r.failed),
        },
        Err(e) => Outcome::RetryLater {
            code: Some(code),
            reason: format!("users missing and registering failed: {e}"),
            delay: None,
            throttled: false,
        },
    }
}

/// One job the loader derives from an input message.
#[derive(Debug, Clone)]
pub struct PlannedJob {
    /// The lane's [`LaneKey`], as stored.
    pub lane_key: String,
    /// The conversation's [`LaneKey::conversation`], as stored.
    pub conversation: String,
    pub view_user: Option<String>,
    pub body: String,
}

/// Per-load facts a planner needs besides the message.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext {
    /// Wall clock at load, Unix ms (the ZIM window is relative to it).
    pub now_ms: i64,
    /// Position among same-millisecond messages of the conversation, in
    /// input order (Tencent folds it into MsgSeq).
    pub same_ms_index: u32,
    /// The message goes to a live batch (the cut-over): Tencent imports
    /// it with `SyncFromOldSystem` 5 whatever the target's `sync_mode`.
    pub live: bool,
}

/// Turns one input message into the provider calls it needs, or says why
/// it cannot be sent.
pub fn plan(
    target: &TargetConfig,
    msg: &InputMessage,
    ctx: PlanContext,
) -> Result<Vec<PlannedJob>, PlanError> {
    match target {
        TargetConfig::Zim(z) => zim::body::plan(z, msg, ctx),
        TargetConfig::Tencent(t) => tencent::body::plan(t, msg, ctx),
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Builds the provider for each configured target.
pub fn build_all(config: &Config) -> anyhow::Result<Vec<(String, Arc<dyn Provider>)>> {
    let client = http::client(Duration::from_millis(config.worker.request_timeout_ms))?;
    let skew = Duration::from_secs(config.worker.reconcile_skew_secs);
    let mut out: Vec<(String, Arc<dyn Provider>)> = Vec::new();
    for (name, t) in &config.targets {
        let p: Arc<dyn Provider> = match t {
            TargetConfig::Zim(z) => Arc::new(zim::ZimClient::new(name, z, client.clone(), skew)?),
            TargetConfig::Tencent(tc) => Arc::new(tencent::TencentClient::new(name, tc, client.clone())?),
        };
        out.push((name.clone(), p));
    }
    Ok(out)
}

/// The class of `code` in a provider's code lists: that of the first list
/// holding it.
pub(crate) fn class_in<C: Copy>(code: i64, lists: &[(&[i64], C)]) -> Option<C> {
    lists
        .iter()
        .find(|(codes, _)| codes.contains(&code))
        .map(|(_, class)| *class)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    /// A user-missing answer registers once; a later send refused the same
    /// way fails for good instead of registering forever; a send that left
    /// before the registration finished is retried without registering.
    #[tokio::test]
    async fn ensure_users_registers_once_and_never_loops() {
        let ensure = EnsureUsers::default();
        let calls = AtomicUsize::new(0);
        let register = |u: Vec<UserProfile>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(Registered {
                    ok: u.len(),
                    failed: vec![],
                })
            }
        };
        let users = ["a".to_string(), "b".to_string()];
        let before = Instant::now();
        let o = ensure.on_missing(7, &users, before, register).await;
        assert!(
            matches!(o, Outcome::RetryLater { delay: Some(d), .. } if d.is_zero()),
            "{o:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another lane's send that left before the registration finished.
        let o = ensure.on_missing(7, &users, before, register).await;
        assert!(matches!(o, Outcome::RetryLater { .. }), "{o:?}");
        // A send after the registration is still refused: give up.
        let after = Instant::now();
        let o = ensure.on_missing(7, &users, after, register).await;
        match o {
            Outcome::Permanent {
                code: Some(7),
                reason,
            } => {
                assert!(reason.contains("still missing"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "registered once");
    }
}
