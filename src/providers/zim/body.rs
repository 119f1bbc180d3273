//! ZIM `ImportPeerMsg` request bodies, built and checked at load.

use serde::Serialize;

use crate::config::ZimTarget;
use crate::load::input::InputMessage;
use crate::providers::{conversation_id, PlanContext, PlannedJob};

/// The JSON body of one `ImportPeerMsg` call.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImportPeerMsg<'a> {
    pub from_user_id: &'a str,
    pub to_user_id: &'a str,
    pub message_type: u32,
    pub priority: u8,
    pub message_body: MessageBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_msg_type: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub searched_content: Option<&'a str>,
    pub send_message_time: i64,
    pub imported_user_id: &'a str,
}

/// `MessageBody`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MessageBody<'a> {
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extended_data: Option<&'a str>,
}

const DAY_MS: i64 = 86_400_000;

/// Checks a ZIM user id: at most 32 bytes of the documented characters.
pub fn check_user_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{field} is empty"));
    }
    if id.len() > 32 {
        return Err(format!(
            "{field} is {} bytes; ZIM user ids are at most 32",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| !zim_id_char(*c)) {
        return Err(format!(
            "{field} {id:?} has the character {c:?}, which ZIM refuses in user ids \
             (allowed: letters, digits, space and !#$%&()+-:;<=.>?@[]^_{{}}|~)"
        ));
    }
    Ok(())
}

fn zim_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || " !#$%&()+-:;<=.>?@[]^_{}|~".contains(c)
}

/// Derives one job per user whose view holds the message.
pub fn plan(z: &ZimTarget, m: &InputMessage, ctx: PlanContext) -> Result<Vec<PlannedJob>, String> {
    check_user_id("from", &m.from)?;
    check_user_id("to", &m.to)?;
    if m.from == m.to {
        return Err("from and to are the same user; ZIM imports one-to-one conversations only".into());
    }
    if m.sent_at_ms > ctx.now_ms {
        return Err(format!("sent_at_ms {} is in the future", m.sent_at_ms));
    }
    let oldest = ctx.now_ms - i64::from(z.retention_days) * DAY_MS;
    if m.sent_at_ms < oldest {
        return Err(format!(
            "sent_at_ms {} is older than the plan's {}-day history window (retention_days); \
             ZIM refuses it",
            m.sent_at_ms, z.retention_days
        ));
    }
    let priority = match m.priority {
        None => z.priority,
        Some(p @ 1..=3) => p as u8,
        Some(p) => return Err(format!("priority {p} must be 1 (low), 2 (mid) or 3 (high)")),
    };
    let (message_type, message, sub_msg_type, searched) = match m.kind.as_str() {
        "text" => {
            if m.search_text.is_some() {
                return Err("search_text is only allowed on custom messages".into());
            }
            let text = m.text.as_deref().ok_or("a text message needs the field `text`")?;
            (1u32, text, None, None)
        }
        "custom" => {
            let data = m
                .data
                .as_deref()
                .ok_or("a custom message needs the field `data`")?;
            let sub = m
                .sub_type
                .ok_or("a custom message for ZIM needs `sub_type` (SubMsgType, 0..=200)")?;
            if !(0..=200).contains(&sub) {
                return Err(format!("sub_type {sub} is outside ZIM's 0..=200"));
            }
            if let Some(s) = m.search_text.as_deref() {
                if s.len() > 64 {
                    return Err(format!("search_text is {} bytes; ZIM allows 64", s.len()));
                }
            }
            (200u32, data, Some(sub), m.search_text.as_deref())
        }
        "signalling" | "signaling" | "command" => {
            return Err("signalling messages cannot be imported into ZIM".into())
        }
        other => {
            return Err(format!(
                "type {other:?} is not supported for ZIM targets (supported: text, custom)"
            ))
        }
    };
    if message.len() > z.max_message_bytes {
        return Err(format!(
            "message is {} bytes; this ZIM target allows {} (max_message_bytes)",
            message.len(),
            z.max_message_bytes
        ));
    }
    if let Some(ext) = m.ext.as_deref() {
        if ext.len() > z.max_extended_bytes {
            return Err(format!(
                "ext is {} bytes; ZIM ExtendedData allows {} (max_extended_bytes)",
                ext.len(),
                z.max_extended_bytes
            ));
        }
    }
    let views: Vec<&str> = match &m.visible_to {
        None => vec![m.from.as_str(), m.to.as_str()],
        Some(v) => {
            let mut out = Vec::with_capacity(2);
            for u in v {
                if u != &m.from && u != &m.to {
                    return Err(format!(
                        "visible_to names {u:?}, who is neither from nor to of this message"
                    ));
                }
                if !out.contains(&u.as_str()) {
                    out.push(u.as_str());
                }
            }
            out
        }
    };
    let conversation = conversation_id(&m.from, &m.to);
    let mut jobs = Vec::with_capacity(views.len());
    for view in views {
        let peer = if view == m.from { &m.to } else { &m.from };
        let body = ImportPeerMsg {
            from_user_id: &m.from,
            to_user_id: &m.to,
            message_type,
            priority,
            message_body: MessageBody {
                message,
                extended_data: m.ext.as_deref(),
            },
            sub_msg_type,
            searched_content: searched,
            send_message_time: m.sent_at_ms,
            imported_user_id: view,
        };
        jobs.push(PlannedJob {
            lane_key: format!("{view}\u{1f}{peer}"),
            conversation: conversation.clone(),
            view_user: Some(view.to_string()),
            body: serde_json::to_string(&body).map_err(|e| format!("cannot encode body: {e}"))?,
        });
    }
    let _ = ctx.same_ms_index;
    Ok(jobs)
}
