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
//!
//! `MsgBody` elements (README, "Input"): text → `TIMTextElem`, custom →
//! `TIMCustomElem`, face → `TIMFaceElem`, location → `TIMLocationElem`,
//! image → `TIMImageElem`, audio → `TIMSoundElem`, file → `TIMFileElem`,
//! video → `TIMVideoFileElem`; `native` is a `MsgBody` array used as it is.
//! Every body, native ones included, passes [`check_elements`]: known
//! element types, each with its required fields, at most one
//! `TIMCustomElem`; and the whole encoded body fits `max_message_bytes`.

use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::config::TencentTarget;
use crate::lane_key::LaneKey;
use crate::load::input::InputMessage;
use crate::providers::zim::body::{file_name_from_url, message_uid};
use crate::providers::{PlanContext, PlanError, PlannedJob};

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
pub fn check_user_id(field: &str, id: &str) -> Result<(), PlanError> {
    if id.is_empty() {
        return Err(PlanError::empty(field));
    }
    PlanError::check_len(field, id, 32, "Tencent account ids")?;
    if id.chars().any(char::is_control) {
        return Err(format!("{field} contains a control character").into());
    }
    Ok(())
}

/// `Download_Flag` for media kept at the sender's URL: download from `Url`.
const DOWNLOAD_FROM_URL: u8 = 2;

/// The required fields of each element type; `MsgContent` must hold them.
const REQUIRED: &[(&str, &[&str])] = &[
    ("TIMTextElem", &["Text"]),
    ("TIMFaceElem", &["Index"]),
    ("TIMLocationElem", &["Latitude", "Longitude"]),
    ("TIMCustomElem", &["Data"]),
    ("TIMSoundElem", &["Url", "Size", "Second", "Download_Flag"]),
    ("TIMImageElem", &["UUID", "ImageFormat", "ImageInfoArray"]),
    ("TIMFileElem", &["Url", "FileSize", "FileName", "Download_Flag"]),
    (
        "TIMVideoFileElem",
        &[
            "VideoUrl",
            "VideoSize",
            "VideoSecond",
            "VideoFormat",
            "VideoDownloadFlag",
            "ThumbUrl",
            "ThumbSize",
            "ThumbWidth",
            "ThumbHeight",
            "ThumbFormat",
            "ThumbDownloadFlag",
        ],
    ),
];

/// Checks a `MsgBody` against the element rules: a non-empty array of
/// `{"MsgType", "MsgContent"}` of documented types, each with its required
/// fields, and at most one `TIMCustomElem`.
pub fn check_elements(body: &Value) -> Result<(), PlanError> {
    let elems = body.as_array().ok_or("MsgBody must be an array of elements")?;
    if elems.is_empty() {
        return Err("MsgBody is empty; a message needs at least one element".into());
    }
    let mut customs = 0;
    for (i, e) in elems.iter().enumerate() {
        let kind = check_element(i, e)?;
        if kind == "TIMCustomElem" {
            customs += 1;
            if customs > 1 {
                return Err(
                    "MsgBody holds more than one TIMCustomElem; Tencent allows one per message".into(),
                );
            }
        }
    }
    Ok(())
}

/// Checks element `i` (its type, its required fields, an image's
/// `ImageInfoArray`) and gives its `MsgType`.
fn check_element(i: usize, e: &Value) -> Result<&str, PlanError> {
    let kind = e
        .get("MsgType")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("MsgBody[{i}].MsgType is missing or not a string"))?;
    let content = e
        .get("MsgContent")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("MsgBody[{i}].MsgContent is missing or not an object"))?;
    let (_, required) = REQUIRED.iter().find(|(k, _)| *k == kind).ok_or_else(|| {
        format!("MsgBody[{i}].MsgType {kind:?} is not an element type Tencent IM documents")
    })?;
    if let Some(f) = required.iter().find(|f| missing(content.get(**f))) {
        return Err(format!("MsgBody[{i}] ({kind}) lacks the required field {f}").into());
    }
    if kind == "TIMImageElem" {
        let infos = content["ImageInfoArray"]
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| format!("MsgBody[{i}].ImageInfoArray must be a non-empty array"))?;
        for (j, info) in infos.iter().enumerate() {
            if let Some(f) = ["Type", "Size", "Width", "Height", "URL"]
                .iter()
                .find(|f| missing(info.get(**f)))
            {
                return Err(format!("MsgBody[{i}].ImageInfoArray[{j}] lacks the required field {f}").into());
            }
        }
    }
    Ok(kind)
}

