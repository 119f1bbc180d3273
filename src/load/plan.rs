//! `chatferry plan`: a dry run of `load`.
//!
//! It reads, checks and plans every line through the loader's own scan
//! (`super::scan`), so what it accepts is exactly what `load` would
//! accept, but it keeps only counts: it writes nothing and needs no
//! database. Operators run it before a migration to learn how much will be
//! refused, how many calls it takes and how long the sends will last.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::input::InputMessage;
use super::{scan, LoadSummary, Sink};
use crate::config::TargetConfig;
use crate::providers::PlannedJob;

/// Examples kept per rejection reason.
const EXAMPLES_PER_REASON: usize = 3;
/// Conversations listed as the largest.
const LARGEST: usize = 10;
/// Users registered per call (ZIM `UserRegister`, Tencent `multiaccount_import`).
const USERS_PER_CALL: u64 = 100;
/// Bytes a job row takes besides its body and source id: the tuple header
/// and fixed-width columns, the primary key, the unique (lane, source id)
/// index and the per-status indexes, plus page fill. Calibrated on the
/// demo's data (scripts/demo, 2,000 messages, both targets: 5,937 jobs,
/// 2.85 MB measured with pg_total_relation_size on PostgreSQL 15, 2.87 MB
/// estimated); an estimate, not a promise for every server.
const ROW_OVERHEAD_BYTES: u64 = 280;

/// One line `plan` refused, with where it is.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub file: String,
    pub line: u64,
    pub reason: String,
}

/// Refused lines sharing a reason (numbers and quoted values folded).
#[derive(Debug, Clone, Serialize)]
pub struct ReasonCount {
    pub reason: String,
    pub count: u64,
    pub examples: Vec<Example>,
}

/// A conversation and how many messages it carries.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationSize {
    pub users: [String; 2],
    pub messages: u64,
}

/// What `plan` found.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub target: String,
    pub provider: &'static str,
    pub lines: u64,
    pub blank: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub rejected_by_reason: Vec<ReasonCount>,
    /// Provider calls the accepted lines make (one per job).
    pub jobs: u64,
    pub conversations: u64,
    /// Lanes: ZIM views (user, peer) or Tencent conversations.
    pub views: u64,
    pub largest_conversations: Vec<ConversationSize>,
    pub users: u64,
    /// Calls `accounts import` makes to register them.
    pub register_calls: u64,
    /// Estimated bytes of the job table (rows and indexes).
    pub job_table_bytes: u64,
    pub replicas: u32,
    /// The send API's configured limit for the whole app.
    pub rate_per_sec: f64,
    /// The calls per second all replicas together aim for.
    pub effective_rate_per_sec: f64,
    /// Time the sends take at that rate, seconds.
    pub send_secs: f64,
    /// Time `accounts import` takes at the register API's rate, seconds.
    pub register_secs: f64,
    /// Jobs of the longest lane: a lane sends one call at a time, so it
    /// needs at least this many round trips however high the rate.
    pub longest_view_jobs: u64,
}

#[derive(Default)]
struct Tally {
    reasons: BTreeMap<String, ReasonCount>,
    conversations: HashMap<String, u64>,
    views: HashMap<String, u64>,
    users: HashSet<String>,
    table_bytes: u64,
}

impl Sink for Tally {
    fn accept(
        &mut self,
        m: &InputMessage,
        jobs: Vec<PlannedJob>,
        _seq: i64,
        _at: &super::At<'_>,
    ) -> anyhow::Result<()> {
        let conv = crate::lane_key::LaneKey::conversation(&m.from, &m.to)
            .as_str()
            .to_owned();
        *self.conversations.entry(conv).or_insert(0) += 1;
        for j in &jobs {
            *self.views.entry(j.lane_key.clone()).or_insert(0) += 1;
            self.table_bytes += (j.body.len() + 2 * m.id.len()) as u64 + ROW_OVERHEAD_BYTES;
        }
        for u in [&m.from, &m.to] {
            if !self.users.contains(u) {
                self.users.insert(u.clone());
            }
        }
        Ok(())
    }

    fn reject(&mut self, file: &str, line: u64, reason: &str, _raw: &[u8]) -> anyhow::Result<()> {
        let key = reason_class(reason);
        let e = self.reasons.entry(key.clone()).or_insert_with(|| ReasonCount {
            reason: key,
            count: 0,
            examples: Vec::new(),
        });
        e.count += 1;
        if e.examples.len() < EXAMPLES_PER_REASON {
            e.examples.push(Example {
                file: file.to_string(),
                line,
                reason: reason.to_string(),
            });
        }
        Ok(())
    }
}

/// Folds a reason's specifics (numbers, quoted values) so that lines
/// refused for the same rule count together.
pub fn reason_class(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut chars = reason.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars.peek().is_some_and(|d| d.is_ascii_digit() || *d == '.') {
                chars.next();
            }
            out.push('N');
        } else if c == '"' {
            for d in chars.by_ref() {
                if d == '"' {
                    break;
                }
            }
            out.push_str("\"…\"");
        } else {
            out.push(c);
        }
    }
    out
}

/// Options of one `plan` call.
pub struct PlanOptions<'a> {
    pub target_name: &'a str,
    pub target: &'a TargetConfig,
    pub files: &'a [String],
    pub now_ms: i64,
    pub max_line: usize,
    pub replicas: u32,
}

