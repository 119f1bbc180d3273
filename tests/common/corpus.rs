//! Generated corpora whose every message carries a unique label, and the
//! labels of what a provider stored, so a test can compare the two message
//! by message.

use std::collections::{BTreeMap, HashMap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::now_ms;
use super::recorder::conv as pair;
use super::settings::Kind;

/// A JSON string, owned.
pub fn str_of(v: &Value) -> String {
    v.as_str().unwrap().to_string()
}

/// The label of a stored ZIM message (see [`Corpus`]).
pub fn zim_label(m: &Value) -> String {
    let body = m["MsgBody"].as_str().unwrap();
    match m["MsgType"].as_i64().unwrap() {
        1 | 200 => body.to_string(),
        10 => {
            let v: Value = serde_json::from_str(body).unwrap();
            str_of(&v["MultiMsg"][0]["Msg"])
        }
        _ => {
            let v: Value = serde_json::from_str(body).unwrap();
            str_of(&v["Uid"])
        }
    }
}

/// The label of a stored Tencent message (see [`Corpus`]).
pub fn tim_label(m: &Value) -> String {
    let e = &m["MsgBody"][0];
    let c = &e["MsgContent"];
    let field = match e["MsgType"].as_str().unwrap() {
        "TIMTextElem" => "Text",
        "TIMCustomElem" | "TIMFaceElem" => "Data",
        "TIMLocationElem" => "Desc",
        "TIMVideoFileElem" => "VideoUUID",
        _ => "UUID",
    };
    str_of(&c[field])
}

/// One generated message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub label: String,
    pub from: String,
    pub to: String,
    pub at: i64,
    /// Whose views hold it (ZIM); both unless the line says otherwise.
    pub visible: Vec<String>,
    pub line: String,
}

/// A generated corpus, in file order. Every message carries a unique
/// label that the provider stores as the text, the custom data, the
/// face/location text or the media id, so what the simulator holds can be
/// compared message by message.
pub struct Corpus {
    pub msgs: Vec<Msg>,
}

/// What a corpus looks like.
pub struct Shape {
    pub kind: Kind,
    pub conversations: usize,
    pub messages: usize,
    pub seed: u64,
    /// Share of messages visible to one side only (ZIM).
    pub one_sided: f64,
    /// Share of messages that are not text (custom, media, ...).
    pub non_text: f64,
}

impl Shape {
    /// `messages` text messages in `conversations` conversations of
    /// `kind`, from seed 0, visible to both sides.
    pub fn new(kind: Kind, conversations: usize, messages: usize) -> Shape {
        Shape {
            kind,
            conversations,
            messages,
            seed: 0,
            one_sided: 0.0,
            non_text: 0.0,
        }
    }

    /// The same shape, drawn from `seed`.
    pub fn seed(self, seed: u64) -> Shape {
        Shape { seed, ..self }
    }

    /// The same shape, with this share of messages visible to one side.
    pub fn one_sided(self, one_sided: f64) -> Shape {
        Shape { one_sided, ..self }
    }

    /// The same shape, with this share of messages not text.
    pub fn non_text(self, non_text: f64) -> Shape {
        Shape { non_text, ..self }
    }

    /// A corpus of this shape (see [`Corpus::generate`]).
    pub fn generate(&self) -> Corpus {
        Corpus::generate(self)
    }
}

const ZIM_KINDS: &[&str] = &["custom", "image", "file", "audio", "video", "multi"];
const TIM_KINDS: &[&str] = &["custom", "image", "file", "audio", "video", "face", "location"];

impl Corpus {
    /// Conversations whose send times come in bursts: a quarter of the gaps
    /// are 0 ms (same millisecond), a third a few hundred ms (same second),
    /// the rest seconds to two minutes. Conversations are interleaved in
    /// time order, ties in generation order; all times lie in the last
    /// few hours.
    pub fn generate(shape: &Shape) -> Corpus {
        let mut rng = StdRng::seed_from_u64(shape.seed);
        // Messages are ~24 s apart on average: a long conversation starts
        // early enough that its last message is not in the future.
        let longest = shape.messages.div_ceil(shape.conversations.max(1)) as i64;
        let base = now_ms() - 4 * 3_600_000 - (longest * 30_000 - 3 * 3_600_000).max(0);
        let kinds = match shape.kind {
            Kind::Zim => ZIM_KINDS,
            Kind::Tencent => TIM_KINDS,
        };
        let mut all: Vec<Msg> = Vec::with_capacity(shape.messages);
        for c in 0..shape.conversations {
            let (a, b) = (format!("u{c}a"), format!("u{c}b"));
            let n =
                shape.messages / shape.conversations + usize::from(c < shape.messages % shape.conversations);
            let mut at = base + rng.gen_range(0..600_000);
            for k in 0..n {
                let r: f64 = rng.gen();
                at += if r < 0.25 {
                    0
                } else if r < 0.6 {
                    rng.gen_range(1..300)
                } else {
                    rng.gen_range(1_000..120_000)
                };
                let (from, to) = if rng.gen_bool(0.5) { (&a, &b) } else { (&b, &a) };
                let label = format!("c{c}m{k}");
                let kind = if rng.gen_bool(shape.non_text) {
                    kinds[rng.gen_range(0..kinds.len())]
                } else {
                    "text"
                };
                let mut v = message_fields(kind, &label);
                v["id"] = json!(format!("m{k}"));
                v["from"] = json!(from);
                v["to"] = json!(to);
                v["sent_at_ms"] = json!(at);
                let mut visible = vec![from.clone(), to.clone()];
                if shape.one_sided > 0.0 && rng.gen_bool(shape.one_sided) {
                    let who = if rng.gen_bool(0.5) { from } else { to };
                    v["visible_to"] = json!([who]);
                    visible = vec![who.clone()];
                }
                all.push(Msg {
                    label,
                    from: from.clone(),
                    to: to.clone(),
                    at,
                    visible,
                    line: v.to_string(),
                });
            }
        }
        // Stable: same-time messages keep their generation order.
        all.sort_by_key(|m| m.at);
        Corpus { msgs: all }
    }

