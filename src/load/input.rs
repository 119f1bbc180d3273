//! The input format: one JSON object per line (contract.md, "Input").

use serde::{Deserialize, Serialize};

/// One source message. Unknown fields are ignored, so exports may carry more.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct InputMessage {
    pub id: String,
    pub from: String,
    pub to: String,
    pub sent_at_ms: i64,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub sub_type: Option<i64>,
    #[serde(default)]
    pub search_text: Option<String>,
    #[serde(default)]
    pub ext: Option<String>,
    #[serde(default)]
    pub visible_to: Option<Vec<String>>,
    /// ZIM `Priority` override (1 low, 2 mid, 3 high).
    #[serde(default)]
    pub priority: Option<i64>,

    // ----- media (image, file, audio, video; README "Input") -----
    /// The media's download URL.
    #[serde(default)]
    pub url: Option<String>,
    /// The file's name; default: the last path segment of `url`.
    #[serde(default)]
    pub file_name: Option<String>,
    /// Size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// Image or video width, in pixels.
    #[serde(default)]
    pub width: Option<u32>,
    /// Image or video height, in pixels.
    #[serde(default)]
    pub height: Option<u32>,
    /// Audio or video length, in seconds.
    #[serde(default)]
    pub duration_secs: Option<u32>,
    #[serde(default)]
    pub thumbnail_url: Option<String>,
    #[serde(default)]
    pub thumbnail_width: Option<u32>,
    #[serde(default)]
    pub thumbnail_height: Option<u32>,
    #[serde(default)]
    pub thumbnail_size: Option<u64>,
    /// Tencent video `ThumbFormat` (e.g. `"jpg"`); default: from `thumbnail_url`.
    #[serde(default)]
    pub thumbnail_format: Option<String>,
    /// An image's large (preview) version.
    #[serde(default)]
    pub large_url: Option<String>,
    #[serde(default)]
    pub large_width: Option<u32>,
    #[serde(default)]
    pub large_height: Option<u32>,
    #[serde(default)]
    pub large_size: Option<u64>,
    /// The media id (ZIM `Uid`, Tencent `UUID`); `uuid` is accepted too.
    /// Default: derived from the conversation and `id`.
    #[serde(default, alias = "uuid")]
    pub uid: Option<String>,
    /// Image or video format, a string (`"png"`, `"mp4"`) or, for a
    /// Tencent image, the `ImageFormat` number itself.
    #[serde(default)]
    pub format: Option<serde_json::Value>,
    /// The parts of a ZIM multi-item message, in order.
    #[serde(default)]
    pub items: Option<Vec<InputItem>>,

    // ----- Tencent face, location and custom extras -----
    #[serde(default)]
    pub face_index: Option<i64>,
    #[serde(default)]
    pub face_data: Option<String>,
    #[serde(default)]
    pub latitude: Option<f64>,
    #[serde(default)]
    pub longitude: Option<f64>,
    /// Location `Desc`; custom `Desc` (Tencent).
    #[serde(default)]
    pub desc: Option<String>,
    /// Tencent custom `Ext`.
    #[serde(default)]
    pub custom_ext: Option<String>,

    /// A provider body part used as it is (type `native`): for Tencent the
    /// `MsgBody` array, for ZIM `{"MessageType", "Message", "SubMsgType"?}`.
    #[serde(default)]
    pub native: Option<serde_json::Value>,
}

/// One part of a ZIM multi-item message (`items`): a `type` of `text`,
/// `custom`, `image`, `file`, `audio` or `video`, with the same fields a
/// whole message of that type takes.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct InputItem {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub sub_type: Option<i64>,
    /// A custom part's `SearchedContent` (≤ 64 bytes).
    #[serde(default)]
    pub search_text: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub file_name: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
    #[serde(default)]
    pub duration_secs: Option<u32>,
    #[serde(default)]
    pub thumbnail_url: Option<String>,
    #[serde(default)]
    pub thumbnail_width: Option<u32>,
    #[serde(default)]
    pub thumbnail_height: Option<u32>,
    #[serde(default)]
    pub thumbnail_size: Option<u64>,
    #[serde(default)]
    pub large_url: Option<String>,
    #[serde(default)]
    pub large_width: Option<u32>,
    #[serde(default)]
    pub large_height: Option<u32>,
    #[serde(default)]
    pub large_size: Option<u64>,
    /// Default: the message's media id with `-N` (N = the item's index).
    #[serde(default, alias = "uuid")]
    pub uid: Option<String>,
}

/// Longest accepted source id, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Parses and checks the provider-independent rules of one line.
pub fn parse_line(line: &[u8]) -> Result<InputMessage, String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "line is not valid UTF-8 (bad byte at offset {}); re-export it as UTF-8",
            e.valid_up_to()
        )
    })?;
    let m: InputMessage = serde_json::from_str(text).map_err(|e| {
        let col = e.column();
        let mut msg = e.to_string();
        if let Some(i) = msg.find(" at line ") {
            msg.truncate(i);
        }
        format!("invalid JSON at column {col}: {msg}")
    })?;
    if m.id.is_empty() {
        return Err("id is empty".into());
    }
    if m.id.len() > MAX_ID_BYTES {
        return Err(format!(
            "id is {} bytes; at most {MAX_ID_BYTES} are accepted",
            m.id.len()
        ));
    }
    if m.id.chars().any(char::is_control) {
        return Err("id contains a control character".into());
    }
    if m.sent_at_ms <= 0 {
        return Err(format!(
            "sent_at_ms {} is not a Unix time in milliseconds",
            m.sent_at_ms
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_the_problem() {
        assert!(parse_line(b"{").unwrap_err().contains("invalid JSON"));
        let e = parse_line(br#"{"id":"1","to":"b","sent_at_ms":1,"type":"text"}"#).unwrap_err();
        assert!(e.contains("missing field `from`"), "{e}");
        let e = parse_line(br#"{"id":"1","from":"a","to":"b","sent_at_ms":"x","type":"text"}"#).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        assert!(parse_line(b"\xff\xfe").unwrap_err().contains("UTF-8"));
        let e =
            parse_line(br#"{"id":"a\u0000","from":"a","to":"b","sent_at_ms":1,"type":"text"}"#).unwrap_err();
        assert!(e.contains("control"), "{e}");
    }
}