fn missing(v: Option<&Value>) -> bool {
    v.map_or(true, Value::is_null)
}

/// The file extension of a URL's last path segment, lowercased.
fn extension(url: &str) -> Option<String> {
    let name = file_name_from_url(url)?;
    let (_, ext) = name.rsplit_once('.')?;
    (!ext.is_empty() && ext.len() <= 8 && ext.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| ext.to_ascii_lowercase())
}

/// `ImageFormat`: a number as given, or from a name or the URL's
/// extension: JPG 1, GIF 2, PNG 3, BMP 4, anything else 255.
fn image_format(format: Option<&Value>, url: &str) -> Result<u64, PlanError> {
    let name = match format {
        Some(Value::Number(n)) => {
            return n.as_u64().filter(|n| (1..=255).contains(n)).ok_or_else(|| {
                format!("format {n} is not an ImageFormat (1 JPG, 2 GIF, 3 PNG, 4 BMP, 255 other)").into()
            })
        }
        Some(Value::String(s)) => Some(s.trim_start_matches('.').to_ascii_lowercase()),
        Some(other) => return Err(format!("format must be a string or a number, not {other}").into()),
        None => extension(url),
    };
    Ok(match name.as_deref() {
        Some("jpg" | "jpeg") => 1,
        Some("gif") => 2,
        Some("png") => 3,
        Some("bmp") => 4,
        _ => 255,
    })
}

/// `VideoFormat`: as given, else the URL's extension, else `mp4`.
fn video_format(format: Option<&Value>, url: &str) -> Result<String, PlanError> {
    match format {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(PlanError::empty("format")),
        Some(other) => Err(format!("format of a video is a string such as \"mp4\", not {other}").into()),
        None => Ok(extension(url).unwrap_or_else(|| "mp4".into())),
    }
}

/// A field `kind` (\"a face\") messages need.
fn need<'a, T: ?Sized>(v: Option<&'a T>, field: &str, kind: &str) -> Result<&'a T, PlanError> {
    v.ok_or_else(|| PlanError::Missing {
        what: format!("{kind} message"),
        field: field.to_string(),
    })
}

/// A needed string field that must not be empty either.
fn non_empty<'a>(v: Option<&'a str>, field: &str, kind: &str) -> Result<&'a str, PlanError> {
    let s = need(v, field, kind)?;
    if s.is_empty() {
        return Err(PlanError::empty(field));
    }
    Ok(s)
}

/// An optional string field that, when given, must not be empty.
fn given<'a>(v: Option<&'a str>, field: &str) -> Result<Option<&'a str>, PlanError> {
    match v {
        Some("") => Err(PlanError::empty(field)),
        other => Ok(other),
    }
}

fn elem(kind: &str, content: Value) -> Value {
    json!([{"MsgType": kind, "MsgContent": content}])
}

/// The `MsgBody` of a message, checked against the element rules.
fn msg_body(m: &InputMessage, conversation: &str) -> Result<Value, PlanError> {
    let body = element(m, conversation)?;
    check_elements(&body).map_err(|e| {
        if m.kind == "native" {
            PlanError::Native(Box::new(e))
        } else {
            e
        }
    })?;
    Ok(body)
}

/// The elements of a message, by its type (README, "Input").
fn element(m: &InputMessage, conversation: &str) -> Result<Value, PlanError> {
    let uid = || message_uid(m, conversation);
    match m.kind.as_str() {
        "text" => Ok(elem(
            "TIMTextElem",
            json!({"Text": need(m.text.as_deref(), "text", "a text")?}),
        )),
        "custom" => custom(m),
        "face" => face(m),
        "location" => location(m),
        "image" => image(m, uid()),
        "audio" => audio(m, uid()),
        "file" => file(m, uid()),
        "video" => video(m, uid()),
        "native" => Ok(m
            .native
            .clone()
            .ok_or("a native message needs `native`: the MsgBody array to send as it is")?),
        "multi" => Err(
            "type \"multi\" exists in ZIM only; for Tencent send its parts as separate messages, \
                        or as one native MsgBody with several elements"
                .into(),
        ),
        other => Err(format!(
            "type {other:?} is not supported for Tencent targets (supported: text, custom, face, \
             location, image, audio, file, video, native)"
        )
        .into()),
    }
}

