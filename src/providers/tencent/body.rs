//! Tencent `importmsg` request bodies, built and frozen at load.
//!
//! Idempotency by construction: the service treats two imports with the
//! same (MsgSeq, MsgRandom, MsgTimeStamp) in one conversation as one
//! message, so all three are fixed here, once, before the first send:
//!
//! - `MsgTimeStamp` = `sent_at_ms / 1000`.
//! - `MsgSeq` = `(sent_at_ms % 1000) * 2^22 + same_ms_index + 1`: within a
//!   second it grows with the millisecond and then with input order, so
//!   same-second messages display in source order (the service orders by
//!   timestamp, then MsgSeq). It never is 0 (which could read as "unset")
//!   and stays below 2^32.
//! - `MsgRandom` = the first 4 bytes of SHA-256(conversation ‖ 0x1f ‖ id).
//!
//! Two distinct messages of one conversation share the triple only if they
//! fall in the same millisecond with the same same-millisecond index (the
//! loader hands out distinct indexes within one load) and their ids hash
//! to the same 32 bits: possible only across separate loads, at odds of
//! 2^-32 per such pair.

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::TencentTarget;
use crate::load::input::InputMessage;
use crate::providers::{conversation_id, PlanContext, PlannedJob};

/// Highest same-millisecond index that still fits MsgSeq's slot.
const MAX_SAME_MS_INDEX: u32 = (1 << 22) - 2;

/// The JSON body of one `importmsg` call.
#[derive(Debug, Serialize)]
pub struct ImportMsg<'a> {
    #[serde(rename = "SyncFromOldSystem")]
    pub sync_from_old_system: u8,
    #[serde(rename = "From_Account")]
    pub from: &'a str,
    #[serde(rename = "To_Account")]
    pub to: &'a str,
    #[serde(rename = "MsgSeq")]
    pub msg_seq: u32,
    #[serde(rename = "MsgRandom")]
    pub msg_random: u32,
    #[serde(rename = "MsgTimeStamp")]
    pub msg_time_stamp: i64,
    #[serde(rename = "MsgBody")]
    pub msg_body: serde_json::Value,
    #[serde(rename = "CloudCustomData", skip_serializing_if = "Option::is_none")]
    pub cloud_custom_data: Option<&'a str>,
}

/// MsgSeq for a message (see the module doc).
pub fn msg_seq(sent_at_ms: i64, same_ms_index: u32) -> u32 {
    let ms = sent_at_ms.rem_euclid(1000) as u32;
    ms * (1 << 22) + same_ms_index.min(MAX_SAME_MS_INDEX) + 1
}

/// MsgRandom for a message (see the module doc).
pub fn msg_random(conversation: &str, id: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(conversation.as_bytes());
    h.update([0x1f]);
    h.update(id.as_bytes());
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Checks a Tencent account id: 1..=32 bytes, no control characters.
pub fn check_user_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if id.len() > 32 {
        return Err(format!(
            "{field} is {} bytes; Tencent account ids are at most 32",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("{field} contains a control character"));
    }
    Ok(())
}

/// Derives the one job of a message.
pub fn plan(t: &TencentTarget, m: &InputMessage, ctx: PlanContext) -> Result<Vec<PlannedJob>, String> {
    check_user_id("from", &m.from)?;
    check_user_id("to", &m.to)?;
    if m.from == m.to {
        return Err("from and to are the same user; only one-to-one conversations are imported".into());
    }
    if m.sent_at_ms <= 0 {
        return Err(format!(
            "sent_at_ms {} is not a Unix time in milliseconds",
            m.sent_at_ms
        ));
    }
    if m.sent_at_ms > ctx.now_ms {
        return Err(format!("sent_at_ms {} is in the future", m.sent_at_ms));
    }
    let msg_body = match m.kind.as_str() {
        "text" => {
            let text = m.text.as_deref().ok_or("a text message needs the field `text`")?;
            json!([{"MsgType": "TIMTextElem", "MsgContent": {"Text": text}}])
        }
        "custom" => {
            let data = m
                .data
                .as_deref()
                .ok_or("a custom message needs the field `data`")?;
            json!([{"MsgType": "TIMCustomElem", "MsgContent": {"Data": data}}])
        }
        other => {
            return Err(format!(
                "type {other:?} is not supported for Tencent targets (supported: text, custom)"
            ))
        }
    };
    let conversation = conversation_id(&m.from, &m.to);
    let body = ImportMsg {
        sync_from_old_system: t.sync_mode.wire(),
        from: &m.from,
        to: &m.to,
        msg_seq: msg_seq(m.sent_at_ms, ctx.same_ms_index),
        msg_random: msg_random(&conversation, &m.id),
        msg_time_stamp: m.sent_at_ms / 1000,
        msg_body,
        cloud_custom_data: m.ext.as_deref(),
    };
    let body = serde_json::to_string(&body).map_err(|e| format!("cannot encode body: {e}"))?;
    if body.len() > t.max_message_bytes {
        return Err(format!(
            "message is {} bytes once encoded; Tencent allows {} (max_message_bytes)",
            body.len(),
            t.max_message_bytes
        ));
    }
    Ok(vec![PlannedJob {
        lane_key: conversation.clone(),
        conversation,
        view_user: None,
        body,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_seq_follows_ms_then_index_and_fits_u32() {
        assert!(msg_seq(1_000_001, 0) > msg_seq(1_000_000, 5));
        assert!(msg_seq(1_000_000, 1) > msg_seq(1_000_000, 0));
        assert_eq!(msg_seq(1_000_000, 0), 1);
        assert!(msg_seq(1_999_999, u32::MAX) < u32::MAX);
        assert!(msg_seq(1_999_999, u32::MAX) > msg_seq(1_999_998, u32::MAX));
    }
}
