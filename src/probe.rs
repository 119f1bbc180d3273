//! `chatferry probe`: measures, against a real account and before a
//! migration, what the providers' documents leave open, and stores the
//! findings so the worker can use them.
//!
//! ZEGO documents QueryPeerMsg's `MsgTime` as the time the server received
//! the message, and is silent on whether an import echoes
//! `SendMessageTime` there, whether the read-back `MsgId` is the import's,
//! and how long an import takes to become visible. Reconcile is safe either
//! way, but it is faster and stricter when it knows: with an echo confirmed
//! it accepts only an exact time, and a measured visibility delay lengthens
//! the settle time. The probe writes to two dedicated users only.

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::store::Store;

/// Whether a provider's read-back time is the import's send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MsgTimeMode {
    /// `MsgTime` equals the `SendMessageTime` that was imported.
    Echo,
    /// `MsgTime` is the server's receive time.
    Receive,
}

/// What one probe measured. Every field is optional: what could not be
/// measured stays unknown, and the worker then assumes nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Findings {
    /// `zim` or `tencent`.
    pub provider: String,
    /// ZIM: what `MsgTime` reports for an imported message.
    pub msg_time: Option<MsgTimeMode>,
    /// ZIM: whether QueryPeerMsg's `MsgId` equals ImportPeerMsg's.
    pub msg_id_matches: Option<bool>,
    /// Tencent: whether admin_getroammsg returns the imported
    /// (MsgSeq, MsgRandom, MsgTimeStamp) triple.
    pub triple_echoed: Option<bool>,
    /// How long after its answer an import became readable, ms.
    pub visibility_ms: Option<u64>,
    /// One import's round trip, ms.
    pub import_ms: Option<u64>,
    /// The provider's clock minus ours (from its HTTP `Date`), ms.
    pub clock_skew_ms: Option<i64>,
    /// How each probe message came back, one line each.
    pub read_back: Vec<String>,
    /// Anything else worth telling the operator.
    pub notes: Vec<String>,
}

impl Findings {
    /// One line for logs.
    pub fn summary(&self) -> String {
        let show = |o: Option<String>| o.unwrap_or_else(|| "unknown".into());
        format!(
            "msg_time={} msg_id_matches={} triple_echoed={} visibility_ms={} clock_skew_ms={}",
            show(self.msg_time.map(|m| format!("{m:?}").to_lowercase())),
            show(self.msg_id_matches.map(|b| b.to_string())),
            show(self.triple_echoed.map(|b| b.to_string())),
            show(self.visibility_ms.map(|v| v.to_string())),
            show(self.clock_skew_ms.map(|v| v.to_string())),
        )
    }

    /// The human report `chatferry probe` prints.
    pub fn report(&self, target: &str) -> String {
        let mut out = format!("probe of target {target} ({})\n", self.provider);
        let yes_no = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "could not tell",
        };
        if self.provider == "zim" {
            let mode = match self.msg_time {
                Some(MsgTimeMode::Echo) => "echoes SendMessageTime",
                Some(MsgTimeMode::Receive) => "is the server's receive time",
                None => "could not tell",
            };
            out += &format!("  MsgTime of an imported message: {mode}\n");
            out += &format!(
                "  read-back MsgId equals the import's: {}\n",
                yes_no(self.msg_id_matches)
            );
        } else {
            out += &format!("  imported triple read back: {}\n", yes_no(self.triple_echoed));
        }
        let ms = |v: Option<u64>| v.map_or("could not tell".to_string(), |v| format!("{v} ms"));
        out += &format!("  one import took: {}\n", ms(self.import_ms));
        out += &format!("  visible after the answer within: {}\n", ms(self.visibility_ms));
        let skew = self.clock_skew_ms.map_or("could not tell".to_string(), |v| {
            format!("{v:+} ms (theirs minus ours, ±1 s)")
        });
        out += &format!("  clock skew to the server: {skew}\n");
        for line in &self.read_back {
            out += &format!("  read back: {line}\n");
        }
        for note in &self.notes {
            out += &format!("  note: {note}\n");
        }
        out
    }
}

/// Runs `chatferry probe` for one target and stores what it found.
pub async fn run(config: &Config, store: &Store, target: &str, users: [&str; 2]) -> anyhow::Result<Findings> {
    if !config.targets.contains_key(target) {
        anyhow::bail!(
            "no target named {target:?} in the configuration; known: {}",
            config.targets.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    if users[0] == users[1] || users.iter().any(|u| u.is_empty()) {
        anyhow::bail!("--users needs two different user ids, e.g. --users probe-a,probe-b");
    }
    let providers = crate::providers::build_all(config)?;
    let provider = providers
        .into_iter()
        .find(|(name, _)| name == target)
        .map(|(_, p)| p)
        .expect("every configured target has a provider");
    let findings = provider.probe(users).await.map_err(anyhow::Error::msg)?;
    store
        .save_probe_findings(target, &serde_json::to_value(&findings)?)
        .await?;
    Ok(findings)
}

/// The server's clock minus ours, from an answer's `Date` header (whole
/// seconds, so ±1 s).
pub(crate) fn skew_from_date(headers: &reqwest::header::HeaderMap, local_ms: i64) -> Option<i64> {
    let date = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    let theirs = httpdate_secs(date)?;
    Some(theirs * 1000 - local_ms)
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds.
fn httpdate_secs(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, mon, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| x == mon)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, mi, se] = hms.as_slice() else { return None };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_dates() {
        assert_eq!(httpdate_secs("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(
            httpdate_secs("Mon, 30 Nov 2026 00:00:00 GMT"),
            Some(1_795_996_800)
        );
        assert_eq!(httpdate_secs("yesterday"), None);
    }

    #[test]
    fn findings_round_trip_and_tolerate_unknown_fields() {
        let f = Findings {
            provider: "zim".into(),
            msg_time: Some(MsgTimeMode::Receive),
            visibility_ms: Some(40),
            ..Findings::default()
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["msg_time"], "receive");
        let back: Findings = serde_json::from_value(v).unwrap();
        assert_eq!(back, f);
        let older: Findings =
            serde_json::from_value(serde_json::json!({"provider": "zim", "later": 1})).unwrap();
        assert_eq!(older.msg_time, None);
    }
}