/// Scans the input like `load` and reports; touches no database.
pub fn run(o: PlanOptions<'_>) -> anyhow::Result<PlanReport> {
    let mut tally = Tally::default();
    let summary = scan(o.files, o.target, o.now_ms, o.max_line, true, &mut tally)?;
    Ok(report(&o, &summary, tally))
}

fn report(o: &PlanOptions<'_>, s: &LoadSummary, t: Tally) -> PlanReport {
    let replicas = o.replicas.max(1);
    let rate = o.target.rate_per_sec();
    let effective =
        crate::ratelimit::share(rate, replicas, 1.0, crate::ratelimit::HEADROOM) * f64::from(replicas);
    let register_rate = match o.target {
        TargetConfig::Zim(z) => z.register_rate_per_sec,
        TargetConfig::Tencent(t) => t.account_rate_per_sec,
    };
    let users = t.users.len() as u64;
    let register_calls = users.div_ceil(USERS_PER_CALL);
    let mut reasons: Vec<ReasonCount> = t.reasons.into_values().collect();
    reasons.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    let mut largest: Vec<(String, u64)> = t.conversations.iter().map(|(c, n)| (c.clone(), *n)).collect();
    largest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    largest.truncate(LARGEST);
    PlanReport {
        target: o.target_name.to_string(),
        provider: o.target.kind(),
        lines: s.lines,
        blank: s.blank,
        accepted: s.accepted,
        rejected: s.rejected,
        rejected_by_reason: reasons,
        jobs: s.jobs_planned,
        conversations: t.conversations.len() as u64,
        views: t.views.len() as u64,
        largest_conversations: largest
            .into_iter()
            .map(|(c, n)| {
                let (a, b) = c.split_once('\u{1f}').unwrap_or((&c, ""));
                ConversationSize {
                    users: [a.to_string(), b.to_string()],
                    messages: n,
                }
            })
            .collect(),
        users,
        register_calls,
        job_table_bytes: t.table_bytes,
        replicas,
        rate_per_sec: rate,
        effective_rate_per_sec: effective,
        send_secs: s.jobs_planned as f64 / effective,
        register_secs: register_calls as f64 / (register_rate * crate::ratelimit::HEADROOM),
        longest_view_jobs: t.views.values().copied().max().unwrap_or(0),
    }
}

/// A duration for people: `1h02m03s`, `4m05s`, `6.2s`.
pub fn human_secs(secs: f64) -> String {
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    match s / 3600 {
        0 => format!("{}m{:02}s", s / 60, s % 60),
        h => format!("{h}h{:02}m{:02}s", (s % 3600) / 60, s % 60),
    }
}

/// Bytes for people: `812 B`, `1.4 MB`.
pub fn human_bytes(b: u64) -> String {
    let mut v = b as f64;
    for unit in ["B", "kB", "MB", "GB"] {
        if v < 1000.0 {
            return if unit == "B" {
                format!("{b} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1000.0;
    }
    format!("{v:.1} TB")
}

/// The report as text.
pub fn render(r: &PlanReport) -> String {
    let mut out = format!(
        "plan for target {} ({}): {} lines, {} accepted, {} rejected, {} blank\n",
        r.target, r.provider, r.lines, r.accepted, r.rejected, r.blank
    );
    if !r.rejected_by_reason.is_empty() {
        out.push_str("rejected, by reason:\n");
        for g in &r.rejected_by_reason {
            out.push_str(&format!("  {:>8}  {}\n", g.count, g.reason));
            for e in &g.examples {
                out.push_str(&format!("            {} line {}: {}\n", e.file, e.line, e.reason));
            }
        }
    }
    out.push_str(&format!(
        "jobs (provider calls): {}\nconversations: {}; views (lanes): {}; longest lane: {} jobs\n",
        r.jobs, r.conversations, r.views, r.longest_view_jobs
    ));
    if !r.largest_conversations.is_empty() {
        out.push_str("largest conversations:\n");
        for c in &r.largest_conversations {
            out.push_str(&format!(
                "  {:>8}  {} <-> {}\n",
                c.messages, c.users[0], c.users[1]
            ));
        }
    }
    out.push_str(&format!(
        "users to register: {} ({} call{}, {} at the register rate)\n\
         job table: about {}\n\
         send time: {} at {:.1} calls/s ({} of {} calls/s with {} replica{})\n",
        r.users,
        r.register_calls,
        if r.register_calls == 1 { "" } else { "s" },
        human_secs(r.register_secs),
        human_bytes(r.job_table_bytes),
        human_secs(r.send_secs),
        r.effective_rate_per_sec,
        if r.replicas == 1 {
            "the share"
        } else {
            "the shares"
        },
        r.rate_per_sec,
        r.replicas,
        if r.replicas == 1 { "" } else { "s" },
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fold_numbers_and_quoted_values() {
        assert_eq!(
            reason_class("url is 612 bytes; ZIM media URLs are at most 500"),
            "url is N bytes; ZIM media URLs are at most N"
        );
        assert_eq!(
            reason_class("user id \"a b\" has a space"),
            "user id \"…\" has a space"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_secs(6.24), "6.2s");
        assert_eq!(human_secs(245.0), "4m05s");
        assert_eq!(human_secs(3723.0), "1h02m03s");
        assert_eq!(human_bytes(812), "812 B");
        assert_eq!(human_bytes(1_400_000), "1.4 MB");
    }
}
