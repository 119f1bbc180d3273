//! What ZIM gives back: `QueryPeerMsg` list items parsed, and what of an
//! `ImportPeerMsg` body survives that round trip, so reconcile and
//! `verify` recognize a message by its content whatever its type.
//!
//! ZEGO: zim-server/conversation/query-the-message-list-of-one-on-one-chats.md.
//! The read-back is not the import format:
//!
//! - `MsgBody` of text (1) and custom (200) is the content as sent;
//! - of media (11..=14) it is a **URL-encoded** JSON string in another
//!   schema: `md5`, `file_name`, `file_size`, `download_url`,
//!   `media_duration`, images also `origin_image_width/height`,
//!   `large_image_*`, `thumbnail_*`, videos `video_first_frame_*`;
//! - of multi-item (10) a URL-encoded `{"multi_msg": [{"msg_type",
//!   "sub_msg_type", "callback_content"}]}`, where `callback_content` is
//!   the content of a text or custom item and the media schema above for a
//!   media item;
//! - `Payload` is the `ExtendedData`, `IsEmpty` a number (0 normal, 1
//!   deleted or expired, 2 recalled), `MsgId` a number above 2^53 (kept as
//!   text, never through f64).
//!
//! What survives and is compared: sender, type, text or custom data, the
//! custom `SubMsgType`, `ExtendedData` as `Payload`, a media item's URL
//! (the image's original) and file name; for multi-item, each part.
//! `SearchedContent`, `Uid`, sizes, dimensions and durations are not
//! compared (the read-back renames or drops them). Neither are times nor
//! ids: the caller decides about those.

use serde::Serialize;
use serde_json::Value;

use crate::providers::{id_field, int_field};

/// One part of a message's content as it survives the round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Part {
    /// Text (1), custom (200) or a type not known here: the content as
    /// sent. `sub_type` is set for custom only.
    Plain {
        msg_type: i64,
        sub_type: Option<i64>,
        content: String,
    },
    /// Media (11..=14): the download URL and the file name.
    Media {
        msg_type: i64,
        url: String,
        file_name: String,
    },
}

/// One QueryPeerMsg list item, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub sender: String,
    pub msg_type: i64,
    pub sub_type: Option<i64>,
    pub msg_id: Option<String>,
    pub msg_seq: Option<i64>,
    pub msg_time: Option<i64>,
    pub is_empty: i64,
    /// `Payload` (the `ExtendedData`); absent reads as empty.
    pub payload: String,
    /// The content: one part, or a multi-item message's parts in order.
    pub parts: Vec<Part>,
}

/// What of an ImportPeerMsg body survives the QueryPeerMsg round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub sender: String,
    /// `ImportedUserId`: whose view holds it.
    pub view: String,
    pub peer: String,
    pub send_time_ms: i64,
    pub msg_type: i64,
    /// `ExtendedData`; absent reads as empty.
    pub payload: String,
    pub parts: Vec<Part>,
}

/// A stable text of the compared content (sender, type, payload, parts).
fn fingerprint_of(sender: &str, msg_type: i64, payload: &str, parts: &[Part]) -> String {
    serde_json::to_string(&(sender, msg_type, payload, parts)).unwrap_or_default()
}

/// The custom `SubMsgType`: only type 200 has one that means something
/// (the query doc: "只有当 MsgType 为 200 时，此参数才有意义").
fn custom_sub(msg_type: i64, sub: Option<i64>) -> Option<i64> {
    (msg_type == 200).then_some(sub).flatten()
}

fn str_at<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

impl Item {
    /// Equal to [`Expected::fingerprint`] for the same message.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.sender, self.msg_type, &self.payload, &self.parts)
    }
}

/// Parses one QueryPeerMsg list item; None when it has no sender or type.
pub fn parse_item(v: &Value) -> Option<Item> {
    let sender = str_at(v, "Sender")?.to_string();
    let msg_type = int_field(v, "MsgType")?;
    let sub_type = int_field(v, "SubMsgType");
    let body = str_at(v, "MsgBody").unwrap_or("");
    let parts = match msg_type {
        1 | 200 => vec![plain(msg_type, sub_type, body)],
        11..=14 => vec![match decode_body(body) {
            Some(m) => read_media(msg_type, &m),
            None => plain(msg_type, None, body),
        }],
        10 => match decode_body(body).as_ref().and_then(read_multi) {
            Some(parts) => parts,
            None => vec![plain(10, None, body)],
        },
        _ => vec![plain(msg_type, None, body)],
    };
    Some(Item {
        sender,
        msg_type,
        sub_type,
        msg_id: id_field(v, "MsgId"),
        msg_seq: int_field(v, "MsgSeq"),
        msg_time: int_field(v, "MsgTime"),
        is_empty: is_empty(v),
        payload: str_at(v, "Payload").unwrap_or("").to_string(),
        parts,
    })
}

