//! ZIM `ImportPeerMsg` request bodies, built and checked at load.
//!
//! Every layout here is ZEGO's (`zim-server/messaging/messagebody-introduction.md`;
//! import: `zim-server/messaging/import-one-to-one-messages.md`).
//! Text (1) and custom (200) carry their content in `MessageBody.Message`
//! as is. Media types carry a JSON object **as a string** there:
//!
//! - image (11): `{"Uid", "Origin": {"Url", "Width", "Height"},
//!   "LargeImage"?: {..same..}, "Thumbnail"?: {..same..}, "FileName", "Size"?}`
//!   (`FileName` is required: from `file_name`, else the URL's last path
//!   segment, else the line is refused);
//! - file (12), audio (13), video (14): `{"Uid", "Url", "FileName", "Size"}`,
//!   audio and video with `"MediaDuration"` (seconds), video with
//!   `"Thumbnail"?: {"Url", "Width", "Height"}`;
//! - multi-item (10): `{"MultiMsg": [{"MsgType", "Msg", "SubMsgType"?,
//!   "SearchedContent"?}, ..]}`, at most 20 items of types 1, 11..=14 and
//!   200, where a media item's `Msg` is itself the JSON **string** of that
//!   media type's object.
//!
//! ZEGO says `Message` "不可为空" (must not be empty) for every type, so an
//! empty text, custom data or native `Message` is refused here, naming the
//! field. Limits checked here, each refusal naming the field and the limit:
//! media URLs 500 bytes, file names 150 bytes, `Message` `max_message_bytes`
//! (multi-item: `max_multi_message_bytes`), `ExtendedData`
//! `max_extended_bytes`, `SearchedContent` 64 bytes.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::config::ZimTarget;
use crate::lane_key::LaneKey;
use crate::load::input::{InputItem, InputMessage};
use crate::providers::{PlanContext, PlanError, PlannedJob};

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
pub fn check_user_id(field: &str, id: &str) -> Result<(), PlanError> {
    if id.is_empty() {
        return Err(PlanError::empty(field));
    }
    PlanError::check_len(field, id, 32, "ZIM user ids")?;
    if let Some(c) = id.chars().find(|c| !zim_id_char(*c)) {
        return Err(format!(
            "{field} {id:?} has the character {c:?}, which ZIM refuses in user ids \
             (allowed: letters, digits, space and !#$%&()+-:;<=.>?@[]^_{{}}|~)"
        )
        .into());
    }
    Ok(())
}

fn zim_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || " !#$%&()+-:;<=.>?@[]^_{}|~".contains(c)
}

/// Longest media URL ZIM takes, in bytes.
pub const MAX_URL_BYTES: usize = 500;
/// Longest file name ZIM takes, in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 150;
/// Longest `SearchedContent`, in bytes.
pub const MAX_SEARCHED_BYTES: usize = 64;

/// The default media id of a message: 32 hex digits of
/// SHA-256(conversation ‖ 0x1f ‖ id), stable across loads.
pub fn default_media_uid(conversation: &str, id: &str) -> String {
    let mut h = Sha256::new();
    h.update(conversation.as_bytes());
    h.update([0x1f]);
    h.update(id.as_bytes());
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The media id of a message: its own `uid`, else [`default_media_uid`].
pub(crate) fn message_uid(m: &InputMessage, conversation: &str) -> String {
    m.media
        .uid
        .clone()
        .unwrap_or_else(|| default_media_uid(conversation, &m.id))
}

/// The last path segment of a URL (query and fragment cut off), if any.
pub fn file_name_from_url(url: &str) -> Option<&str> {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let path = &url[..end];
    let after_scheme = path.find("://").map_or(0, |i| i + 3);
    let rest = &path[after_scheme..];
    // Only a path after the host names a file.
    let (_, p) = rest.split_once('/')?;
    p.rsplit('/').next().filter(|s| !s.is_empty())
}

/// The media fields of a message or of one multi-item part.
struct Media<'a> {
    /// Prefix for reasons: `""` or `"items[2]."`.
    at: String,
    url: Option<&'a str>,
    file_name: Option<&'a str>,
    size: Option<u64>,
    width: Option<u32>,
    height: Option<u32>,
    duration_secs: Option<u32>,
    thumbnail_url: Option<&'a str>,
    thumbnail_width: Option<u32>,
    thumbnail_height: Option<u32>,
    large_url: Option<&'a str>,
    large_width: Option<u32>,
    large_height: Option<u32>,
    uid: String,
}

impl<'a> Media<'a> {
    fn of_message(m: &'a InputMessage, conversation: &str) -> Self {
        Media {
            at: String::new(),
            url: m.media.url.as_deref(),
            file_name: m.media.file_name.as_deref(),
            size: m.media.size,
            width: m.media.width,
            height: m.media.height,
            duration_secs: m.media.duration_secs,
            thumbnail_url: m.media.thumbnail_url.as_deref(),
            thumbnail_width: m.media.thumbnail_width,
            thumbnail_height: m.media.thumbnail_height,
            large_url: m.media.large_url.as_deref(),
            large_width: m.media.large_width,
            large_height: m.media.large_height,
            uid: message_uid(m, conversation),
        }
    }

    fn of_item(item: &'a InputItem, index: usize, message_uid: &str) -> Self {
        Media {
            at: format!("items[{index}]."),
            url: item.media.url.as_deref(),
            file_name: item.media.file_name.as_deref(),
            size: item.media.size,
            width: item.media.width,
            height: item.media.height,
            duration_secs: item.media.duration_secs,
            thumbnail_url: item.media.thumbnail_url.as_deref(),
            thumbnail_width: item.media.thumbnail_width,
            thumbnail_height: item.media.thumbnail_height,
            large_url: item.media.large_url.as_deref(),
            large_width: item.media.large_width,
            large_height: item.media.large_height,
            uid: item
                .media
                .uid
                .clone()
                .unwrap_or_else(|| format!("{message_uid}-{index}")),
        }
    }

