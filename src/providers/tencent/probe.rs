//! `chatferry probe` for Tencent: import a text and an image message with
//! fixed (MsgSeq, MsgRandom, MsgTimeStamp) into a conversation of two
//! dedicated users, import the text again, and read the conversation back
//! with `admin_getroammsg`.
//!
//! Tencent's 导入单聊消息 page says a message with the same triple is
//! deduplicated and 消息格式描述 defines the elements; the probe checks
//! both against the real account: whether the triple comes back as sent,
//! whether the second import was deduplicated, and how an image element
//! reads back.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::TencentClient;
use crate::probe::Findings;
use crate::providers::{int_field, unix_ms, ProviderError, UserProfile};

/// How long the probe waits for its imports to become readable.
const VISIBLE_WITHIN: Duration = Duration::from_secs(30);

pub(super) async fn run(c: &TencentClient, users: [&str; 2]) -> Result<Findings, ProviderError> {
    let [a, b] = users;
    let reg = c
        .import_accounts(&[UserProfile::bare(a), UserProfile::bare(b)])
        .await?;
    if !reg.failed.is_empty() {
        return Err(ProviderError::ProbeUsers {
            what: "import the probe accounts",
            failed: reg.failed,
        });
    }
    let mut f = Findings {
        provider: "tencent".into(),
        ..Findings::default()
    };
    let ts = unix_ms() / 1000 - 3600;
    let random: u32 = rand::random();
    let seq = (random % 1_000_000) as i64 + 1;
    let bodies = [
        probe_body(a, b, seq, random, ts, text_elem(random)),
        probe_body(a, b, seq + 1, random, ts, image_elem(random)),
    ];
    let started = Instant::now();
    for body in &bodies {
        c.idempotent_call("v4/openim/importmsg", &body.to_string(), &c.query_bucket)
            .await?;
    }
    f.import_ms = Some(started.elapsed().as_millis() as u64 / bodies.len() as u64);
    // The same triple again: Tencent documents it as deduplicated.
    c.idempotent_call("v4/openim/importmsg", &bodies[0].to_string(), &c.query_bucket)
        .await?;
    let answered = Instant::now();
    let list = wait_visible(c, a, b, ts, random).await?;
    f.visibility_ms = Some(answered.elapsed().as_millis() as u64);
    let ours: Vec<&Value> = list
        .iter()
        .filter(|m| int_field(m, "MsgRandom") == Some(random as i64))
        .collect();
    judge(&mut f, &ours, seq, ts);
    Ok(f)
}

/// Compares what came back (`ours`: the probe's messages) with what was
/// sent: the triple, the dedup of the second import, the elements.
fn judge(f: &mut Findings, ours: &[&Value], seq: i64, ts: i64) {
    f.triple_echoed = Some(
        ours.iter()
            .any(|m| int_field(m, "MsgSeq") == Some(seq) && int_field(m, "MsgTimeStamp") == Some(ts)),
    );
    let copies = ours
        .iter()
        .filter(|m| int_field(m, "MsgSeq") == Some(seq))
        .count();
    f.notes.push(match copies {
        1 => "the same triple imported twice is stored once (dedup confirmed)".to_string(),
        n => {
            format!("the same triple imported twice is stored {n} times: dedup is NOT what the documents say")
        }
    });
    for m in ours {
        let body = m.get("MsgBody").cloned().unwrap_or_default();
        let types: Vec<&str> = body
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("MsgType").and_then(Value::as_str))
            .collect();
        let shown: String = body.to_string().chars().take(200).collect();
        f.read_back.push(format!(
            "MsgSeq {:?}: {} as {shown}",
            int_field(m, "MsgSeq"),
            types.join(", ")
        ));
    }
}

fn probe_body(a: &str, b: &str, seq: i64, random: u32, ts: i64, elem: Value) -> Value {
    json!({
        "SyncFromOldSystem": 2, "From_Account": a, "To_Account": b, "MsgSeq": seq,
        "MsgRandom": random, "MsgTimeStamp": ts, "MsgBody": [elem],
    })
}

fn text_elem(random: u32) -> Value {
    json!({"MsgType": "TIMTextElem", "MsgContent": {"Text": format!("chatferry probe {random}")}})
}

/// An image element as 消息格式描述 defines `TIMImageElem`.
fn image_elem(random: u32) -> Value {
    let url = format!("https://example.invalid/chatferry-probe-{random}.png");
    json!({"MsgType": "TIMImageElem", "MsgContent": {
        "UUID": format!("chatferry-probe-{random}"), "ImageFormat": 3,
        "ImageInfoArray": [{"Type": 1, "Size": 68, "Width": 1, "Height": 1, "URL": url}]}})
}

/// Reads the probe's second back until both messages are there.
async fn wait_visible(
    c: &TencentClient,
    a: &str,
    b: &str,
    ts: i64,
    random: u32,
) -> Result<Vec<Value>, ProviderError> {
    let started = Instant::now();
    loop {
        let body =
            json!({"Operator_Account": a, "Peer_Account": b, "MaxCnt": 100, "MinTime": ts, "MaxTime": ts});
        let v = c
            .idempotent_call("v4/openim/admin_getroammsg", &body.to_string(), &c.query_bucket)
            .await?;
        let list: Vec<Value> = v
            .get("MsgList")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let ours = list
            .iter()
            .filter(|m| int_field(m, "MsgRandom") == Some(random as i64))
            .count();
        if ours >= 2 {
            return Ok(list);
        }
        if started.elapsed() > VISIBLE_WITHIN {
            return Err(ProviderError::ProbeNotVisible {
                secs: VISIBLE_WITHIN.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
