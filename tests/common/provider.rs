//! End-to-end helpers for tests/zim.rs and tests/tencent.rs: a fresh
//! database and an in-process simulator, one target pointing at it, a
//! generated corpus whose every message carries a unique label, the
//! simulator's stored state read back as labels, and the real binary run
//! from a config file.

#![allow(dead_code)]

#[path = "sim.rs"]
pub mod sim;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chatferry::config::Config;
use chatferry::providers::Provider;
use chatferry::simulate::{FaultConfig, SimOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::{jsonl, now_ms, TestDb};
use sim::{TestSim, TIM_ADMIN, TIM_APP, TIM_KEY, ZIM_APP, ZIM_SECRET};

/// Calls per second for every API, in the simulator and in the target:
/// far above the providers' real limits so the suites stay fast.
pub const RATE: f64 = 5000.0;

/// Worker settings: fast retries, and leases short enough that a killed
/// daemon's lanes come free within seconds, yet with room for a loaded
/// test machine's late heartbeats.
pub const WORKER: &str = "[worker]\nconcurrency = 64\nlease_secs = 4\nrequest_timeout_ms = 1000\n\
    poll_interval_ms = 20\nretry_min_ms = 10\nretry_max_ms = 50\nshutdown_grace_secs = 5\nreconcile_settle_secs = 2\n";

/// Which provider a test drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Zim,
    Tencent,
}

impl Kind {
    /// The target's name in the configuration.
    pub fn target(self) -> &'static str {
        match self {
            Kind::Zim => "zim",
            Kind::Tencent => "tim",
        }
    }

    /// The provider's key in the simulator's stats.
    pub fn side(self) -> &'static str {
        match self {
            Kind::Zim => "zim",
            Kind::Tencent => "tencent",
        }
    }
}

/// How to set an environment up.
pub struct Setup {
    pub kind: Kind,
    pub faults: FaultConfig,
    /// The simulator registers unknown users on first use.
    pub auto_register: bool,
    /// `ensure_users` / `ensure_accounts` on the target.
    pub ensure: bool,
}

/// A database, a simulator and a configuration whose one target is the
/// simulator.
pub struct Env {
    pub kind: Kind,
    pub db: TestDb,
    pub sim: TestSim,
    /// The whole configuration as TOML (for the binary).
    pub toml: String,
    pub cfg: Config,
}

impl Env {
    pub async fn start(setup: Setup) -> Env {
        let sim = TestSim::start(
            &sim::config(),
            SimOptions {
                auto_register: setup.auto_register,
                faults: setup.faults,
                rate_override: Some(RATE),
                ..Default::default()
            },
        )
        .await;
        let db = TestDb::new().await;
        let base = sim.sim.base_url();
        let target = match setup.kind {
            Kind::Zim => format!(
                "[targets.zim]\nkind = \"zim\"\nendpoint = \"{base}\"\napp_id = {ZIM_APP}\n\
                 server_secret = \"{ZIM_SECRET}\"\nrate_per_sec = {RATE}\nquery_rate_per_sec = {RATE}\n\
                 register_rate_per_sec = {RATE}\nensure_users = {}\n",
                setup.ensure
            ),
            Kind::Tencent => format!(
                "[targets.tim]\nkind = \"tencent\"\nendpoint = \"{base}\"\nsdk_app_id = {TIM_APP}\n\
                 admin_identifier = \"{TIM_ADMIN}\"\nsecret_key = \"{TIM_KEY}\"\nrate_per_sec = {RATE}\n\
                 query_rate_per_sec = {RATE}\naccount_rate_per_sec = {RATE}\nensure_accounts = {}\n",
                setup.ensure
            ),
        };
        let toml = format!(
            "[database]\nurl = \"{}\"\n[log]\nlevel = \"warn\"\n{WORKER}{target}",
            db.url
        );
        let cfg = Config::from_toml(&toml).expect("test config parses");
        Env {
            kind: setup.kind,
            db,
            sim,
            toml,
            cfg,
        }
    }