/// `TIMCustomElem`: `Data`, with `Desc` and `Ext` when given.
fn custom(m: &InputMessage) -> Result<Value, PlanError> {
    let data = need(m.data.as_deref(), "data", "a custom")?;
    let mut c = Map::new();
    c.insert("Data".into(), json!(data));
    if let Some(d) = &m.desc {
        c.insert("Desc".into(), json!(d));
    }
    if let Some(e) = &m.custom_ext {
        c.insert("Ext".into(), json!(e));
    }
    Ok(elem("TIMCustomElem", Value::Object(c)))
}

/// `TIMFaceElem`.
fn face(m: &InputMessage) -> Result<Value, PlanError> {
    let index = *need(m.face_index.as_ref(), "face_index", "a face")?;
    Ok(elem(
        "TIMFaceElem",
        json!({"Index": index, "Data": m.face_data.as_deref().unwrap_or("")}),
    ))
}

/// `TIMLocationElem`, its coordinates in range.
fn location(m: &InputMessage) -> Result<Value, PlanError> {
    let lat = *need(m.latitude.as_ref(), "latitude", "a location")?;
    let lon = *need(m.longitude.as_ref(), "longitude", "a location")?;
    if !(-90.0..=90.0).contains(&lat) {
        return Err(format!("latitude {lat} is outside -90..=90").into());
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(format!("longitude {lon} is outside -180..=180").into());
    }
    Ok(elem(
        "TIMLocationElem",
        json!({"Desc": m.desc.as_deref().unwrap_or(""), "Latitude": lat, "Longitude": lon}),
    ))
}

/// One picture of an image: where it is, its bytes and dimensions.
#[derive(Clone, Copy)]
struct Picture<'a> {
    url: &'a str,
    size: Option<u64>,
    width: Option<u32>,
    height: Option<u32>,
}

impl Picture<'_> {
    /// Its `ImageInfoArray` entry: `kind` 1 original, 2 large, 3 thumbnail.
    fn info(&self, kind: u8) -> Value {
        json!({"Type": kind, "Size": self.size.unwrap_or(0), "Width": self.width.unwrap_or(0),
               "Height": self.height.unwrap_or(0), "URL": self.url})
    }
}

/// `TIMImageElem`: the original, the large image and the thumbnail.
fn image(m: &InputMessage, uid: String) -> Result<Value, PlanError> {
    let url = non_empty(m.media.url.as_deref(), "url", "an image")?;
    let original = Picture {
        url,
        size: m.media.size,
        width: m.media.width,
        height: m.media.height,
    };
    // Clients show the large image in the viewer and the thumbnail in
    // the chat: without their own, both fall back to the original.
    let large = given(m.media.large_url.as_deref(), "large_url")?.map(|url| Picture {
        url,
        size: m.media.large_size,
        width: m.media.large_width,
        height: m.media.large_height,
    });
    let thumb = given(m.media.thumbnail_url.as_deref(), "thumbnail_url")?.map(|url| Picture {
        url,
        size: m.media.thumbnail_size,
        width: m.media.thumbnail_width,
        height: m.media.thumbnail_height,
    });
    let infos = [
        original.info(1),
        large.unwrap_or(original).info(2),
        thumb.unwrap_or(original).info(3),
    ];
    Ok(elem(
        "TIMImageElem",
        json!({"UUID": uid, "ImageFormat": image_format(m.format.as_ref(), url)?, "ImageInfoArray": infos}),
    ))
}

/// `TIMSoundElem`, downloaded from the sender's URL.
fn audio(m: &InputMessage, uid: String) -> Result<Value, PlanError> {
    let url = non_empty(m.media.url.as_deref(), "url", "an audio")?;
    Ok(elem(
        "TIMSoundElem",
        json!({"Url": url, "UUID": uid, "Size": m.media.size.unwrap_or(0),
               "Second": m.media.duration_secs.unwrap_or(0), "Download_Flag": DOWNLOAD_FROM_URL}),
    ))
}