    /// A media URL `field`: not empty, within [`MAX_URL_BYTES`].
    fn check_url(&self, field: &str, url: &str) -> Result<(), PlanError> {
        self.check_text(field, url, MAX_URL_BYTES, "ZIM media URLs")
    }

    /// A text `field` (at this part) that is not empty and not over `max`
    /// bytes of `of`.
    fn check_text(&self, field: &str, value: &str, max: usize, of: &'static str) -> Result<(), PlanError> {
        if value.is_empty() {
            return Err(PlanError::empty(format!("{}{field}", self.at)));
        }
        PlanError::check_len(format!("{}{field}", self.at), value, max, of)
    }

    /// The media URL, which a media message or part needs.
    fn url(&self, kind: &str) -> Result<&'a str, PlanError> {
        let url = self.url.ok_or_else(|| {
            format!(
                "{}url is missing; {} {kind} needs its media URL",
                self.at,
                article(kind)
            )
        })?;
        self.check_url("url", url)?;
        Ok(url)
    }

    /// The file name as given, else the URL's last path segment.
    fn file_name(&self, url: &'a str, kind: &str) -> Result<&'a str, PlanError> {
        let name = match self.file_name {
            Some(n) => n,
            None => file_name_from_url(url).ok_or_else(|| {
                format!(
                    "{}file_name is missing and url has no file name to take; {} {kind} needs one",
                    self.at,
                    article(kind)
                )
            })?,
        };
        self.check_text("file_name", name, MAX_FILE_NAME_BYTES, "ZIM file names")?;
        Ok(name)
    }

    /// `{"Url", "Width", "Height"}` for an optional URL (thumbnail, large).
    fn picture(
        &self,
        field: &str,
        url: Option<&str>,
        w: Option<u32>,
        h: Option<u32>,
    ) -> Result<Option<Value>, PlanError> {
        match url {
            None => Ok(None),
            Some(u) => {
                self.check_url(field, u)?;
                Ok(Some(
                    json!({"Url": u, "Width": w.unwrap_or(0), "Height": h.unwrap_or(0)}),
                ))
            }
        }
    }

    /// The media object of a type (11..=14).
    fn object(&self, message_type: u32) -> Result<Value, PlanError> {
        let mut o = Map::new();
        o.insert("Uid".into(), json!(self.uid));
        match message_type {
            11 => self.image(&mut o)?,
            _ => self.file(message_type, &mut o)?,
        }
        Ok(Value::Object(o))
    }

    /// The image's fields: `Origin`, `LargeImage`?, `Thumbnail`?,
    /// `FileName`, `Size`?.
    fn image(&self, o: &mut Map<String, Value>) -> Result<(), PlanError> {
        let url = self.url("image")?;
        o.insert(
            "Origin".into(),
            json!({"Url": url, "Width": self.width.unwrap_or(0), "Height": self.height.unwrap_or(0)}),
        );
        if let Some(v) = self.picture("large_url", self.large_url, self.large_width, self.large_height)? {
            o.insert("LargeImage".into(), v);
        }
        if let Some(v) = self.thumbnail()? {
            o.insert("Thumbnail".into(), v);
        }
        // ZEGO marks the image FileName required (messagebody-introduction.md).
        o.insert("FileName".into(), json!(self.file_name(url, "image")?));
        if let Some(size) = self.size {
            o.insert("Size".into(), json!(size));
        }
        Ok(())
    }

    /// A file's (12), audio's (13) or video's (14) fields: `Url`,
    /// `FileName`, `Size`, `MediaDuration` (not a file), `Thumbnail`?
    /// (a video).
    fn file(&self, message_type: u32, o: &mut Map<String, Value>) -> Result<(), PlanError> {
        let kind = match message_type {
            12 => "file",
            13 => "audio",
            _ => "video",
        };
        let url = self.url(kind)?;
        o.insert("Url".into(), json!(url));
        o.insert("FileName".into(), json!(self.file_name(url, kind)?));
        o.insert("Size".into(), json!(self.size.unwrap_or(0)));
        if message_type != 12 {
            o.insert("MediaDuration".into(), json!(self.duration_secs.unwrap_or(0)));
        }
        if message_type == 14 {
            if let Some(v) = self.thumbnail()? {
                o.insert("Thumbnail".into(), v);
            }
        }
        Ok(())
    }

    /// The thumbnail's `{"Url", "Width", "Height"}`, when given.
    fn thumbnail(&self) -> Result<Option<Value>, PlanError> {
        self.picture(
            "thumbnail_url",
            self.thumbnail_url,
            self.thumbnail_width,
            self.thumbnail_height,
        )
    }
}

fn article(kind: &str) -> &'static str {
    if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// The media `MessageType` of an input type.
fn media_type(kind: &str) -> Option<u32> {
    match kind {
        "image" => Some(11),
        "file" => Some(12),
        "audio" => Some(13),
        "video" => Some(14),
        _ => None,
    }
}

/// A custom `SubMsgType` within ZIM's 0..=200.
fn check_sub_type(field: &str, sub: i64) -> Result<i64, PlanError> {
    if !(0..=200).contains(&sub) {
        return Err(format!("{field} {sub} is outside ZIM's 0..=200").into());
    }
    Ok(sub)
}

/// Most items in one multi-item message (`MultiMsg`, messagebody-introduction.md).
pub const MAX_MULTI_ITEMS: usize = 20;

/// A required, non-empty string field; the reason names it.
fn non_empty<'s>(value: Option<&'s str>, field: &str, what: &str) -> Result<&'s str, PlanError> {
    match value {
        None => Err(PlanError::Missing {
            what: what.to_string(),
            field: field.to_string(),
        }),
        Some("") => Err(format!(
            "{field} is empty; ZIM refuses an empty message (give it some content or leave the line out)"
        )
        .into()),
        Some(v) => Ok(v),
    }
}

/// A `SearchedContent` within its 64 bytes.
fn check_searched(field: &str, s: Option<&str>) -> Result<(), PlanError> {
    match s {
        Some(s) if s.len() > MAX_SEARCHED_BYTES => {
            Err(format!("{field} is {} bytes; ZIM allows {MAX_SEARCHED_BYTES}", s.len()).into())
        }
        _ => Ok(()),
    }
}

