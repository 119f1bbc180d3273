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

    /// Media (image, file, audio, video; README "Input").
    #[serde(flatten)]
    pub media: Media<MessageMedia>,
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
    /// Its media; `uid` defaults to the message's media id with `-N`
    /// (N = the item's index).
    #[serde(flatten)]
    pub media: Media,
}

/// The media fields a whole message and a multi-item part share, read
/// from the same keys at the top level of each.
///
/// `M` is what only a whole message takes between the thumbnail and the
/// large image ([`MessageMedia`]); a part takes nothing there (`()`). The
/// order of the fields is the order a message is serialized in, and that
/// is what its content hash covers (`load::content_hash`): moving one
/// would make every reload of an earlier load look like new content.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Media<M = ()> {
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
    /// What only a whole message takes here.
    #[serde(flatten)]
    pub message_only: M,
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
}

/// The media field a whole message takes and a multi-item part does not.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct MessageMedia {
    /// Tencent video `ThumbFormat` (e.g. `"jpg"`); default: from `thumbnail_url`.
    #[serde(default)]
    pub thumbnail_format: Option<String>,
}

/// Longest accepted source id, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Parses one line of JSON into `T`; the reason names the column and
/// what serde found wrong (without its "at line 1", which is always so).
pub(crate) fn from_json_line<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| {
        let col = e.column();
        let mut msg = e.to_string();
        if let Some(i) = msg.find(" at line ") {
            msg.truncate(i);
        }
        format!("invalid JSON at column {col}: {msg}")
    })
}

/// Parses and checks the provider-independent rules of one line.
pub fn parse_line(line: &[u8]) -> Result<InputMessage, String> {
    let text = std::str::from_utf8(line).map_err(|e| {
        format!(
            "line is not valid UTF-8 (bad byte at offset {}); re-export it as UTF-8",
            e.valid_up_to()
        )
    })?;
    let m: InputMessage = from_json_line(text)?;
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

    /// A message's content hash is its serialized form: the fields keep
    /// their order across versions, or a reload would see new content.
    #[test]
    fn the_serialized_form_keeps_its_field_order() {
        let line = br#"{"id":"1","from":"a","to":"b","sent_at_ms":5,"type":"image","url":"http://x/y.png","file_name":"f","size":3,"width":4,"height":5,"duration_secs":6,"thumbnail_url":"t","thumbnail_width":7,"thumbnail_height":8,"thumbnail_size":9,"thumbnail_format":"jpg","large_url":"l","large_width":10,"large_height":11,"large_size":12,"uuid":"U","format":"png","items":[{"type":"image","url":"u","uuid":"I","size":1,"thumbnail_format":"x","zzz":1},{"type":"text","text":"t"}],"face_index":1,"latitude":1.5,"native":{"a":1},"unknown":[1,2]}"#;
        let m = parse_line(line).unwrap();
        assert_eq!(m.media.uid.as_deref(), Some("U"));
        let items = m.items.as_ref().unwrap();
        assert_eq!(items[0].media.uid.as_deref(), Some("I"));
        let expected = r#"{"id":"1","from":"a","to":"b","sent_at_ms":5,"type":"image","text":null,"data":null,"sub_type":null,"search_text":null,"ext":null,"visible_to":null,"priority":null,"url":"http://x/y.png","file_name":"f","size":3,"width":4,"height":5,"duration_secs":6,"thumbnail_url":"t","thumbnail_width":7,"thumbnail_height":8,"thumbnail_size":9,"thumbnail_format":"jpg","large_url":"l","large_width":10,"large_height":11,"large_size":12,"uid":"U","format":"png","items":[{"type":"image","text":null,"data":null,"sub_type":null,"search_text":null,"url":"u","file_name":null,"size":1,"width":null,"height":null,"duration_secs":null,"thumbnail_url":null,"thumbnail_width":null,"thumbnail_height":null,"thumbnail_size":null,"large_url":null,"large_width":null,"large_height":null,"large_size":null,"uid":"I"},{"type":"text","text":"t","data":null,"sub_type":null,"search_text":null,"url":null,"file_name":null,"size":null,"width":null,"height":null,"duration_secs":null,"thumbnail_url":null,"thumbnail_width":null,"thumbnail_height":null,"thumbnail_size":null,"large_url":null,"large_width":null,"large_height":null,"large_size":null,"uid":null}],"face_index":1,"face_data":null,"latitude":1.5,"longitude":null,"desc":null,"custom_ext":null,"native":{"a":1}}"#;
        assert_eq!(serde_json::to_string(&m).unwrap(), expected);
    }
}