/// `TIMFileElem`: the file name as given, else from the URL.
fn file(m: &InputMessage, uid: String) -> Result<Value, PlanError> {
    let url = non_empty(m.media.url.as_deref(), "url", "a file")?;
    let name = match given(m.media.file_name.as_deref(), "file_name")? {
        Some(n) => n,
        None => file_name_from_url(url)
            .ok_or("a file message needs `file_name` (its url has no file name to take)")?,
    };
    Ok(elem(
        "TIMFileElem",
        json!({"Url": url, "UUID": uid, "FileSize": m.media.size.unwrap_or(0),
               "FileName": name, "Download_Flag": DOWNLOAD_FROM_URL}),
    ))
}

/// `TIMVideoFileElem`: the video and its (required) thumbnail.
fn video(m: &InputMessage, uid: String) -> Result<Value, PlanError> {
    let url = non_empty(m.media.url.as_deref(), "url", "a video")?;
    let thumb = non_empty(m.media.thumbnail_url.as_deref(), "thumbnail_url", "a video")?;
    let thumb_format = match given(
        m.media.message_only.thumbnail_format.as_deref(),
        "thumbnail_format",
    )? {
        Some(f) => f.to_string(),
        None => extension(thumb).unwrap_or_else(|| "jpg".into()),
    };
    Ok(elem(
        "TIMVideoFileElem",
        json!({
            "VideoUrl": url,
            "VideoUUID": uid,
            "VideoSize": m.media.size.unwrap_or(0),
            "VideoSecond": m.media.duration_secs.unwrap_or(0),
            "VideoFormat": video_format(m.format.as_ref(), url)?,
            "VideoDownloadFlag": DOWNLOAD_FROM_URL,
            "ThumbUrl": thumb,
            "ThumbUUID": format!("{uid}-thumb"),
            "ThumbSize": m.media.thumbnail_size.unwrap_or(0),
            "ThumbWidth": m.media.thumbnail_width.unwrap_or(0),
            "ThumbHeight": m.media.thumbnail_height.unwrap_or(0),
            "ThumbFormat": thumb_format,
            "ThumbDownloadFlag": DOWNLOAD_FROM_URL,
        }),
    ))
}

/// The checks of a message that do not depend on its type: its users and
/// its time.
fn check_message(m: &InputMessage, ctx: PlanContext) -> Result<(), PlanError> {
    check_user_id("from", &m.from)?;
    check_user_id("to", &m.to)?;
    if m.from == m.to {
        return Err("from and to are the same user; only one-to-one conversations are imported".into());
    }
    if m.sent_at_ms <= 0 {
        return Err(format!("sent_at_ms {} is not a Unix time in milliseconds", m.sent_at_ms).into());
    }
    if m.sent_at_ms > ctx.now_ms {
        return Err(PlanError::InFuture(m.sent_at_ms));
    }
    Ok(())
}