/// One `MultiMsg` item: `{"MsgType", "Msg", "SubMsgType"?, "SearchedContent"?}`.
fn multi_item(item: &InputItem, i: usize, uid: &str) -> Result<Value, PlanError> {
    let at = |f: &str| format!("items[{i}].{f}");
    if item.search_text.is_some() && item.kind != "custom" {
        return Err(format!("{} is only allowed on a custom part", at("search_text")).into());
    }
    match item.kind.as_str() {
        "text" => {
            let text = non_empty(item.text.as_deref(), &at("text"), &format!("items[{i}] (text)"))?;
            Ok(json!({"MsgType": 1, "Msg": text}))
        }
        "custom" => {
            let data = non_empty(item.data.as_deref(), &at("data"), &format!("items[{i}] (custom)"))?;
            let sub = item
                .sub_type
                .ok_or_else(|| format!("items[{i}] is a custom part without `sub_type` (0..=200)"))?;
            let mut o =
                json!({"MsgType": 200, "Msg": data, "SubMsgType": check_sub_type(&at("sub_type"), sub)?});
            if let Some(s) = item.search_text.as_deref() {
                check_searched(&at("search_text"), Some(s))?;
                o["SearchedContent"] = json!(s);
            }
            Ok(o)
        }
        kind => match media_type(kind) {
            // A media item's Msg is the media object as a JSON string.
            Some(t) => Ok(json!({"MsgType": t, "Msg": Media::of_item(item, i, uid).object(t)?.to_string()})),
            None => Err(format!(
                "items[{i}] has type {kind:?}; a part is text, custom, image, file, audio or video"
            )
            .into()),
        },
    }
}

/// The multi-item `Message` object.
fn multi(m: &InputMessage, conversation: &str) -> Result<Value, PlanError> {
    let items = m
        .items
        .as_deref()
        .ok_or("a multi message needs `items`, an array of parts (see README, \"Input\")")?;
    if items.is_empty() {
        return Err("items is empty; a multi message needs at least one part".into());
    }
    if items.len() > MAX_MULTI_ITEMS {
        return Err(format!(
            "items has {} parts; a ZIM multi-item message holds at most {MAX_MULTI_ITEMS} \
             (split it into several messages)",
            items.len()
        )
        .into());
    }
    let uid = message_uid(m, conversation);
    let list = items
        .iter()
        .enumerate()
        .map(|(i, item)| multi_item(item, i, &uid))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(json!({ "MultiMsg": list }))
}

/// Checks the URLs and file names inside a media `Message` (native bodies).
fn check_media_json(v: &Value, path: &str) -> Result<(), PlanError> {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                let here = format!("{path}.{k}");
                match (k.as_str(), v) {
                    ("Url" | "Thumbnail", Value::String(s)) => {
                        PlanError::check_len(here, s, MAX_URL_BYTES, "ZIM media URLs")?
                    }
                    ("FileName", Value::String(s)) => {
                        PlanError::check_len(here, s, MAX_FILE_NAME_BYTES, "ZIM file names")?
                    }
                    _ => check_media_json(v, &here)?,
                }
            }
            Ok(())
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_media_json(v, &format!("{path}[{i}]"))),
        _ => Ok(()),
    }
}

/// A media `Message` (or a multi item's `Msg`) given as it is: a JSON
/// object in a string with the keys ZEGO marks required
/// (messagebody-introduction.md), URLs and file names within their limits.
fn check_native_media(message_type: u32, text: &str, path: &str) -> Result<(), PlanError> {
    let inner: Value = serde_json::from_str(text)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| format!("{path} of MessageType {message_type} must be a JSON object in a string"))?;
    let required: &[&str] = if message_type == 11 {
        &["Uid", "Origin", "FileName"]
    } else {
        &["Uid", "Url", "FileName"]
    };
    if let Some(k) = required.iter().find(|k| inner.get(**k).is_none()) {
        return Err(format!("{path}.{k} is missing; ZIM requires it for MessageType {message_type}").into());
    }
    if message_type == 11 && !inner["Origin"].get("Url").is_some_and(Value::is_string) {
        return Err(format!("{path}.Origin.Url is missing; ZIM requires it for an image").into());
    }
    check_media_json(&inner, path)
}

/// A multi-item `Message` given as it is: `{"MultiMsg": [..]}` as ZEGO
/// documents it, at most 20 items of the item types.
fn check_native_multi(text: &str) -> Result<(), PlanError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|_| "native.Message of MessageType 10 must be a JSON object in a string".to_string())?;
    let items = v.get("MultiMsg").and_then(Value::as_array).ok_or(
        "native.Message of MessageType 10 needs \"MultiMsg\": [{\"MsgType\", \"Msg\", \"SubMsgType\"?}, ..]",
    )?;
    if items.is_empty() || items.len() > MAX_MULTI_ITEMS {
        return Err(format!(
            "native.Message.MultiMsg has {} items; ZIM takes 1 to {MAX_MULTI_ITEMS}",
            items.len()
        )
        .into());
    }
    for (i, item) in items.iter().enumerate() {
        let at = format!("native.Message.MultiMsg[{i}]");
        let t = item.get("MsgType").and_then(Value::as_i64);
        let msg = item.get("Msg").and_then(Value::as_str).unwrap_or("");
        if msg.is_empty() {
            return Err(format!("{at}.Msg is missing or empty").into());
        }
        match t {
            Some(1) => {}
            Some(200)
                if item
                    .get("SubMsgType")
                    .and_then(Value::as_i64)
                    .is_some_and(|s| (0..=200).contains(&s)) => {}
            Some(200) => return Err(format!("{at}.SubMsgType is required for MsgType 200 (0..=200)").into()),
            Some(t @ 11..=14) => check_native_media(t as u32, msg, &format!("{at}.Msg"))?,
            _ => return Err(format!("{at}.MsgType must be 1, 11, 12, 13, 14 or 200").into()),
        }
    }
    Ok(())
}