    /// The JSON lines, in file order.
    pub fn lines(&self) -> Vec<String> {
        self.msgs.iter().map(|m| m.line.clone()).collect()
    }

    /// How many conversations the corpus spans.
    pub fn conversations(&self) -> usize {
        let mut c: Vec<(String, String)> = self.msgs.iter().map(|m| pair(&m.from, &m.to)).collect();
        c.sort();
        c.dedup();
        c.len()
    }

    /// Each ZIM view `(user, peer)`: its labels and send times, in order.
    pub fn zim_views(&self) -> BTreeMap<(String, String), Vec<(String, i64)>> {
        let mut out: BTreeMap<(String, String), Vec<(String, i64)>> = BTreeMap::new();
        for m in &self.msgs {
            for u in &m.visible {
                let peer = if *u == m.from { &m.to } else { &m.from };
                out.entry((u.clone(), peer.clone()))
                    .or_default()
                    .push((m.label.clone(), m.at));
            }
        }
        out
    }

    /// Each Tencent conversation `(a, b)` (a < b): labels and send seconds,
    /// in order.
    pub fn tim_conversations(&self) -> BTreeMap<(String, String), Vec<(String, i64)>> {
        let mut out: BTreeMap<(String, String), Vec<(String, i64)>> = BTreeMap::new();
        for m in &self.msgs {
            out.entry(pair(&m.from, &m.to))
                .or_default()
                .push((m.label.clone(), m.at / 1000));
        }
        out
    }

    /// Pairs of messages of one conversation in the same millisecond.
    pub fn same_ms_pairs(&self) -> usize {
        let mut n = 0;
        let mut last: HashMap<(String, String), i64> = HashMap::new();
        for m in &self.msgs {
            if last.insert(pair(&m.from, &m.to), m.at) == Some(m.at) {
                n += 1;
            }
        }
        n
    }
}

/// The type-specific fields of a generated message labelled `label`.
pub fn message_fields(kind: &str, label: &str) -> Value {
    let cdn = "https://cdn.example.com/media";
    match kind {
        "text" => json!({"type": "text", "text": label}),
        "custom" => json!({"type": "custom", "data": label, "sub_type": 7, "search_text": "card"}),
        "image" => json!({
            "type": "image", "uid": label, "url": format!("{cdn}/{label}.jpg"), "width": 1280, "height": 720,
            "size": 123_456, "thumbnail_url": format!("{cdn}/{label}-t.jpg"), "thumbnail_width": 128,
            "thumbnail_height": 72,
        }),
        "file" => {
            json!({"type": "file", "uid": label, "url": format!("{cdn}/{label}/report.pdf"), "size": 4096})
        }
        "audio" => json!({"type": "audio", "uid": label, "url": format!("{cdn}/{label}.m4a"), "size": 2048,
                          "duration_secs": 5}),
        "video" => json!({
            "type": "video", "uid": label, "url": format!("{cdn}/{label}.mp4"), "size": 1 << 20,
            "duration_secs": 31, "thumbnail_url": format!("{cdn}/{label}.jpg"), "thumbnail_width": 320,
            "thumbnail_height": 180,
        }),
        "multi" => json!({"type": "multi", "items": [
            {"type": "text", "text": label},
            {"type": "image", "url": format!("{cdn}/{label}.png"), "width": 10, "height": 10},
            {"type": "file", "url": format!("{cdn}/{label}.zip"), "size": 1},
        ]}),
        "face" => json!({"type": "face", "face_index": 4, "face_data": label}),
        "location" => json!({"type": "location", "latitude": 31.23, "longitude": 121.47, "desc": label}),
        other => panic!("no generator for {other}"),
    }
}