/// `IsEmpty` is documented as a number; a boolean (an older reading) or
/// a numeric string is taken too, and absent means normal.
fn is_empty(v: &Value) -> i64 {
    match v.get("IsEmpty") {
        Some(Value::Bool(b)) => i64::from(*b),
        Some(_) => int_field(v, "IsEmpty").unwrap_or(0),
        None => 0,
    }
}

fn plain(msg_type: i64, sub: Option<i64>, content: &str) -> Part {
    Part::Plain {
        msg_type,
        sub_type: custom_sub(msg_type, sub),
        content: content.to_string(),
    }
}

/// A media object of the read-back schema (`download_url`, `file_name`).
fn read_media(msg_type: i64, m: &Value) -> Part {
    Part::Media {
        msg_type,
        url: str_at(m, "download_url").unwrap_or("").to_string(),
        file_name: str_at(m, "file_name").unwrap_or("").to_string(),
    }
}

/// The parts of a decoded multi-item read-back body.
fn read_multi(v: &Value) -> Option<Vec<Part>> {
    let list = v.get("multi_msg")?.as_array()?;
    list.iter()
        .map(|it| {
            let t = int_field(it, "msg_type")?;
            let content = it.get("callback_content");
            Some(match (t, content) {
                // The doc types callback_content "Object" and says a media
                // item's follows the media schema; whether that comes as an
                // object or as a (URL-encoded) JSON string is not shown, so
                // both are read.
                (11..=14, Some(Value::String(s))) => match decode_body(s) {
                    Some(m) => read_media(t, &m),
                    None => plain(t, None, s),
                },
                (11..=14, Some(m)) => read_media(t, m),
                (_, Some(Value::String(s))) => plain(t, int_field(it, "sub_msg_type"), s),
                (_, other) => plain(
                    t,
                    int_field(it, "sub_msg_type"),
                    &other.map(Value::to_string).unwrap_or_default(),
                ),
            })
        })
        .collect()
}

/// A read-back JSON body: URL-encoded by the doc ("请使用 URLDecode 对此
/// JSON 字符串解码"); a body that already is a JSON object is taken as it
/// is (a URL-encoded one starts with `%7B`, so the two never mix up).
fn decode_body(s: &str) -> Option<Value> {
    if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(s) {
        return Some(v);
    }
    let decoded = url_decode(s)?;
    serde_json::from_str::<Value>(&decoded)
        .ok()
        .filter(Value::is_object)
}

/// Percent-decoding with `+` as a space (URLDecode as in Java's
/// `URLDecoder` and Go's `QueryUnescape`); None on a broken escape.
pub fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl Expected {
    /// Reads an ImportPeerMsg body as chatferry froze it; None when it is
    /// not one.
    pub fn of_body(import_body: &str) -> Option<Expected> {
        let v: Value = serde_json::from_str(import_body).ok()?;
        let from = str_at(&v, "FromUserId")?.to_string();
        let to = str_at(&v, "ToUserId")?.to_string();
        let view = str_at(&v, "ImportedUserId")?.to_string();
        let peer = if view == from { to } else { from.clone() };
        let msg_type = int_field(&v, "MessageType")?;
        let body = v.get("MessageBody")?;
        let message = str_at(body, "Message")?;
        let parts = match msg_type {
            10 => multi_parts(message).unwrap_or_else(|| vec![plain(10, None, message)]),
            _ => vec![sent_part(msg_type, int_field(&v, "SubMsgType"), message)],
        };
        Some(Expected {
            sender: from,
            view,
            peer,
            send_time_ms: int_field(&v, "SendMessageTime").unwrap_or(0),
            msg_type,
            payload: str_at(body, "ExtendedData").unwrap_or("").to_string(),
            parts,
        })
    }

    /// Content match only (sender, type, text or custom data, sub type,
    /// ExtendedData as Payload, a media item's URL and file name; for
    /// multi-item, each part); NOT time and NOT ids.
    pub fn matches(&self, item: &Item) -> bool {
        self.sender == item.sender
            && self.msg_type == item.msg_type
            && self.payload == item.payload
            && self.parts == item.parts
    }

    /// A stable fingerprint of the content for verify (no time, no ids).
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.sender, self.msg_type, &self.payload, &self.parts)
    }
}

