//! `chatferry verify`: reads every lane of a batch back from its provider
//! and compares it with what chatferry recorded as done.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::lane_key::LaneKey;
use crate::providers::Provider;
use crate::store::Store;

/// The comparison of one lane.
#[derive(Debug, Clone, Serialize)]
pub struct LaneReport {
    pub target: String,
    /// `user1 / user2` (Tencent) or `view / peer` (ZIM).
    pub lane: String,
    pub expected: usize,
    pub found: usize,
    /// Source ids of done messages the provider does not show.
    pub missing: Vec<String>,
    /// Second copies of recorded messages: a message stored twice.
    pub extra: usize,
    /// Messages in the conversation that this batch did not send (users
    /// chatting on the provider during the backfill, other batches): shown,
    /// not a problem.
    pub others: usize,
    /// Recorded messages shown out of their source order.
    pub out_of_order: usize,
    /// Done messages too old for the provider to read back.
    pub unverifiable: usize,
    /// Set when the lane could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LaneReport {
    /// A lane not read yet.
    fn new(target: String, key: &LaneKey) -> LaneReport {
        LaneReport {
            target,
            lane: key.to_string(),
            expected: 0,
            found: 0,
            missing: vec![],
            extra: 0,
            others: 0,
            out_of_order: 0,
            unverifiable: 0,
            error: None,
        }
    }

    /// Takes in what [`compare`] found; what is shown but neither matched
    /// nor a copy was written by someone else.
    fn record(&mut self, c: Comparison) {
        let matched = self.expected - c.unverifiable - c.missing.len();
        self.others = self.found.saturating_sub(matched + c.extra);
        self.missing = c.missing;
        self.extra = c.extra;
        self.out_of_order = c.out_of_order;
        self.unverifiable = c.unverifiable;
    }

    /// True when the lane matches exactly.
    pub fn clean(&self) -> bool {
        self.missing.is_empty() && self.extra == 0 && self.out_of_order == 0 && self.error.is_none()
    }
}

/// The whole verification.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub batch: String,
    pub lanes: usize,
    pub clean_lanes: usize,
    pub missing: usize,
    pub extra: usize,
    pub out_of_order: usize,
    pub unverifiable: usize,
    pub unreadable_lanes: usize,
    /// Only lanes with a problem.
    pub problems: Vec<LaneReport>,
}

impl Report {
    /// True when every lane matched.
    pub fn clean(&self) -> bool {
        self.clean_lanes == self.lanes
    }

    /// The text `chatferry verify` prints: a line per lane with a problem,
    /// then the totals.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for l in &self.problems {
            out += &format!(
                "{} {}: expected {}, found {}, missing {}, extra {}, out of order {}{}\n",
                l.target,
                l.lane,
                l.expected,
                l.found,
                l.missing.len(),
                l.extra,
                l.out_of_order,
                l.error
                    .as_deref()
                    .map(|e| format!(", unreadable: {e}"))
                    .unwrap_or_default()
            );
        }
        out += &format!(
            "batch {}: {} of {} lanes match; missing {}, extra {}, out of order {}; \
             {} messages older than the provider's read-back window were not checked\n",
            self.batch,
            self.clean_lanes,
            self.lanes,
            self.missing,
            self.extra,
            self.out_of_order,
            self.unverifiable
        );
        out
    }

    /// The totals over `lanes`, keeping only the lanes with a problem.
    fn summarize(batch: &str, lanes: Vec<LaneReport>) -> Report {
        let mut report = Report {
            batch: batch.to_string(),
            lanes: lanes.len(),
            clean_lanes: 0,
            missing: 0,
            extra: 0,
            out_of_order: 0,
            unverifiable: 0,
            unreadable_lanes: 0,
            problems: vec![],
        };
        for r in lanes {
            report.missing += r.missing.len();
            report.extra += r.extra;
            report.out_of_order += r.out_of_order;
            report.unverifiable += r.unverifiable;
            report.unreadable_lanes += r.error.is_some() as usize;
            if r.clean() {
                report.clean_lanes += 1;
            } else {
                report.problems.push(r);
            }
        }
        report.problems.sort_by(|a, b| a.lane.cmp(&b.lane));
        report
    }
}

/// One message chatferry recorded as done in a lane.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The source id from the input.
    pub source_id: String,
    /// The message's source time, Unix ms.
    pub sent_at_ms: i64,
    /// The provider's fingerprint of the request body.
    pub fingerprint: String,
}

/// What [`compare`] finds in one lane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Source ids of sent messages the provider does not show.
    pub missing: Vec<String>,
    /// Second copies of sent messages.
    pub extra: usize,
    /// Sent messages shown out of their source order.
    pub out_of_order: usize,
    /// Sent messages older than the provider's read-back window.
    pub unverifiable: usize,
}

