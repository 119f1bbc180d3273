//! The input format: one JSON object per line (contract.md, "Input").

use serde::Deserialize;

/// One source message. Unknown fields are ignored, so exports may carry more.
#[derive(Debug, Clone, Deserialize)]
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