/// What goes into one `ImportPeerMsg` besides the users and the time.
struct Content<'a> {
    message_type: u32,
    message: Cow<'a, str>,
    sub_msg_type: Option<i64>,
    searched: Option<&'a str>,
}

/// A `native` message: `{"MessageType", "Message", "SubMsgType"?}` used as
/// it is, once checked against ZEGO's layouts.
fn native(m: &InputMessage) -> Result<Content<'_>, PlanError> {
    let v = m.native.as_ref().ok_or(
        "a native message needs `native`: {\"MessageType\": n, \"Message\": \"...\", \"SubMsgType\"?: n}",
    )?;
    let o = v
        .as_object()
        .ok_or("native must be an object {\"MessageType\", \"Message\", \"SubMsgType\"?} for ZIM")?;
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "MessageType" | "Message" | "SubMsgType"))
    {
        return Err(format!(
            "native has the key {k:?}; for ZIM it takes MessageType, Message and SubMsgType only \
             (ExtendedData comes from `ext`, SearchedContent from `search_text`)"
        )
        .into());
    }
    let message_type = native_type(o)?;
    let message = o
        .get("Message")
        .and_then(Value::as_str)
        .ok_or("native.Message is missing or not a string (media content is a JSON string)")?;
    if message.is_empty() {
        return Err("native.Message is empty; ZIM refuses an empty message".into());
    }
    match message_type {
        10 => check_native_multi(message)?,
        11..=14 => check_native_media(message_type, message, "native.Message")?,
        _ => {}
    }
    let sub_msg_type = native_sub_type(message_type, o)?;
    if message_type != 200 && m.search_text.is_some() {
        return Err("search_text is only allowed on custom messages (MessageType 200)".into());
    }
    Ok(Content {
        message_type,
        message: Cow::Borrowed(message),
        sub_msg_type,
        searched: m.search_text.as_deref(),
    })
}

/// A native `MessageType` ZIM imports.
fn native_type(o: &Map<String, Value>) -> Result<u32, PlanError> {
    let t = o
        .get("MessageType")
        .and_then(Value::as_i64)
        .ok_or("native.MessageType is missing or not an integer")?;
    match t {
        2 => Err("signalling messages (MessageType 2) cannot be imported into ZIM".into()),
        1 | 10 | 11 | 12 | 13 | 14 | 200 => Ok(t as u32),
        other => Err(format!(
            "native.MessageType {other} is not one ZIM imports (1, 10, 11, 12, 13, 14, 200)"
        )
        .into()),
    }
}

/// A native `SubMsgType`: required for custom (200), refused otherwise.
fn native_sub_type(message_type: u32, o: &Map<String, Value>) -> Result<Option<i64>, PlanError> {
    match (message_type, o.get("SubMsgType")) {
        (200, Some(s)) => Ok(Some(check_sub_type(
            "native.SubMsgType",
            s.as_i64().ok_or("native.SubMsgType is not an integer")?,
        )?)),
        (200, None) => Err("native.SubMsgType is required for MessageType 200 (0..=200)".into()),
        (_, Some(_)) => Err("native.SubMsgType applies to MessageType 200 only".into()),
        (_, None) => Ok(None),
    }
}

impl<'a> Content<'a> {
    /// Content of `message_type` that is only its `Message`.
    fn plain(message_type: u32, message: Cow<'a, str>) -> Self {
        Content {
            message_type,
            message,
            sub_msg_type: None,
            searched: None,
        }
    }
}

/// What a message of each type imports as (README, "Input").
fn content<'a>(m: &'a InputMessage, conversation: &str) -> Result<Content<'a>, PlanError> {
    if m.search_text.is_some() && !matches!(m.kind.as_str(), "custom" | "native") {
        return Err("search_text is only allowed on custom messages".into());
    }
    let c = match m.kind.as_str() {
        "text" => Content::plain(
            1,
            Cow::Borrowed(non_empty(m.text.as_deref(), "text", "a text message")?),
        ),
        "custom" => custom(m)?,
        "multi" => Content::plain(10, Cow::Owned(multi(m, conversation)?.to_string())),
        "native" => native(m)?,
        "signalling" | "signaling" | "command" => {
            return Err("signalling messages cannot be imported into ZIM".into())
        }
        "face" | "location" => {
            return Err(format!(
                "type {:?} exists in Tencent IM only; ZIM has no such message (use native to send \
                 it as a custom message)",
                m.kind
            )
            .into())
        }
        other => match media_type(other) {
            Some(t) => Content::plain(
                t,
                Cow::Owned(Media::of_message(m, conversation).object(t)?.to_string()),
            ),
            None => {
                return Err(format!(
                    "type {other:?} is not supported for ZIM targets (supported: text, custom, image, \
                     file, audio, video, multi, native)"
                )
                .into())
            }
        },
    };
    check_searched("search_text", c.searched)?;
    Ok(c)
}

/// A custom message (200): its data, `SubMsgType` and `SearchedContent`.
fn custom(m: &InputMessage) -> Result<Content<'_>, PlanError> {
    let data = non_empty(m.data.as_deref(), "data", "a custom message")?;
    let sub = m
        .sub_type
        .ok_or("a custom message for ZIM needs `sub_type` (SubMsgType, 0..=200)")?;
    Ok(Content {
        message_type: 200,
        message: Cow::Borrowed(data),
        sub_msg_type: Some(check_sub_type("sub_type", sub)?),
        searched: m.search_text.as_deref(),
    })
}

/// The checks of a message that do not depend on its type: its users,
/// its time within the plan's history window.
fn check_message(z: &ZimTarget, m: &InputMessage, ctx: PlanContext) -> Result<(), PlanError> {
    check_user_id("from", &m.from)?;
    check_user_id("to", &m.to)?;
    if m.from == m.to {
        return Err("from and to are the same user; ZIM imports one-to-one conversations only".into());
    }
    if m.sent_at_ms > ctx.now_ms {
        return Err(PlanError::InFuture(m.sent_at_ms));
    }
    let oldest = ctx.now_ms - i64::from(z.retention_days) * DAY_MS;
    if m.sent_at_ms < oldest {
        return Err(format!(
            "sent_at_ms {} is older than the plan's {}-day history window (retention_days); \
             ZIM refuses it",
            m.sent_at_ms, z.retention_days
        )
        .into());
    }
    Ok(())
}