/// Compares what was sent (in lane order) with the fingerprints the
/// provider shows; messages sent before `readable_from_ms` cannot be
/// checked.
pub fn compare(sent: &[Sent], found: &[String], readable_from_ms: Option<i64>) -> Comparison {
    let (want, unverifiable): (Vec<&Sent>, Vec<&Sent>) = sent
        .iter()
        .partition(|s| !readable_from_ms.is_some_and(|from| s.sent_at_ms < from));
    let mut have: HashMap<&str, usize> = HashMap::new();
    for f in found {
        *have.entry(f.as_str()).or_default() += 1;
    }
    let mut missing = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, s) in want.iter().enumerate() {
        index.entry(s.fingerprint.as_str()).or_insert(i);
        match have.get_mut(s.fingerprint.as_str()) {
            Some(n) if *n > 0 => *n -= 1,
            _ => missing.push(s.source_id.clone()),
        }
    }
    // Only copies of what we sent count: anything else in the view was
    // written by someone else (users already chatting on the provider).
    let extra: usize = have
        .iter()
        .filter(|(fp, _)| index.contains_key(*fp))
        .map(|(_, n)| n)
        .sum();
    Comparison {
        missing,
        extra,
        out_of_order: out_of_order(found, &index),
        unverifiable: unverifiable.len(),
    }
}

/// Counts the first copies in `found` that come before one sent earlier
/// (`index`: fingerprint to its position in the lane).
fn out_of_order(found: &[String], index: &HashMap<&str, usize>) -> usize {
    let mut out_of_order = 0;
    let mut last: Option<usize> = None;
    let mut seen = HashSet::new();
    for f in found {
        let Some(&i) = index.get(f.as_str()) else { continue };
        if !seen.insert(f.as_str()) {
            continue;
        }
        if last.is_some_and(|l| i < l) {
            out_of_order += 1;
        }
        last = Some(last.map_or(i, |l| l.max(i)));
    }
    out_of_order
}

/// Verifies a batch: every lane read back, 16 at a time.
pub async fn run(
    store: &Store,
    providers: &HashMap<String, Arc<dyn Provider>>,
    batch: &str,
) -> anyhow::Result<Report> {
    let lanes = store.batch_lanes(batch).await?;
    let reports: Vec<LaneReport> = futures::stream::iter(lanes)
        .map(|lane| async move {
            let mut r = LaneReport::new(lane.target, &lane.lane_key);
            if let Err(e) = verify_lane(store, providers, lane.lane_id, &lane.lane_key, &mut r).await {
                r.error = Some(e);
            }
            r
        })
        .buffer_unordered(16)
        .collect()
        .await;
    Ok(Report::summarize(batch, reports))
}

/// Reads one lane back and fills in `r`; the error says why the lane
/// could not be read.
async fn verify_lane(
    store: &Store,
    providers: &HashMap<String, Arc<dyn Provider>>,
    lane_id: i64,
    key: &LaneKey,
    r: &mut LaneReport,
) -> Result<(), String> {
    let Some(p) = providers.get(&r.target) else {
        return Err(format!("target {} is not configured", r.target));
    };
    let sent = sent_in_lane(store, p.as_ref(), lane_id)
        .await
        .map_err(|e| format!("cannot read the lane: {e}"))?;
    r.expected = sent.len();
    let back = p.read_back(key).await.map_err(|e| e.to_string())?;
    let found: Vec<String> = back.messages.into_iter().map(|m| m.fingerprint).collect();
    r.found = found.len();
    r.record(compare(&sent, &found, back.readable_from_ms));
    Ok(())
}

/// The lane's done messages, fingerprinted as the provider fingerprints
/// what it shows.
async fn sent_in_lane(store: &Store, p: &dyn Provider, lane_id: i64) -> Result<Vec<Sent>, sqlx::Error> {
    let done = store.lane_done(lane_id).await?;
    Ok(done
        .into_iter()
        .map(|d| Sent {
            fingerprint: p.fingerprint(&d.body).unwrap_or_default(),
            source_id: d.source_id,
            sent_at_ms: d.sent_at_ms,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{compare, Comparison, Sent};

    fn e(items: &[(&str, i64)]) -> Vec<Sent> {
        items
            .iter()
            .map(|(f, t)| Sent {
                source_id: format!("id-{f}"),
                sent_at_ms: *t,
                fingerprint: f.to_string(),
            })
            .collect()
    }

    #[test]
    fn finds_missing_extra_and_out_of_order() {
        let exp = e(&[("a", 10), ("b", 20), ("c", 30), ("d", 40)]);
        let found: Vec<String> = ["a", "c", "b", "c", "x"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            compare(&exp, &found, None),
            Comparison {
                missing: vec!["id-d".into()],
                extra: 1,        // the second "c"; "x" is someone else's message
                out_of_order: 1, // "b" after "c"
                unverifiable: 0,
            }
        );
        let c = compare(&exp, &["c".into(), "d".into()], Some(25));
        assert!(c.missing.is_empty());
        assert_eq!(c.unverifiable, 2);
    }
}
