//! What can go wrong on the provider side, as types: [`ProviderError`]
//! for a call (registration, read-back, probe) and [`PlanError`] for a
//! message that cannot become a provider request at all.
//!
//! Both display the reason operators and tests read; the loader records a
//! [`PlanError`]'s text as the refused line's reason.

use super::Outcome;

/// Why a provider call did not give what was asked of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The answer (or the transport) ended the call, after any retries.
    #[error("{0}")]
    Call(Outcome),
    /// A lane key that does not name two users of this provider.
    #[error("not a {0} lane")]
    NotALane(&'static str),
    /// This provider has no `chatferry probe`.
    #[error("probe is not available for this provider")]
    ProbeUnavailable,
    /// The provider refused the probe's dedicated users; `what` says what
    /// was tried ("register the probe users").
    #[error("cannot {what}: {failed:?}")]
    ProbeUsers {
        what: &'static str,
        failed: Vec<(String, String)>,
    },
    /// A probe import was not accepted.
    #[error("probe import of type {msg_type} failed: {outcome}")]
    ProbeImport { msg_type: i64, outcome: Outcome },
    /// Only some probe messages became readable in time.
    #[error("only {found} of {sent} probe messages were readable after {secs} s")]
    ProbePartlyVisible { found: usize, sent: usize, secs: u64 },
    /// The probe messages did not become readable in time.
    #[error("the probe messages were not readable after {secs} s")]
    ProbeNotVisible { secs: u64 },
}

impl From<Outcome> for ProviderError {
    fn from(o: Outcome) -> Self {
        ProviderError::Call(o)
    }
}

/// Why a message cannot be planned for a target. Each text names the
/// field and the rule, so the line can be fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A field the message's type needs is absent.
    #[error("{what} needs the field `{field}`")]
    Missing { what: String, field: String },
    /// A field that is there but empty.
    #[error("{field} is empty")]
    Empty { field: String },
    /// A value longer than the provider takes; `of` names the kind of
    /// value ("ZIM media URLs").
    #[error("{field} is {len} bytes; {of} are at most {max}")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
        of: &'static str,
    },
    /// A `sent_at_ms` after the load's clock.
    #[error("sent_at_ms {0} is in the future")]
    InFuture(i64),
    /// A native body that breaks the provider's element rules.
    #[error("native: {0}")]
    Native(Box<PlanError>),
    /// The body could not be encoded as JSON.
    #[error("cannot encode body: {0}")]
    Encode(String),
    /// Any other documented rule the message breaks.
    #[error("{0}")]
    Invalid(String),
}

impl PlanError {
    /// An empty `field`.
    pub(crate) fn empty(field: impl Into<String>) -> Self {
        PlanError::Empty { field: field.into() }
    }

    /// `value` of `field` when it is longer than `max` bytes of `of`.
    pub(crate) fn check_len(
        field: impl Into<String>,
        value: &str,
        max: usize,
        of: &'static str,
    ) -> Result<(), Self> {
        if value.len() > max {
            return Err(PlanError::TooLong {
                field: field.into(),
                len: value.len(),
                max,
                of,
            });
        }
        Ok(())
    }
}

impl From<String> for PlanError {
    fn from(reason: String) -> Self {
        PlanError::Invalid(reason)
    }
}

impl From<&str> for PlanError {
    fn from(reason: &str) -> Self {
        PlanError::Invalid(reason.to_string())
    }
}