/// The message's `Priority`: its own, else the target's.
fn priority(z: &ZimTarget, m: &InputMessage) -> Result<u8, PlanError> {
    match m.priority {
        None => Ok(z.priority),
        Some(p @ 1..=3) => Ok(p as u8),
        Some(p) => Err(format!("priority {p} must be 1 (low), 2 (mid) or 3 (high)").into()),
    }
}

/// The `Message` and the `ExtendedData` within the target's limits.
fn check_sizes(z: &ZimTarget, m: &InputMessage, c: &Content<'_>) -> Result<(), PlanError> {
    let (limit, key) = if c.message_type == 10 {
        (z.max_multi_message_bytes, "max_multi_message_bytes")
    } else {
        (z.max_message_bytes, "max_message_bytes")
    };
    if c.message.len() > limit {
        let what = match c.message_type {
            1 | 200 => "message",
            _ => "Message (the encoded media JSON)",
        };
        return Err(format!(
            "{what} is {} bytes; this ZIM target allows {limit} ({key})",
            c.message.len()
        )
        .into());
    }
    match m.ext.as_deref() {
        Some(ext) if ext.len() > z.max_extended_bytes => Err(format!(
            "ext is {} bytes; ZIM ExtendedData allows {} (max_extended_bytes)",
            ext.len(),
            z.max_extended_bytes
        )
        .into()),
        _ => Ok(()),
    }
}

/// Whose views get the message: both users, or those of `visible_to`.
fn views(m: &InputMessage) -> Result<Vec<&str>, PlanError> {
    let Some(v) = &m.visible_to else {
        return Ok(vec![m.from.as_str(), m.to.as_str()]);
    };
    if v.is_empty() {
        // No view would get it: refused, never accepted as nothing to send.
        return Err("visible_to is empty; leave it out for both views, or name from and/or to".into());
    }
    let mut out = Vec::with_capacity(2);
    for u in v {
        if u != &m.from && u != &m.to {
            return Err(format!("visible_to names {u:?}, who is neither from nor to of this message").into());
        }
        if !out.contains(&u.as_str()) {
            out.push(u.as_str());
        }
    }
    Ok(out)
}

