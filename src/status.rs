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
            suffix(r)
        ));
    }
    out
}

/// Paused, live (with its delivery figures) and priority, after the row.
fn suffix(r: &BatchStatus) -> String {
    let mut s = String::new();
    if r.paused {
        s.push_str("  (paused)");
    }
    if let Some(l) = &r.live {
        let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}s"));
        s.push_str(&format!(
            "  (live: {} received, {} delivered, latency p50 {} p99 {}, oldest undelivered {})",
            l.received,
            l.delivered,
            secs(l.latency_p50_secs),
            secs(l.latency_p99_secs),
            secs(l.oldest_undelivered_secs)
        ));
    } else if r.mode == "live" {
        s.push_str("  (live)");
    }
    if r.priority != 0 {
        s.push_str(&format!("  (priority {})", r.priority));
    }
    s
}
