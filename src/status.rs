//! `chatferry status` as a table for people.

use crate::store::BatchStatus;

/// The `status --json` object (`/api/status` extends it).
pub fn json(rows: &[BatchStatus]) -> serde_json::Value {
    serde_json::json!({ "batches": rows })
}

/// Renders batches as an aligned table.
pub fn render(rows: &[BatchStatus]) -> String {
    if rows.is_empty() {
        return "no batches loaded yet\n".into();
    }
    let mut out = format!(
        "{:<20} {:<12} {:>10} {:>10} {:>9} {:>10} {:>8} {:>8} {:>9} {:>10}\n",
        "BATCH", "TARGET", "TOTAL", "PENDING", "IN_FLIGHT", "DONE", "FAILED", "SKIPPED", "JOBS/S", "ETA"
    );
    for r in rows {
        let eta = match r.eta_secs {
            Some(s) => format!("{}m{:02}s", s / 60, s % 60),
            None => "-".into(),
        };
        out.push_str(&format!(
            "{:<20} {:<12} {:>10} {:>10} {:>9} {:>10} {:>8} {:>8} {:>9.1} {:>10}{}\n",
            r.batch,
            r.target,
            r.total,
            r.pending,
            r.in_flight,
            r.done,
            r.failed,
            r.skipped,
            r.jobs_per_sec,
            eta,
            if r.paused { "  (paused)" } else { "" }
        ));
    }
    out
}