/// One sent part: a media `Message` is the JSON string of ZEGO's import
/// object (messagebody-introduction.md): the image's URL is `Origin.Url`,
/// the others' `Url`; both have `FileName`.
fn sent_part(msg_type: i64, sub: Option<i64>, message: &str) -> Part {
    if !(11..=14).contains(&msg_type) {
        return plain(msg_type, sub, message);
    }
    let Ok(m) = serde_json::from_str::<Value>(message) else {
        return plain(msg_type, None, message);
    };
    let url = match msg_type {
        11 => m.get("Origin").and_then(|o| str_at(o, "Url")),
        _ => str_at(&m, "Url"),
    };
    Part::Media {
        msg_type,
        url: url.unwrap_or("").to_string(),
        file_name: str_at(&m, "FileName").unwrap_or("").to_string(),
    }
}

/// The parts of a sent multi-item `Message` (`{"MultiMsg": [..]}`).
fn multi_parts(message: &str) -> Option<Vec<Part>> {
    let v: Value = serde_json::from_str(message).ok()?;
    v.get("MultiMsg")?
        .as_array()?
        .iter()
        .map(|it| {
            Some(sent_part(
                int_field(it, "MsgType")?,
                int_field(it, "SubMsgType"),
                str_at(it, "Msg")?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Form-style percent-encoding, as the simulator answers read-backs.
    use crate::simulate::zim::url_encode;

    fn import(msg_type: i64, message: &str, extra: Value) -> String {
        let mut v = json!({
            "FromUserId": "u1", "ToUserId": "u2", "MessageType": msg_type, "Priority": 1,
            "MessageBody": {"Message": message}, "SendMessageTime": 1705895412000_i64,
            "ImportedUserId": "u2",
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v.to_string()
    }

    fn item(msg_type: i64, body: &str, extra: Value) -> Item {
        let mut v = json!({"Sender": "u1", "MsgType": msg_type, "MsgBody": body, "MsgSeq": 3,
                           "MsgTime": 1705895412999_i64, "IsEmpty": 0});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        parse_item(&v).unwrap()
    }

    fn assert_same(e: &Expected, i: &Item) {
        assert!(e.matches(i), "{e:?}\n{i:?}");
        assert_eq!(e.fingerprint(), i.fingerprint());
    }

    fn assert_differs(e: &Expected, i: &Item) {
        assert!(!e.matches(i), "{e:?}\n{i:?}");
        assert_ne!(e.fingerprint(), i.fingerprint());
    }

    /// The response example of query-the-message-list-of-one-on-one-chats.md,
    /// verbatim but for its missing comma, its `...` and its misspelled
    /// `IsEempy` (absent `IsEmpty` reads as 0).
    #[test]
    fn the_documented_example_parses_with_an_exact_msg_id() {
        let answer = r#"{"Code": 0, "Message": "success", "RequestId": "343649807833778782", "Next": 1000,
            "List": [{"Sender": "user1", "MsgType": 1, "MsgBody": "这是一条消息", "MsgId": 971503777289036700,
                      "MsgSeq": 1, "Payload": "Payload", "MsgTime": 1705895412000, "IsEempy": 0}]}"#;
        let v: Value = serde_json::from_str(answer).unwrap();
        let it = parse_item(&v["List"][0]).unwrap();
        assert_eq!(it.sender, "user1");
        assert_eq!(it.msg_id.as_deref(), Some("971503777289036700"));
        assert_eq!(
            (it.msg_seq, it.msg_time, it.is_empty),
            (Some(1), Some(1705895412000), 0)
        );
        assert_eq!(it.payload, "Payload");
        let body = json!({"FromUserId": "user1", "ToUserId": "u2", "MessageType": 1, "Priority": 1,
            "MessageBody": {"Message": "这是一条消息", "ExtendedData": "Payload"},
            "SendMessageTime": 1705895412000_i64, "ImportedUserId": "u2"});
        assert_same(&Expected::of_body(&body.to_string()).unwrap(), &it);
        // Neighbouring ids above 2^53 stay apart (f64 would merge them).
        let a = parse_item(
            &serde_json::from_str(r#"{"Sender":"a","MsgType":1,"MsgId":1152921504606846977}"#).unwrap(),
        );
        assert_eq!(a.unwrap().msg_id.as_deref(), Some("1152921504606846977"));
        let b = parse_item(
            &serde_json::from_str(r#"{"Sender":"a","MsgType":1,"MsgId":"1152921504606846978"}"#).unwrap(),
        );
        assert_eq!(b.unwrap().msg_id.as_deref(), Some("1152921504606846978"));
    }

    /// The request example of import-one-to-one-messages.md (custom 200,
    /// SubMsgType 110, ExtendedData "s") against its read-back.
    #[test]
    fn custom_matches_on_data_sub_type_and_payload() {
        let body = r#"{"FromUserId": "u1", "ToUserId": "u2", "MessageType": 200, "Priority": 1,
            "MessageBody": {"Message": "hello world", "ExtendedData": "s"}, "SubMsgType": 110,
            "SearchedContent": "ex", "SendMessageTime": 123, "ImportedUserId": "u1"}"#;
        let e = Expected::of_body(body).unwrap();
        assert_eq!(
            (e.view.as_str(), e.peer.as_str(), e.send_time_ms),
            ("u1", "u2", 123)
        );
        assert_same(
            &e,
            &item(200, "hello world", json!({"SubMsgType": 110, "Payload": "s"})),
        );
        for (data, extra) in [
            ("hello world", json!({"SubMsgType": 111, "Payload": "s"})),
            ("hello world", json!({"SubMsgType": 110, "Payload": ""})),
            ("hello", json!({"SubMsgType": 110, "Payload": "s"})),
        ] {
            assert_differs(&e, &item(200, data, extra));
        }
        // A text's SubMsgType means nothing; absent ExtendedData is an empty Payload.
        let e = Expected::of_body(&import(1, "hi", json!({}))).unwrap();
        assert_same(&e, &item(1, "hi", json!({"SubMsgType": 0, "Payload": ""})));
        assert_same(&e, &item(1, "hi", json!({})));
        let mut other_sender = item(1, "hi", json!({}));
        other_sender.sender = "u2".into();
        assert_differs(&e, &other_sender);
    }

    /// Each media type: the import object of messagebody-introduction.md
    /// against the URL-encoded read-back schema of the query doc
    /// (`file_size` and `media_duration` are strings there).
    #[test]
    fn media_matches_on_url_and_file_name_through_url_encoding() {
        let image = json!({"Uid": "343649807833778782",
            "Origin": {"Url": "https://cdn.example/a b+c.jpg?x=1&y=%2F", "Width": 100, "Height": 200},
            "Thumbnail": {"Url": "https://cdn.example/t.jpg", "Width": 10, "Height": 20},
            "FileName": "FileName.jpg", "Size": 1024});
        let back = json!({"md5": "d41d8cd98f00b204e9800998ecf8427e", "file_name": "FileName.jpg",
            "file_size": "1024", "download_url": "https://cdn.example/a b+c.jpg?x=1&y=%2F",
            "media_duration": "0", "origin_image_width": 100, "origin_image_height": 200,
            "thumbnail_download_url": "https://cdn.example/t.jpg", "thumbnail_width": 10,
            "thumbnail_height": 20});
        let e = Expected::of_body(&import(11, &image.to_string(), json!({}))).unwrap();
        let encoded = url_encode(&back.to_string());
        assert!(encoded.starts_with("%7B"), "{encoded}");
        assert_same(&e, &item(11, &encoded, json!({})));
        // Already-decoded JSON is read too.
        assert_same(&e, &item(11, &back.to_string(), json!({})));
        let mut other = back.clone();
        other["file_name"] = json!("other.jpg");
        assert_differs(&e, &item(11, &url_encode(&other.to_string()), json!({})));
        assert_differs(&e, &item(12, &encoded, json!({})));
        for (t, dur) in [(12, None), (13, Some(30)), (14, Some(300))] {
            let mut sent =
                json!({"Uid": "1", "Url": "https://cdn.example/f.bin", "FileName": "f.bin", "Size": 1024});
            let mut back = json!({"md5": "", "file_name": "f.bin", "file_size": "1024",
                                  "download_url": "https://cdn.example/f.bin"});
            if let Some(d) = dur {
                sent["MediaDuration"] = json!(d);
                back["media_duration"] = json!(d.to_string());
            }
            if t == 14 {
                sent["Thumbnail"] = json!({"Url": "https://cdn.example/v.jpg", "Width": 100, "Height": 200});
                back["video_first_frame_download_url"] = json!("https://cdn.example/v.jpg");
                back["video_first_frame_width"] = json!(100);
                back["video_first_frame_height"] = json!(200);
            }
            let e = Expected::of_body(&import(
                t,
                &sent.to_string(),
                json!({"MessageBody": {
                "Message": sent.to_string(), "ExtendedData": "x"}}),
            ))
            .unwrap();
            assert_same(
                &e,
                &item(t, &url_encode(&back.to_string()), json!({"Payload": "x"})),
            );
            back["download_url"] = json!("https://cdn.example/g.bin");
            assert_differs(
                &e,
                &item(t, &url_encode(&back.to_string()), json!({"Payload": "x"})),
            );
        }
    }

    /// The multi-item layouts of both docs: MultiMsg (import) against
    /// multi_msg with callback_content (read-back), a media item's
    /// callback_content as an object or as a JSON string.
    #[test]
    fn multi_matches_part_by_part() {
        let img = json!({"Uid": "1", "Origin": {"Url": "https://c/p.png", "Width": 1, "Height": 1}, "FileName": "p.png"});
        let sent = json!({"MultiMsg": [
            {"MsgType": 1, "Msg": "11111"},
            {"MsgType": 11, "Msg": img.to_string()},
            {"MsgType": 200, "Msg": "card", "SubMsgType": 3, "SearchedContent": "s"},
        ]});
        let e = Expected::of_body(&import(10, &sent.to_string(), json!({}))).unwrap();
        assert_eq!(e.parts.len(), 3);
        let media =
            json!({"md5": "", "file_name": "p.png", "file_size": "0", "download_url": "https://c/p.png"});
        for content in [
            media.clone(),
            json!(media.to_string()),
            json!(url_encode(&media.to_string())),
        ] {
            let back = json!({"multi_msg": [
                {"msg_type": 1, "callback_content": "11111"},
                {"msg_type": 11, "callback_content": content},
                {"msg_type": 200, "sub_msg_type": 3, "callback_content": "card"},
            ]});
            assert_same(&e, &item(10, &url_encode(&back.to_string()), json!({})));
        }
        let short = json!({"multi_msg": [{"msg_type": 1, "callback_content": "11111"}]});
        assert_differs(&e, &item(10, &url_encode(&short.to_string()), json!({})));
        let wrong_sub = json!({"multi_msg": [
            {"msg_type": 1, "callback_content": "11111"},
            {"msg_type": 11, "callback_content": media},
            {"msg_type": 200, "sub_msg_type": 4, "callback_content": "card"},
        ]});
        assert_differs(&e, &item(10, &url_encode(&wrong_sub.to_string()), json!({})));
    }

    #[test]
    fn odd_items_parse_without_panicking() {
        assert!(parse_item(&json!({"MsgType": 1})).is_none());
        assert!(parse_item(&json!({"Sender": "a"})).is_none());
        let it = parse_item(&json!({"Sender": "a", "MsgType": 11, "MsgBody": "%ZZ", "IsEmpty": 2})).unwrap();
        assert_eq!(it.is_empty, 2);
        let it =
            parse_item(&json!({"Sender": "a", "MsgType": 10, "MsgBody": "%7B%7D", "IsEmpty": true})).unwrap();
        assert_eq!(it.is_empty, 1);
        let it = parse_item(&json!({"Sender": "a", "MsgType": 20, "MsgBody": "x"})).unwrap();
        assert_eq!(it.parts.len(), 1);
        assert_eq!(url_decode("a%2"), None);
        assert_eq!(url_decode("%E4%BD%A0+%2B"), Some("你 +".into()));
        assert!(Expected::of_body("{").is_none());
    }
}