/// Derives the one job of a message.
pub fn plan(t: &TencentTarget, m: &InputMessage, ctx: PlanContext) -> Result<Vec<PlannedJob>, PlanError> {
    check_message(m, ctx)?;
    let conversation = LaneKey::conversation(&m.from, &m.to);
    let msg_body = msg_body(m, conversation.as_str())?;
    let body = ImportMsg {
        // Tencent: 导入单聊消息, SyncFromOldSystem 5 = real-time import
        // (unread, pushed) for the messages of a cut-over.
        sync_from_old_system: if ctx.live {
            crate::config::SyncMode::Live.wire()
        } else {
            t.sync_mode.wire()
        },
        from: &m.from,
        to: &m.to,
        msg_seq: msg_seq(m.sent_at_ms, ctx.same_ms_index),
        msg_random: msg_random(conversation.as_str(), &m.id),
        msg_time_stamp: m.sent_at_ms / 1000,
        msg_body,
        cloud_custom_data: m.ext.as_deref(),
    };
    let body = serde_json::to_string(&body).map_err(|e| PlanError::Encode(e.to_string()))?;
    if body.len() > t.max_message_bytes {
        return Err(format!(
            "message is {} bytes once encoded; Tencent allows {} (max_message_bytes)",
            body.len(),
            t.max_message_bytes
        )
        .into());
    }
    Ok(vec![PlannedJob {
        lane_key: conversation.as_str().to_owned(),
        conversation: conversation.as_str().to_owned(),
        view_user: None,
        body,
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testing::{self, tencent_target as target, NOW};
    use crate::providers::zim::body::default_media_uid;

    fn plan_with(t: &TencentTarget, fields: Value) -> Result<Value, String> {
        let m = testing::message(NOW - 1500, fields);
        plan(t, &m, testing::context())
            .map(|jobs| {
                assert_eq!(jobs.len(), 1);
                serde_json::from_str(&jobs[0].body).unwrap()
            })
            .map_err(|e| e.to_string())
    }

    /// The only element of the body's MsgBody.
    fn element(fields: Value) -> Value {
        let b = plan_with(&target(""), fields).unwrap();
        let body = b["MsgBody"].as_array().unwrap();
        assert_eq!(body.len(), 1, "{b}");
        body[0].clone()
    }

    fn refused(fields: Value) -> String {
        plan_with(&target(""), fields).unwrap_err()
    }

    fn uid() -> String {
        default_media_uid(LaneKey::conversation("alice", "bob").as_str(), "m1")
    }

    #[test]
    fn text_and_custom() {
        let b = plan_with(&target(""), json!({"type": "text", "text": "hi", "ext": "cc"})).unwrap();
        assert_eq!(
            b["MsgBody"],
            json!([{"MsgType": "TIMTextElem", "MsgContent": {"Text": "hi"}}])
        );
        assert_eq!(b["CloudCustomData"], "cc");
        assert_eq!(b["MsgTimeStamp"], (NOW - 1500) / 1000);
        assert_eq!(
            element(json!({"type": "custom", "data": "d"})),
            json!({"MsgType": "TIMCustomElem", "MsgContent": {"Data": "d"}})
        );
        assert_eq!(
            element(json!({"type": "custom", "data": "d", "desc": "a card", "custom_ext": "x"})),
            json!({"MsgType": "TIMCustomElem", "MsgContent": {"Data": "d", "Desc": "a card", "Ext": "x"}})
        );
    }

    #[test]
    fn face_and_location() {
        assert_eq!(
            element(json!({"type": "face", "face_index": 3, "face_data": "smile"})),
            json!({"MsgType": "TIMFaceElem", "MsgContent": {"Index": 3, "Data": "smile"}})
        );
        assert_eq!(
            element(json!({"type": "face", "face_index": 0}))["MsgContent"],
            json!({"Index": 0, "Data": ""})
        );
        assert_eq!(
            element(json!({"type": "location", "latitude": 22.5, "longitude": -113.25, "desc": "pier"})),
            json!({"MsgType": "TIMLocationElem",
                   "MsgContent": {"Desc": "pier", "Latitude": 22.5, "Longitude": -113.25}})
        );
    }

    #[test]
    fn image_has_original_large_and_thumbnail() {
        let e = element(json!({
            "type": "image", "url": "https://cdn/o.png", "size": 100, "width": 800, "height": 600,
            "large_url": "https://cdn/l.png", "large_size": 50, "large_width": 400, "large_height": 300,
            "thumbnail_url": "https://cdn/t.png", "thumbnail_size": 5, "thumbnail_width": 80,
            "thumbnail_height": 60, "uuid": "img-1",
        }));
        assert_eq!(
            e,
            json!({"MsgType": "TIMImageElem", "MsgContent": {
            "UUID": "img-1", "ImageFormat": 3, "ImageInfoArray": [
                {"Type": 1, "Size": 100, "Width": 800, "Height": 600, "URL": "https://cdn/o.png"},
                {"Type": 2, "Size": 50, "Width": 400, "Height": 300, "URL": "https://cdn/l.png"},
                {"Type": 3, "Size": 5, "Width": 80, "Height": 60, "URL": "https://cdn/t.png"},
            ]}})
        );
        // Only the URL: large and thumbnail fall back to the original.
        let e = element(json!({"type": "image", "url": "https://cdn/photo.JPEG?x=1"}));
        let c = &e["MsgContent"];
        assert_eq!(c["UUID"], uid());
        assert_eq!(c["ImageFormat"], 1);
        let urls: Vec<&Value> = c["ImageInfoArray"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &i["URL"])
            .collect();
        assert_eq!(urls, vec!["https://cdn/photo.JPEG?x=1"; 3]);
        let format = |f: Value, url: &str| {
            element(json!({"type": "image", "url": url, "format": f}))["MsgContent"]["ImageFormat"].clone()
        };
        assert_eq!(format(json!("gif"), "https://cdn/x"), 2);
        assert_eq!(format(json!(".bmp"), "https://cdn/x"), 4);
        assert_eq!(format(json!(4), "https://cdn/x.png"), 4);
        assert_eq!(format(json!("webp"), "https://cdn/x.png"), 255);
        assert_eq!(
            element(json!({"type": "image", "url": "https://cdn/noext"}))["MsgContent"]["ImageFormat"],
            255
        );
    }

    #[test]
    fn audio_file_and_video() {
        assert_eq!(
            element(json!({"type": "audio", "url": "https://cdn/v.amr", "size": 9, "duration_secs": 4})),
            json!({"MsgType": "TIMSoundElem", "MsgContent": {
                "Url": "https://cdn/v.amr", "UUID": uid(), "Size": 9, "Second": 4, "Download_Flag": 2}})
        );
        assert_eq!(
            element(json!({"type": "file", "url": "https://cdn/d/r.pdf", "size": 7, "uid": "f"})),
            json!({"MsgType": "TIMFileElem", "MsgContent": {
                "Url": "https://cdn/d/r.pdf", "UUID": "f", "FileSize": 7, "FileName": "r.pdf",
                "Download_Flag": 2}})
        );
        assert_eq!(
            element(json!({"type": "file", "url": "https://cdn/d/r.pdf", "file_name": "Report"}))
                ["MsgContent"]["FileName"],
            "Report"
        );
        assert_eq!(
            element(json!({
                "type": "video", "url": "https://cdn/c.MOV", "size": 1000, "duration_secs": 12, "uid": "v",
                "thumbnail_url": "https://cdn/c.png", "thumbnail_size": 10, "thumbnail_width": 320,
                "thumbnail_height": 180,
            })),
            json!({"MsgType": "TIMVideoFileElem", "MsgContent": {
                "VideoUrl": "https://cdn/c.MOV", "VideoUUID": "v", "VideoSize": 1000, "VideoSecond": 12,
                "VideoFormat": "mov", "VideoDownloadFlag": 2,
                "ThumbUrl": "https://cdn/c.png", "ThumbUUID": "v-thumb", "ThumbSize": 10, "ThumbWidth": 320,
                "ThumbHeight": 180, "ThumbFormat": "png", "ThumbDownloadFlag": 2}})
        );
        let c = element(
            json!({"type": "video", "url": "https://cdn/c", "thumbnail_url": "https://cdn/t",
                               "format": "mkv", "thumbnail_format": "webp"}),
        )["MsgContent"]
            .clone();
        assert_eq!(
            (c["VideoFormat"].clone(), c["ThumbFormat"].clone()),
            (json!("mkv"), json!("webp"))
        );
        let c = element(json!({"type": "video", "url": "https://cdn/c", "thumbnail_url": "https://cdn/t"}))
            ["MsgContent"]
            .clone();
        assert_eq!(
            (c["VideoFormat"].clone(), c["ThumbFormat"].clone()),
            (json!("mp4"), json!("jpg"))
        );
    }

    #[test]
    fn native_is_used_as_it_is() {
        let native = json!([
            {"MsgType": "TIMTextElem", "MsgContent": {"Text": "look"}},
            {"MsgType": "TIMFaceElem", "MsgContent": {"Index": 1, "Data": "x"}},
            {"MsgType": "TIMCustomElem", "MsgContent": {"Data": "d", "Sound": "s"}},
        ]);
        let b = plan_with(&target(""), json!({"type": "native", "native": native.clone()})).unwrap();
        assert_eq!(b["MsgBody"], native);
    }

    #[test]
    fn element_rules() {
        let e = refused(json!({"type": "native", "native": [
            {"MsgType": "TIMCustomElem", "MsgContent": {"Data": "a"}},
            {"MsgType": "TIMCustomElem", "MsgContent": {"Data": "b"}},
        ]}));
        assert_eq!(
            e,
            "native: MsgBody holds more than one TIMCustomElem; Tencent allows one per message"
        );
        let e = refused(
            json!({"type": "native", "native": [{"MsgType": "TIMSoundElem", "MsgContent": {"Url": "u"}}]}),
        );
        assert_eq!(
            e,
            "native: MsgBody[0] (TIMSoundElem) lacks the required field Size"
        );
        let e = refused(json!({"type": "native", "native": [{"MsgType": "TIMNopeElem", "MsgContent": {}}]}));
        assert!(
            e.contains("\"TIMNopeElem\" is not an element type Tencent IM documents"),
            "{e}"
        );
        let e = refused(json!({"type": "native", "native": [{"MsgType": "TIMTextElem"}]}));
        assert!(e.contains("MsgBody[0].MsgContent is missing"), "{e}");
        assert!(refused(json!({"type": "native", "native": []})).contains("MsgBody is empty"));
        assert!(refused(json!({"type": "native", "native": {"Text": "x"}})).contains("must be an array"));
        assert!(refused(json!({"type": "native"})).contains("needs `native`"));
        let e = refused(
            json!({"type": "native", "native": [{"MsgType": "TIMImageElem", "MsgContent": {
            "UUID": "u", "ImageFormat": 1, "ImageInfoArray": [{"Type": 1, "Size": 1, "Width": 1, "Height": 1}]}}]}),
        );
        assert_eq!(
            e,
            "native: MsgBody[0].ImageInfoArray[0] lacks the required field URL"
        );
        let e = refused(
            json!({"type": "native", "native": [{"MsgType": "TIMImageElem", "MsgContent": {
            "UUID": "u", "ImageFormat": 1, "ImageInfoArray": []}}]}),
        );
        assert!(e.contains("ImageInfoArray must be a non-empty array"), "{e}");
    }

    #[test]
    fn missing_fields_and_kinds_are_refused() {
        assert_eq!(
            refused(json!({"type": "face"})),
            "a face message needs the field `face_index`"
        );
        assert_eq!(
            refused(json!({"type": "location", "latitude": 1.0})),
            "a location message needs the field `longitude`"
        );
        assert!(
            refused(json!({"type": "location", "latitude": 91.0, "longitude": 0.0})).contains("latitude 91")
        );
        assert!(
            refused(json!({"type": "location", "latitude": 0.0, "longitude": -181.0}))
                .contains("longitude -181")
        );
        assert_eq!(
            refused(json!({"type": "image"})),
            "an image message needs the field `url`"
        );
        assert_eq!(refused(json!({"type": "audio", "url": ""})), "url is empty");
        assert!(refused(json!({"type": "file", "url": "https://cdn/"})).contains("needs `file_name`"));
        assert_eq!(
            refused(json!({"type": "video", "url": "https://cdn/v.mp4"})),
            "a video message needs the field `thumbnail_url`"
        );
        assert!(refused(json!({"type": "image", "url": "u", "format": 0})).contains("is not an ImageFormat"));
        assert!(refused(json!({"type": "image", "url": "u", "format": [1]})).contains("string or a number"));
        let e = refused(json!({"type": "video", "url": "u", "thumbnail_url": "t", "format": 5}));
        assert!(e.contains("format of a video is a string"), "{e}");
        assert!(refused(json!({"type": "multi", "items": []})).contains("exists in ZIM only"));
        let e = refused(json!({"type": "sticker"}));
        assert!(
            e.contains("supported: text, custom, face, location, image, audio, file, video, native"),
            "{e}"
        );
    }

    #[test]
    fn whole_message_limit_counts_the_encoded_body() {
        let t = target("max_message_bytes = 700");
        let ok = plan_with(
            &t,
            json!({"type": "image", "url": format!("https://cdn/{}", "u".repeat(60))}),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let e = plan_with(
            &t,
            json!({"type": "image", "url": format!("https://cdn/{}", "u".repeat(200))}),
        )
        .unwrap_err();
        assert!(
            e.contains("once encoded; Tencent allows 700 (max_message_bytes)"),
            "{e}"
        );
        // The default is 12 KB.
        assert_eq!(target("").max_message_bytes, 12 * 1024);
        let e = refused(json!({"type": "native", "native": [{"MsgType": "TIMCustomElem",
                               "MsgContent": {"Data": "d".repeat(12 * 1024)}}]}));
        assert!(e.contains("Tencent allows 12288"), "{e}");
    }

    #[test]
    fn msg_seq_follows_ms_then_index_and_fits_u32() {
        assert!(msg_seq(1_000_001, 0) > msg_seq(1_000_000, 5));
        assert!(msg_seq(1_000_000, 1) > msg_seq(1_000_000, 0));
        assert_eq!(msg_seq(1_000_000, 0), 1);
        assert!(msg_seq(1_999_999, u32::MAX) < u32::MAX);
        assert!(msg_seq(1_999_999, u32::MAX) > msg_seq(1_999_998, u32::MAX));
    }
}
