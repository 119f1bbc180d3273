//! `chatferry verify`: reads every lane of a batch back from its provider
//! and compares it with what chatferry recorded as done.

use std::collections::HashMap;

use futures::StreamExt;
use serde::Serialize;

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
}

/// Compares expected fingerprints (in lane order, with their source ids
/// and times) with what the provider shows.
pub fn compare(
    expected: &[(String, i64, String)],
    found: &[String],
    readable_from_ms: Option<i64>,
) -> (Vec<String>, usize, usize, usize) {
    let mut unverifiable = 0;
    let mut want: Vec<(&str, &str)> = Vec::with_capacity(expected.len());
    for (id, at, fp) in expected {
        if readable_from_ms.is_some_and(|from| *at < from) {
            unverifiable += 1;
        } else {
            want.push((id.as_str(), fp.as_str()));
        }
    }
    let mut have: HashMap<&str, usize> = HashMap::new();
    for f in found {
        *have.entry(f.as_str()).or_default() += 1;
    }
    let mut missing = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, (id, fp)) in want.iter().enumerate() {
        index.entry(fp).or_insert(i);
        match have.get_mut(fp) {
            Some(n) if *n > 0 => *n -= 1,
            _ => missing.push(id.to_string()),
        }
    }
    // Only copies of what we sent count: anything else in the view was
    // written by someone else (users already chatting on the provider).
    let extra: usize = have
        .iter()
        .filter(|(fp, _)| index.contains_key(*fp))
        .map(|(_, n)| n)
        .sum();
    let mut out_of_order = 0;
    let mut last: Option<usize> = None;
    let mut seen = std::collections::HashSet::new();
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
    (missing, extra, out_of_order, unverifiable)
}

/// Verifies a batch.
pub async fn run(
    store: &Store,
    providers: &HashMap<String, std::sync::Arc<dyn Provider>>,
    batch: &str,
) -> anyhow::Result<Report> {
    let lanes = store.batch_lanes(batch).await?;
    let reports: Vec<LaneReport> = futures::stream::iter(lanes)
        .map(|(lane_id, target, key)| async move {
            let shown = key.replace('\u{1f}', " / ");
            let mut r = LaneReport {
                target: target.clone(),
                lane: shown,
                expected: 0,
                found: 0,
                missing: vec![],
                extra: 0,
                others: 0,
                out_of_order: 0,
                unverifiable: 0,
                error: None,
            };
            let Some(p) = providers.get(&target) else {
                r.error = Some(format!("target {target} is not configured"));
                return r;
            };
            let done = match store.lane_done(lane_id).await {
                Ok(d) => d,
                Err(e) => {
                    r.error = Some(format!("cannot read the lane: {e}"));
                    return r;
                }
            };
            let expected: Vec<(String, i64, String)> = done
                .into_iter()
                .map(|(id, at, body)| {
                    let fp = p.fingerprint(&body).unwrap_or_default();
                    (id, at, fp)
                })
                .collect();
            r.expected = expected.len();
            match p
                .read_back(&crate::lane_key::LaneKey::from_stored(key.as_str()))
                .await
            {
                Ok(back) => {
                    let found: Vec<String> = back.messages.into_iter().map(|m| m.fingerprint).collect();
                    r.found = found.len();
                    let (missing, extra, ooo, unv) = compare(&expected, &found, back.readable_from_ms);
                    let matched = expected.len() - unv - missing.len();
                    r.others = found.len().saturating_sub(matched + extra);
                    r.missing = missing;
                    r.extra = extra;
                    r.out_of_order = ooo;
                    r.unverifiable = unv;
                }
                Err(e) => r.error = Some(e.to_string()),
            }
            r
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut report = Report {
        batch: batch.to_string(),
        lanes: reports.len(),
        clean_lanes: 0,
        missing: 0,
        extra: 0,
        out_of_order: 0,
        unverifiable: 0,
        unreadable_lanes: 0,
        problems: vec![],
    };
    for r in reports {
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
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::compare;

    fn e(items: &[(&str, i64)]) -> Vec<(String, i64, String)> {
        items
            .iter()
            .map(|(f, t)| (format!("id-{f}"), *t, f.to_string()))
            .collect()
    }

    #[test]
    fn finds_missing_extra_and_out_of_order() {
        let exp = e(&[("a", 10), ("b", 20), ("c", 30), ("d", 40)]);
        let found: Vec<String> = ["a", "c", "b", "c", "x"].iter().map(|s| s.to_string()).collect();
        let (missing, extra, ooo, unv) = compare(&exp, &found, None);
        assert_eq!(missing, vec!["id-d"]);
        assert_eq!(extra, 1); // the second "c"; "x" is someone else's message
        assert_eq!(ooo, 1); // "b" after "c"
        assert_eq!(unv, 0);
        let (missing, _, _, unv) = compare(&exp, &["c".into(), "d".into()], Some(25));
        assert!(missing.is_empty());
        assert_eq!(unv, 2);
    }
}