    pub fn target(&self) -> &'static str {
        self.kind.target()
    }

    /// Loads the corpus as batch `batch`; every line must be accepted.
    pub async fn load(&self, corpus: &Corpus, batch: &str) -> chatferry::load::LoadSummary {
        let f = jsonl(&corpus.lines());
        let s = super::load(&self.db, &self.cfg, self.target(), batch, &[f.path()], None).await;
        assert_eq!(s.rejected, 0, "every generated line loads: {s:?}");
        assert_eq!(s.accepted as usize, corpus.msgs.len());
        s
    }

    /// Runs an in-process worker until nothing is left to send.
    pub async fn run_until_idle(&self) {
        let report = super::run_until_idle(&self.db, &self.cfg).await;
        assert!(report.halted.is_empty(), "halted: {:?}", report.halted);
    }

    /// This provider's counters in the simulator.
    pub fn stats(&self) -> Value {
        self.sim.sim.stats()[self.kind.side()].clone()
    }

    /// Jobs not done, by status (empty when all are done).
    pub async fn not_done(&self) -> Vec<(String, i64)> {
        sqlx::query_as(
            "SELECT status::text, count(*) FROM chatferry.jobs WHERE status <> 'done' GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(self.db.store.pool())
        .await
        .unwrap()
    }

    pub async fn jobs(&self) -> i64 {
        self.db.scalar("SELECT count(*) FROM chatferry.jobs").await
    }

    /// `chatferry verify` of a batch through the library; asserts it is clean.
    pub async fn assert_verify_clean(&self, batch: &str) {
        let providers: HashMap<String, Arc<dyn Provider>> = chatferry::providers::build_all(&self.cfg)
            .unwrap()
            .into_iter()
            .collect();
        let r = chatferry::verify::run(&self.db.store, &providers, batch)
            .await
            .unwrap();
        assert!(
            r.clean(),
            "verify: {} of {} lanes clean; missing {}, extra {}, out of order {}, unreadable {}; first problems: {:?}",
            r.clean_lanes,
            r.lanes,
            r.missing,
            r.extra,
            r.out_of_order,
            r.unreadable_lanes,
            r.problems.iter().take(3).collect::<Vec<_>>()
        );
        assert!(r.lanes > 0);
        assert_eq!(r.unverifiable, 0);
    }

    /// What the simulator holds, as labels: per ZIM view `(user, peer)` in
    /// stored order, per Tencent conversation `(a, b)` (a < b) in display
    /// order. Each label comes with the stored time (ZIM ms, Tencent s).
    pub fn stored(&self) -> BTreeMap<(String, String), Vec<(String, i64)>> {
        let dump = self.sim.sim.dump();
        let mut out = BTreeMap::new();
        match self.kind {
            Kind::Zim => {
                for app in dump["zim"].as_array().unwrap() {
                    for v in app["views"].as_array().unwrap() {
                        let key = (str_of(&v["user"]), str_of(&v["peer"]));
                        // Messages users sent on ZIM itself are not ours.
                        let msgs = v["messages"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|m| m["Live"] != true)
                            .map(|m| (zim_label(m), m["SendMessageTime"].as_i64().unwrap()))
                            .collect();
                        out.insert(key, msgs);
                    }
                }
            }
            Kind::Tencent => {
                for app in dump["tencent"].as_array().unwrap() {
                    for c in app["conversations"].as_array().unwrap() {
                        let key = (str_of(&c["a"]), str_of(&c["b"]));
                        let msgs = c["messages"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|m| (tim_label(m), m["MsgTimeStamp"].as_i64().unwrap()))
                            .collect();
                        out.insert(key, msgs);
                    }
                }
            }
        }
        out
    }

    /// Asserts the simulator holds exactly the corpus: every view (ZIM) or
    /// conversation (Tencent) equals its source, in source order, with the
    /// source times; and no duplicate was stored.
    pub fn assert_holds_exactly(&self, corpus: &Corpus) {
        self.assert_holds(corpus, false);
    }

    /// [`Env::assert_holds_exactly`]; with `arrivals_may_pass`, calls may
    /// have arrived out of time order (Tencent places them by time: live
    /// messages pass history) as long as the display order is right.
    pub fn assert_holds(&self, corpus: &Corpus, arrivals_may_pass: bool) {
        let want = match self.kind {
            Kind::Zim => corpus.zim_views(),
            Kind::Tencent => corpus.tim_conversations(),
        };
        let have = self.stored();
        let want_keys: Vec<_> = want.keys().collect();
        let have_keys: Vec<_> = have.keys().collect();
        assert_eq!(have_keys.len(), want_keys.len(), "number of views/conversations");
        assert_eq!(have_keys, want_keys, "views/conversations");
        let mut bad = Vec::new();
        for (key, want) in &want {
            let got = &have[key];
            if got != want {
                bad.push(format!(
                    "{key:?}: want {} messages, have {}; first difference at {}",
                    want.len(),
                    got.len(),
                    got.iter()
                        .zip(want)
                        .position(|(a, b)| a != b)
                        .unwrap_or(got.len().min(want.len()))
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{} of {} differ: {:?}",
            bad.len(),
            want.len(),
            &bad[..bad.len().min(5)]
        );
        let st = self.stats();
        assert_eq!(st["duplicates_stored"], 0, "{st}");
        match self.kind {
            Kind::Zim if !arrivals_may_pass => assert_eq!(st["order_inversions"], 0, "{st}"),
            Kind::Zim => {}
            // Tencent displays by MsgTimeStamp then MsgSeq whatever the
            // arrival order (导入单聊消息), so a lane may send with a window;
            // what must hold is that each conversation's last import is its
            // newest message (the conversation's latest-message state),
            // unless live messages are allowed to pass queued history.
            Kind::Tencent if arrivals_may_pass => {}
            Kind::Tencent => {
                let dump = self.sim.sim.dump();
                let stale: Vec<_> = dump["tencent"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|app| app["conversations"].as_array().unwrap())
                    .filter(|c| c["last_is_newest"] != true)
                    .map(|c| format!("{}/{}", c["a"], c["b"]))
                    .collect();
                assert!(
                    stale.is_empty(),
                    "last import is not the newest message: {stale:?}"
                );
            }
        }
        let total: usize = want.values().map(Vec::len).sum();
        assert_eq!(st["stored"], total as u64, "{st}");
    }

    /// Writes the configuration for the binary into `dir`.
    pub fn write_config(&self, dir: &Path) -> PathBuf {
        let p = dir.join("daemon.toml");
        std::fs::write(&p, &self.toml).unwrap();
        p
    }

    /// How many messages this provider has stored.
    pub fn stored_count(&self) -> u64 {
        self.stats()["stored"].as_u64().unwrap()
    }
}

fn str_of(v: &Value) -> String {
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

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.into(), b.into())
    } else {
        (b.into(), a.into())
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

/// The faults of one provider.
pub fn faults(kind: Kind, seed: u64, transient: f64, apply_then_drop: f64) -> FaultConfig {
    let mut f = FaultConfig {
        seed,
        ..Default::default()
    };
    let side = match kind {
        Kind::Zim => &mut f.zim,
        Kind::Tencent => &mut f.tencent,
    };
    side.transient_rate = transient;
    side.apply_then_drop_rate = apply_then_drop;
    f
}

/// The real binary, `run` (optionally `--exit-when-idle`) with a config
/// file; its stderr goes to `log`.
pub fn spawn_daemon(config: &Path, exit_when_idle: bool, log: &Path) -> tokio::process::Child {
    let mut args = vec!["--config", config.to_str().unwrap(), "run"];
    if exit_when_idle {
        args.push("--exit-when-idle");
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_chatferry"))
        .args(&args)
        .env_remove("DATABASE_URL")
        .env_remove("CHATFERRY_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the chatferry binary starts")
}

/// Starts the daemon, waits until the simulator has stored at least
/// `stored` messages of this provider, and kills it with SIGKILL.
pub async fn run_and_kill_at(env: &Env, config: &Path, log: &Path, stored: u64) {
    let mut child = spawn_daemon(config, false, log);
    let mut exited = None;
    super::wait_until(
        Duration::from_secs(60),
        &format!("{stored} messages stored"),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            env.stored_count() >= stored
        },
    )
    .await;
    assert!(
        exited.is_none(),
        "the daemon exited on its own ({exited:?}): {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
}

/// Runs `run --exit-when-idle` to its end and asserts it exits 0.
pub async fn run_to_the_end(config: &Path, log: &Path) {
    let mut child = spawn_daemon(config, true, log);
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("run --exit-when-idle ends")
        .unwrap();
    assert!(
        status.success(),
        "run --exit-when-idle: {status}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}
