//! What a test asks of an app whose one target is the simulator: load a
//! corpus, send it all, and compare what the simulator holds with the
//! corpus, message by message.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chatferry::providers::Provider;
use chatferry::simulate::FaultConfig;
use serde_json::Value;

use super::app::{SimSetup, TestApp};
use super::corpus::{str_of, tim_label, zim_label, Corpus, Shape};
use super::settings::{Kind, Target};
use super::sim::TestSim;

/// Labels and stored times per ZIM view or Tencent conversation.
pub type Stored = BTreeMap<(String, String), Vec<(String, i64)>>;

/// The faults of one provider: transient errors and calls applied then
/// dropped, each at its rate.
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

/// A corpus of `shape` holds each of `kinds`; sent through a simulator, it
/// is stored exactly, validated and verified clean.
pub async fn assert_every_kind_round_trips(shape: &Shape, kinds: &[&str]) {
    let app = TestApp::simulated(Target::of(shape.kind), SimSetup::registering()).await;
    let corpus = shape.generate();
    for kind in kinds {
        assert!(
            corpus
                .msgs
                .iter()
                .any(|m| m.line.contains(&format!("\"type\":\"{kind}\""))),
            "the corpus has no {kind}"
        );
    }
    app.load_corpus(&corpus, "kinds").await;
    app.send_all().await;
    assert_eq!(app.not_done().await, vec![]);
    app.assert_holds_exactly(&corpus);
    assert_eq!(app.stats()["validation_failures"], 0);
    app.assert_verify_clean("kinds").await;
}

impl TestApp<TestSim> {
    /// The provider of the app's one target.
    pub fn kind(&self) -> Kind {
        self.settings.targets[0].kind()
    }

    /// Loads the corpus as batch `batch`; every line must be accepted.
    pub async fn load_corpus(&self, corpus: &Corpus, batch: &str) -> chatferry::load::LoadSummary {
        let s = self.load(batch, &corpus.lines()).await;
        assert_eq!(s.rejected, 0, "every generated line loads: {s:?}");
        assert_eq!(s.accepted as usize, corpus.msgs.len());
        s
    }

    /// Runs an in-process worker until nothing is left to send; asserts
    /// no target halted.
    pub async fn send_all(&self) {
        let report = self.run_until_idle().await;
        assert!(report.halted.is_empty(), "halted: {:?}", report.halted);
    }

    /// This provider's counters in the simulator.
    pub fn stats(&self) -> Value {
        self.provider.sim.stats()[self.kind().side()].clone()
    }

    /// How many messages this provider has stored.
    pub fn stored_count(&self) -> u64 {
        self.stats()["stored"].as_u64().unwrap()
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
    pub fn stored(&self) -> Stored {
        let dump = self.provider.sim.dump();
        let mut out = BTreeMap::new();
        let kind = self.kind();
        for app in dump[kind.side()].as_array().unwrap() {
            match kind {
                Kind::Zim => out.extend(zim_views(app)),
                Kind::Tencent => out.extend(tim_conversations(app)),
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

    /// [`TestApp::assert_holds_exactly`]; with `arrivals_may_pass`, calls
    /// may have arrived out of time order (Tencent places them by time:
    /// live messages pass history) as long as the display order is right.
    pub fn assert_holds(&self, corpus: &Corpus, arrivals_may_pass: bool) {
        let want = match self.kind() {
            Kind::Zim => corpus.zim_views(),
            Kind::Tencent => corpus.tim_conversations(),
        };
        assert_same_messages(&want, &self.stored());
        let st = self.stats();
        assert_eq!(st["duplicates_stored"], 0, "{st}");
        match self.kind() {
            Kind::Zim if !arrivals_may_pass => assert_eq!(st["order_inversions"], 0, "{st}"),
            Kind::Zim => {}
            // Tencent displays by MsgTimeStamp then MsgSeq whatever the
            // arrival order (导入单聊消息), so a lane may send with a window;
            // what must hold is that each conversation's last import is its
            // newest message (the conversation's latest-message state),
            // unless live messages are allowed to pass queued history.
            Kind::Tencent if arrivals_may_pass => {}
            Kind::Tencent => self.assert_last_imports_are_newest(),
        }
        let total: usize = want.values().map(Vec::len).sum();
        assert_eq!(st["stored"], total as u64, "{st}");
    }

    /// Every Tencent conversation's last import is its newest message.
    fn assert_last_imports_are_newest(&self) {
        let dump = self.provider.sim.dump();
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

/// The same views or conversations, each with the same messages.
fn assert_same_messages(want: &Stored, have: &Stored) {
    let want_keys: Vec<_> = want.keys().collect();
    let have_keys: Vec<_> = have.keys().collect();
    assert_eq!(have_keys.len(), want_keys.len(), "number of views/conversations");
    assert_eq!(have_keys, want_keys, "views/conversations");
    let mut bad = Vec::new();
    for (key, want) in want {
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
}

/// One ZIM app's views in the dump; messages users sent on ZIM itself are
/// not ours and left out.
fn zim_views(app: &Value) -> Stored {
    let mut out = BTreeMap::new();
    for v in app["views"].as_array().unwrap() {
        let msgs = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["Live"] != true)
            .map(|m| (zim_label(m), m["SendMessageTime"].as_i64().unwrap()))
            .collect();
        out.insert((str_of(&v["user"]), str_of(&v["peer"])), msgs);
    }
    out
}

/// One Tencent app's conversations in the dump.
fn tim_conversations(app: &Value) -> Stored {
    let mut out = BTreeMap::new();
    for c in app["conversations"].as_array().unwrap() {
        let msgs = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (tim_label(m), m["MsgTimeStamp"].as_i64().unwrap()))
            .collect();
        out.insert((str_of(&c["a"]), str_of(&c["b"])), msgs);
    }
    out
}