/// Derives one job per user whose view holds the message.
pub fn plan(z: &ZimTarget, m: &InputMessage, ctx: PlanContext) -> Result<Vec<PlannedJob>, PlanError> {
    check_message(z, m, ctx)?;
    let priority = priority(z, m)?;
    let conversation = LaneKey::conversation(&m.from, &m.to);
    let c = content(m, conversation.as_str())?;
    check_sizes(z, m, &c)?;
    let views = views(m)?;
    let mut jobs = Vec::with_capacity(views.len());
    for view in views {
        let peer = if view == m.from { &m.to } else { &m.from };
        let body = ImportPeerMsg {
            from_user_id: &m.from,
            to_user_id: &m.to,
            message_type: c.message_type,
            priority,
            message_body: MessageBody {
                message: &c.message,
                extended_data: m.ext.as_deref(),
            },
            sub_msg_type: c.sub_msg_type,
            searched_content: c.searched,
            send_message_time: m.sent_at_ms,
            imported_user_id: view,
        };
        jobs.push(PlannedJob {
            lane_key: LaneKey::view(view, peer).as_str().to_owned(),
            conversation: conversation.as_str().to_owned(),
            view_user: Some(view.to_string()),
            body: serde_json::to_string(&body).map_err(|e| PlanError::Encode(e.to_string()))?,
        });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{self, zim_target as target, NOW};

    fn plan_with(z: &ZimTarget, fields: Value) -> Result<Vec<Value>, String> {
        let m = testing::message(NOW - 1000, fields);
        plan(z, &m, testing::context())
            .map(|jobs| {
                jobs.iter()
                    .map(|j| serde_json::from_str(&j.body).unwrap())
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    /// The first job's body.
    fn body(fields: Value) -> Value {
        plan_with(&target(""), fields).unwrap().remove(0)
    }

    fn refused(fields: Value) -> String {
        refused_by(&target(""), fields)
    }

    fn refused_by(z: &ZimTarget, fields: Value) -> String {
        plan_with(z, fields).unwrap_err()
    }

    /// `MessageBody.Message`, which must be a string, parsed as JSON.
    fn inner(b: &Value) -> Value {
        let s = b["MessageBody"]["Message"]
            .as_str()
            .expect("Message is a JSON string");
        serde_json::from_str(s).unwrap()
    }

    fn uid() -> String {
        default_media_uid(LaneKey::conversation("alice", "bob").as_str(), "m1")
    }

    #[test]
    fn text_and_custom_keep_their_shape() {
        let b = body(json!({"type": "text", "text": "hi", "ext": "e"}));
        assert_eq!(b["MessageType"], 1);
        assert_eq!(b["MessageBody"], json!({"Message": "hi", "ExtendedData": "e"}));
        assert!(b.get("SubMsgType").is_none());
        let b = body(json!({"type": "custom", "data": "d", "sub_type": 7, "search_text": "s"}));
        assert_eq!(
            (
                b["MessageType"].clone(),
                b["SubMsgType"].clone(),
                b["SearchedContent"].clone()
            ),
            (json!(200), json!(7), json!("s"))
        );
        assert_eq!(b["MessageBody"]["Message"], "d");
    }

    #[test]
    fn default_uid_is_stable_and_per_message() {
        let u = uid();
        assert_eq!(u.len(), 32);
        assert!(u.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            u,
            default_media_uid(LaneKey::conversation("bob", "alice").as_str(), "m1")
        );
        assert_ne!(
            u,
            default_media_uid(LaneKey::conversation("alice", "bob").as_str(), "m2")
        );
        assert_ne!(
            u,
            default_media_uid(LaneKey::conversation("alice", "carol").as_str(), "m1")
        );
    }

    #[test]
    fn file_names_come_from_url_paths() {
        assert_eq!(
            file_name_from_url("https://cdn.example/a/b/report.pdf?sig=1#x"),
            Some("report.pdf")
        );
        assert_eq!(file_name_from_url("https://cdn.example/"), None);
        assert_eq!(file_name_from_url("https://cdn.example"), None);
        assert_eq!(file_name_from_url("https://cdn.example/dir/"), None);
    }

    #[test]
    fn image_is_type_11_with_the_full_json_string() {
        let b = body(json!({
            "type": "image", "url": "https://cdn/o.png", "width": 800, "height": 600,
            "large_url": "https://cdn/l.png", "large_width": 400, "large_height": 300,
            "thumbnail_url": "https://cdn/t.png", "thumbnail_width": 80, "thumbnail_height": 60,
            "file_name": "o.png", "size": 12345, "uid": "img-1", "ext": "x",
        }));
        assert_eq!(b["MessageType"], 11);
        assert_eq!(b["MessageBody"]["ExtendedData"], "x");
        assert_eq!(
            inner(&b),
            json!({
                "Uid": "img-1",
                "Origin": {"Url": "https://cdn/o.png", "Width": 800, "Height": 600},
                "LargeImage": {"Url": "https://cdn/l.png", "Width": 400, "Height": 300},
                "Thumbnail": {"Url": "https://cdn/t.png", "Width": 80, "Height": 60},
                "FileName": "o.png",
                "Size": 12345,
            })
        );
        // Only the URL given: the optional parts stay out, the uid is
        // derived, and the required FileName comes from the URL's path.
        let b = body(json!({"type": "image", "url": "https://cdn/o.png"}));
        assert_eq!(
            inner(&b),
            json!({"Uid": uid(), "Origin": {"Url": "https://cdn/o.png", "Width": 0, "Height": 0},
                   "FileName": "o.png"})
        );
        // `uuid` is the same field as `uid`.
        let b = body(json!({"type": "image", "url": "https://cdn/o.png", "uuid": "u2"}));
        assert_eq!(inner(&b)["Uid"], "u2");
    }

    #[test]
    fn file_audio_video_are_types_12_to_14() {
        let b = body(json!({"type": "file", "url": "https://cdn/d/report.pdf?x=1", "size": 99}));
        assert_eq!(b["MessageType"], 12);
        assert_eq!(
            inner(&b),
            json!({"Uid": uid(), "Url": "https://cdn/d/report.pdf?x=1", "FileName": "report.pdf", "Size": 99})
        );
        let b = body(
            json!({"type": "audio", "url": "https://cdn/v.m4a", "file_name": "voice", "duration_secs": 7}),
        );
        assert_eq!(b["MessageType"], 13);
        assert_eq!(
            inner(&b),
            json!({"Uid": uid(), "Url": "https://cdn/v.m4a", "FileName": "voice", "Size": 0, "MediaDuration": 7})
        );
        let b = body(json!({
            "type": "video", "url": "https://cdn/c.mp4", "size": 5, "duration_secs": 61,
            "thumbnail_url": "https://cdn/c.jpg", "thumbnail_width": 320, "thumbnail_height": 180,
        }));
        assert_eq!(b["MessageType"], 14);
        assert_eq!(
            inner(&b),
            json!({
                "Uid": uid(), "Url": "https://cdn/c.mp4", "FileName": "c.mp4", "Size": 5, "MediaDuration": 61,
                "Thumbnail": {"Url": "https://cdn/c.jpg", "Width": 320, "Height": 180},
            })
        );
        let b = body(json!({"type": "video", "url": "https://cdn/c.mp4"}));
        assert!(inner(&b).get("Thumbnail").is_none());
    }

    #[test]
    fn multi_is_type_10_with_a_list_of_parts() {
        let b = body(json!({"type": "multi", "uid": "mm", "items": [
            {"type": "text", "text": "look"},
            {"type": "image", "url": "https://cdn/p.jpg", "width": 2, "height": 3},
            {"type": "custom", "data": "{}", "sub_type": 4},
            {"type": "file", "url": "https://cdn/f.zip", "uid": "own"},
        ]}));
        assert_eq!(b["MessageType"], 10);
        assert!(b.get("SubMsgType").is_none());
        // messagebody-introduction.md, "组合消息": MultiMsg items, a media
        // item's Msg being the media object as a JSON string.
        let image = json!({"Uid": "mm-1", "Origin": {"Url": "https://cdn/p.jpg", "Width": 2, "Height": 3},
                           "FileName": "p.jpg"});
        let file = json!({"Uid": "own", "Url": "https://cdn/f.zip", "FileName": "f.zip", "Size": 0});
        assert_eq!(
            inner(&b),
            json!({"MultiMsg": [
                {"MsgType": 1, "Msg": "look"},
                {"MsgType": 11, "Msg": image.to_string()},
                {"MsgType": 200, "Msg": "{}", "SubMsgType": 4},
                {"MsgType": 12, "Msg": file.to_string()},
            ]})
        );
        let b = body(json!({"type": "multi", "items": [
            {"type": "custom", "data": "c", "sub_type": 1, "search_text": "find"},
        ]}));
        assert_eq!(
            inner(&b),
            json!({"MultiMsg": [{"MsgType": 200, "Msg": "c", "SubMsgType": 1, "SearchedContent": "find"}]})
        );
    }

    #[test]
    fn native_is_used_as_it_is() {
        let image = json!({"Uid": "x", "Origin": {"Url": "u", "Width": 1, "Height": 1}, "FileName": "a.png"})
            .to_string();
        let b = body(json!({"type": "native", "native": {"MessageType": 11, "Message": image}}));
        assert_eq!(b["MessageType"], 11);
        assert_eq!(b["MessageBody"]["Message"], image);
        let b = body(json!({"type": "native", "search_text": "find me",
                            "native": {"MessageType": 200, "Message": "raw", "SubMsgType": 9}}));
        assert_eq!(
            (b["SubMsgType"].clone(), b["SearchedContent"].clone()),
            (json!(9), json!("find me"))
        );
        let b = body(json!({"type": "native", "native": {"MessageType": 1, "Message": "plain"}}));
        assert_eq!(b["MessageBody"]["Message"], "plain");
    }

    #[test]
    fn every_view_gets_the_same_media_body() {
        let jobs = plan_with(&target(""), json!({"type": "image", "url": "https://cdn/o.png"})).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0]["MessageBody"], jobs[1]["MessageBody"]);
        assert_ne!(jobs[0]["ImportedUserId"], jobs[1]["ImportedUserId"]);
    }

    #[test]
    fn media_limits_name_the_field_and_the_limit() {
        let long_url = format!("https://cdn/{}", "u".repeat(500));
        let e = refused(json!({"type": "image", "url": long_url}));
        assert_eq!(e, "url is 512 bytes; ZIM media URLs are at most 500");
        let e = refused(json!({"type": "image", "url": "https://cdn/o", "thumbnail_url": long_url}));
        assert!(
            e.starts_with("thumbnail_url is 512 bytes") && e.contains("at most 500"),
            "{e}"
        );
        let e = refused(json!({"type": "image", "url": "https://cdn/o", "large_url": long_url}));
        assert!(e.starts_with("large_url is 512 bytes"), "{e}");
        let e = refused(json!({"type": "video", "url": "https://cdn/o", "thumbnail_url": long_url}));
        assert!(e.starts_with("thumbnail_url is 512 bytes"), "{e}");
        let e = refused(json!({"type": "file", "url": "https://cdn/o", "file_name": "n".repeat(151)}));
        assert_eq!(e, "file_name is 151 bytes; ZIM file names are at most 150");
        let e = refused(json!({"type": "file", "url": format!("https://cdn/{}", "n".repeat(151))}));
        assert!(e.starts_with("file_name is 151 bytes"), "{e}");
        let e = refused(
            json!({"type": "multi", "items": [{"type": "text", "text": "a"}, {"type": "audio", "url": long_url}]}),
        );
        assert!(e.starts_with("items[1].url is 512 bytes"), "{e}");
        // A URL at the limit is fine.
        body(json!({"type": "image", "url": format!("https://cdn/{}/a.png", "u".repeat(482))}));
    }

    #[test]
    fn message_limits_name_their_setting() {
        let small = target("max_message_bytes = 120\nmax_multi_message_bytes = 150");
        let e = refused_by(
            &small,
            json!({"type": "image", "url": format!("https://cdn/{}", "u".repeat(100))}),
        );
        assert!(
            e.contains("bytes; this ZIM target allows 120 (max_message_bytes)"),
            "{e}"
        );
        assert!(e.starts_with("Message (the encoded media JSON) is"), "{e}");
        let e = refused_by(&small, json!({"type": "text", "text": "t".repeat(121)}));
        assert_eq!(
            e,
            "message is 121 bytes; this ZIM target allows 120 (max_message_bytes)"
        );
        // A multi-item message has its own, larger limit.
        let items: Vec<Value> = (0..3)
            .map(|i| json!({"type": "text", "text": format!("part {i}")}))
            .collect();
        plan_with(&small, json!({"type": "multi", "items": items})).unwrap();
        let items: Vec<Value> = (0..9)
            .map(|i| json!({"type": "text", "text": format!("part {i}")}))
            .collect();
        let e = refused_by(&small, json!({"type": "multi", "items": items}));
        assert!(e.contains("allows 150 (max_multi_message_bytes)"), "{e}");
    }

    #[test]
    fn an_empty_visible_to_is_refused_not_planned_as_nothing() {
        let e = refused(json!({"type": "text", "text": "hi", "visible_to": []}));
        assert!(e.contains("visible_to is empty"), "{e}");
    }

    #[test]
    fn missing_and_misplaced_fields_are_refused() {
        assert!(refused(json!({"type": "image"})).contains("url is missing; an image needs its media URL"));
        assert_eq!(refused(json!({"type": "audio", "url": ""})), "url is empty");
        let e = refused(json!({"type": "file", "url": "https://cdn/"}));
        assert!(e.contains("file_name is missing"), "{e}");
        assert!(refused(json!({"type": "multi"})).contains("needs `items`"));
        assert!(refused(json!({"type": "multi", "items": []})).contains("items is empty"));
        let e = refused(json!({"type": "multi", "items": [{"type": "face"}]}));
        assert!(e.starts_with("items[0] has type \"face\""), "{e}");
        let e = refused(json!({"type": "multi", "items": [{"type": "custom", "data": "x"}]}));
        assert!(e.contains("items[0] is a custom part without `sub_type`"), "{e}");
        let e =
            refused(json!({"type": "multi", "items": [{"type": "custom", "data": "x", "sub_type": 300}]}));
        assert!(e.contains("items[0].sub_type 300"), "{e}");
        let e = refused(json!({"type": "image", "url": "https://cdn/o", "search_text": "s"}));
        assert!(e.contains("search_text is only allowed on custom"), "{e}");
        for kind in ["face", "location"] {
            let e = refused(json!({"type": kind}));
            assert!(e.contains("Tencent IM only"), "{e}");
        }
        for kind in ["signalling", "command"] {
            assert!(refused(json!({"type": kind})).contains("cannot be imported into ZIM"));
        }
        let e = refused(json!({"type": "sticker"}));
        assert!(
            e.contains("supported: text, custom, image, file, audio, video, multi, native"),
            "{e}"
        );
    }

    #[test]
    fn multi_holds_at_most_twenty_items() {
        let items = |n: usize| -> Vec<Value> {
            (0..n)
                .map(|i| json!({"type": "text", "text": format!("p{i}")}))
                .collect()
        };
        let b = body(json!({"type": "multi", "items": items(20)}));
        assert_eq!(inner(&b)["MultiMsg"].as_array().unwrap().len(), 20);
        let e = refused(json!({"type": "multi", "items": items(21)}));
        assert!(
            e.starts_with("items has 21 parts; a ZIM multi-item message holds at most 20"),
            "{e}"
        );
    }

    #[test]
    fn an_image_always_has_a_file_name() {
        let b = body(json!({"type": "image", "url": "https://cdn/a/b.jpg?s=1", "file_name": "given.jpg"}));
        assert_eq!(inner(&b)["FileName"], "given.jpg");
        let b = body(json!({"type": "image", "url": "https://cdn/a/b.jpg?s=1"}));
        assert_eq!(inner(&b)["FileName"], "b.jpg");
        for url in [
            "https://cdn.example",
            "https://cdn.example/",
            "https://cdn.example/dir/?x=1",
        ] {
            let e = refused(json!({"type": "image", "url": url}));
            assert!(
                e.starts_with("file_name is missing and url has no file name to take; an image needs one"),
                "{url}: {e}"
            );
        }
        let e = refused(json!({"type": "multi", "items": [{"type": "image", "url": "https://cdn/"}]}));
        assert!(e.starts_with("items[0].file_name is missing"), "{e}");
    }

    #[test]
    fn empty_content_is_refused() {
        let e = refused(json!({"type": "text", "text": ""}));
        assert!(
            e.starts_with("text is empty; ZIM refuses an empty message"),
            "{e}"
        );
        let e = refused(json!({"type": "custom", "data": "", "sub_type": 1}));
        assert!(e.starts_with("data is empty"), "{e}");
        let e = refused(json!({"type": "multi", "items": [{"type": "text", "text": ""}]}));
        assert!(e.starts_with("items[0].text is empty"), "{e}");
        let e = refused(json!({"type": "native", "native": {"MessageType": 1, "Message": ""}}));
        assert!(e.starts_with("native.Message is empty"), "{e}");
    }

    #[test]
    fn native_multi_and_media_follow_the_documented_layout() {
        let image = json!({"Uid": "u", "Origin": {"Url": "https://x/a.png", "Width": 1, "Height": 1},
                           "FileName": "a.png"})
        .to_string();
        let multi =
            json!({"MultiMsg": [{"MsgType": 1, "Msg": "t"}, {"MsgType": 11, "Msg": image}]}).to_string();
        let b = body(json!({"type": "native", "native": {"MessageType": 10, "Message": multi}}));
        assert_eq!(b["MessageBody"]["Message"], multi);
        let old = json!({"MessageInfoList": [{"MessageType": 1, "Message": "t"}]}).to_string();
        let e = refused(json!({"type": "native", "native": {"MessageType": 10, "Message": old}}));
        assert!(e.contains("needs \"MultiMsg\""), "{e}");
        let no_name = json!({"Uid": "u", "Origin": {"Url": "https://x/a.png"}}).to_string();
        let e = refused(json!({"type": "native", "native": {"MessageType": 11, "Message": no_name}}));
        assert_eq!(
            e,
            "native.Message.FileName is missing; ZIM requires it for MessageType 11"
        );
        let bad = json!({"MultiMsg": [{"MsgType": 12, "Msg": "{}"}]}).to_string();
        let e = refused(json!({"type": "native", "native": {"MessageType": 10, "Message": bad}}));
        assert!(
            e.starts_with("native.Message.MultiMsg[0].Msg.Uid is missing"),
            "{e}"
        );
        let many: Vec<Value> = (0..21).map(|_| json!({"MsgType": 1, "Msg": "t"})).collect();
        let many = json!({ "MultiMsg": many }).to_string();
        let e = refused(json!({"type": "native", "native": {"MessageType": 10, "Message": many}}));
        assert!(e.contains("has 21 items; ZIM takes 1 to 20"), "{e}");
    }

    #[test]
    fn native_is_checked_before_it_goes() {
        let e = refused(json!({"type": "native"}));
        assert!(e.contains("needs `native`"), "{e}");
        assert!(refused(json!({"type": "native", "native": [1]})).contains("must be an object"));
        let e = refused(json!({"type": "native", "native": {"MessageType": 2, "Message": "x"}}));
        assert!(e.contains("signalling messages (MessageType 2)"), "{e}");
        let e = refused(json!({"type": "native", "native": {"MessageType": 3, "Message": "x"}}));
        assert!(e.contains("native.MessageType 3 is not one ZIM imports"), "{e}");
        let e = refused(json!({"type": "native", "native": {"MessageType": 1, "Message": "x", "Extra": 1}}));
        assert!(e.contains("native has the key \"Extra\""), "{e}");
        let e = refused(json!({"type": "native", "native": {"MessageType": 1, "Message": 5}}));
        assert!(e.contains("native.Message is missing or not a string"), "{e}");
        let e = refused(json!({"type": "native", "native": {"MessageType": 11, "Message": "not json"}}));
        assert!(e.contains("must be a JSON object in a string"), "{e}");
        let big = json!({"Uid": "u", "FileName": "f", "Origin": {"Url": "u".repeat(501)}}).to_string();
        let e = refused(json!({"type": "native", "native": {"MessageType": 11, "Message": big}}));
        assert_eq!(
            e,
            "native.Message.Origin.Url is 501 bytes; ZIM media URLs are at most 500"
        );
        let e = refused(json!({"type": "native", "native": {"MessageType": 200, "Message": "x"}}));
        assert!(e.contains("native.SubMsgType is required"), "{e}");
        let e =
            refused(json!({"type": "native", "native": {"MessageType": 1, "Message": "x", "SubMsgType": 1}}));
        assert!(e.contains("MessageType 200 only"), "{e}");
        let e = refused(
            json!({"type": "native", "search_text": "s", "native": {"MessageType": 1, "Message": "x"}}),
        );
        assert!(e.contains("search_text is only allowed"), "{e}");
        let e = refused(json!({"type": "native", "search_text": "s".repeat(65),
                               "native": {"MessageType": 200, "Message": "x", "SubMsgType": 1}}));
        assert_eq!(e, "search_text is 65 bytes; ZIM allows 64");
    }
}
