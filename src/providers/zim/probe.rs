//! `chatferry probe` for ZIM: import a text, an image and a custom message
//! with past `SendMessageTime`s into a dedicated user's view, read them
//! back with QueryPeerMsg, and report what the server did.
//!
//! Bodies follow ZEGO's zim-server pages `messaging/import-one-on-one-messages`
//! (ImportPeerMsg) and `messaging/messagebody-introduction.md` (the image
//! `Message` JSON: `FileName`, `Uid`, `Origin{Url,Width,Height}`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{classify_answer, ZimClient};
use crate::probe::{Findings, MsgTimeMode};
use crate::providers::{id_field, int_field, unix_ms, Outcome, ProviderError, UserProfile};

/// How long the probe waits for its imports to become readable.
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);

/// One probe import: what was sent and what the server answered.
struct Sent {
    msg_type: i64,
    marker: String,
    send_time: i64,
    msg_id: Option<String>,
}

pub(super) async fn run(c: &ZimClient, users: [&str; 2]) -> Result<Findings, ProviderError> {
    let [a, b] = users;
    let reg = c.register(&[UserProfile::bare(a), UserProfile::bare(b)]).await?;
    if !reg.failed.is_empty() {
        return Err(ProviderError::ProbeUsers {
            what: "register the probe users",
            failed: reg.failed,
        });
    }
    let mut f = Findings {
        provider: "zim".into(),
        clock_skew_ms: c.clock_skew().await,
        ..Findings::default()
    };
    let nonce = super::sign::nonce();
    let base = unix_ms() - 3_600_000;
    let marked_at = unix_ms();
    let mut sent = Vec::new();
    for (i, msg_type) in [1i64, 11, 200].into_iter().enumerate() {
        let marker = format!("chatferry probe {nonce} {i}");
        let send_time = base + i as i64 * 1000;
        let started = Instant::now();
        let body = probe_body(a, b, msg_type, &marker, send_time);
        let answer = c
            .call("ImportPeerMsg", &body.to_string())
            .await
            .map(|v| classify_answer(&v));
        match answer {
            Ok(Outcome::Accepted(acc)) => sent.push(Sent {
                msg_type,
                marker,
                send_time,
                msg_id: acc.msg_id,
            }),
            Ok(outcome) | Err(outcome) => return Err(ProviderError::ProbeImport { msg_type, outcome }),
        }
        f.import_ms = Some(started.elapsed().as_millis() as u64);
    }
    let answered = Instant::now();
    let items = wait_visible(c, a, b, &sent).await?;
    f.visibility_ms = Some(answered.elapsed().as_millis() as u64);
    judge(&mut f, &sent, &items, marked_at);
    Ok(f)
}

/// An ImportPeerMsg body for one probe message.
fn probe_body(a: &str, b: &str, msg_type: i64, marker: &str, send_time: i64) -> Value {
    let message = match msg_type {
        11 => json!({
            "FileName": "chatferry-probe.png",
            "Uid": marker.replace(' ', "-"),
            "Size": 68,
            "Origin": {"Url": format!("https://example.invalid/{}.png", marker.replace(' ', "-")), "Width": 1, "Height": 1},
        })
        .to_string(),
        _ => marker.to_string(),
    };
    let mut body = json!({
        "FromUserId": a, "ToUserId": b, "ImportedUserId": a, "MessageType": msg_type, "Priority": 1,
        "MessageBody": {"Message": message, "ExtendedData": marker}, "SendMessageTime": send_time,
    });
    if msg_type == 200 {
        body["SubMsgType"] = json!(1);
    }
    body
}

/// Reads the first page of the view until every probe message is there
/// (matched by the marker in `Payload`, which QueryPeerMsg returns as the
/// ExtendedData), or gives up.
async fn wait_visible(c: &ZimClient, a: &str, b: &str, sent: &[Sent]) -> Result<Vec<Value>, ProviderError> {
    let started = Instant::now();
    loop {
        let (list, _) = c.query_page(a, b, 0).await?;
        let found: Vec<Value> = sent
            .iter()
            .filter_map(|s| {
                list.iter()
                    .find(|i| payload(i) == Some(s.marker.as_str()))
                    .cloned()
            })
            .collect();
        if found.len() == sent.len() {
            return Ok(found);
        }
        if started.elapsed() > VISIBLE_WITHIN {
            return Err(ProviderError::ProbePartlyVisible {
                found: found.len(),
                sent: sent.len(),
                secs: VISIBLE_WITHIN.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn payload(item: &Value) -> Option<&str> {
    item.get("Payload").and_then(Value::as_str)
}

/// Compares what was sent with what came back.
fn judge(f: &mut Findings, sent: &[Sent], items: &[Value], marked_at: i64) {
    let times: Vec<(i64, Option<i64>)> = sent
        .iter()
        .zip(items)
        .map(|(s, i)| (s.send_time, int_field(i, "MsgTime")))
        .collect();
    let now = unix_ms();
    let skew = f.clock_skew_ms.unwrap_or(0).abs() + 5_000;
    f.msg_time = if times.iter().all(|(s, t)| Some(*s) == *t) {
        Some(MsgTimeMode::Echo)
    } else if times
        .iter()
        .all(|(_, t)| t.is_some_and(|t| (marked_at - skew..=now + skew).contains(&t)))
    {
        Some(MsgTimeMode::Receive)
    } else {
        f.notes.push(format!(
            "MsgTime is neither the send time nor the receive time: {times:?}"
        ));
        None
    };
    f.msg_id_matches = Some(
        sent.iter()
            .zip(items)
            .all(|(s, i)| s.msg_id.is_some() && s.msg_id == id_field(i, "MsgId")),
    );
    for (s, i) in sent.iter().zip(items) {
        let body = i.get("MsgBody").and_then(Value::as_str).unwrap_or("");
        let shown = match super::readback::url_decode(body) {
            Some(decoded) if decoded != body => format!("URL-encoded {decoded}"),
            _ => format!("{body:?}"),
        };
        let came = int_field(i, "MsgType").map_or("no".to_string(), |t| t.to_string());
        f.read_back.push(format!(
            "MsgType {} came back as MsgType {came} with MsgBody {}",
            s.msg_type,
            shown.chars().take(300).collect::<String>()
        ));
    }
}

impl ZimClient {
    /// The server's clock minus ours, from a QueryPeerMsg answer's `Date`.
    async fn clock_skew(&self) -> Option<i64> {
        let body = json!({"FromUserId": "chatferry-probe-clock", "ToUserId": "chatferry-probe-peer", "Limit": 1, "Next": 0});
        let before = unix_ms();
        let resp = self
            .http
            .post(self.url("QueryPeerMsg"))
            .body(body.to_string())
            .send()
            .await
            .ok()?;
        let mid = (before + unix_ms()) / 2;
        crate::probe::skew_from_date(resp.headers(), mid)
    }
}
