//! What the provider modules' unit tests share: a target from TOML, an
//! input message from a few fields, the load clock.

use std::collections::HashSet;
use std::fmt::Debug;

use serde_json::{json, Value};

use super::PlanContext;
use crate::config::{Config, TargetConfig, TencentTarget, ZimTarget};
use crate::load::input::InputMessage;

/// The load clock of the tests, Unix ms.
pub(crate) const NOW: i64 = 1_700_000_000_000;

/// The required settings of a ZIM target.
const ZIM: &str = "[targets.z]\nkind = \"zim\"\nendpoint = \"http://127.0.0.1:9/\"\napp_id = 1\n\
                   server_secret = \"s\"\n";
/// The required settings of a Tencent target.
const TENCENT: &str = "[targets.t]\nkind = \"tencent\"\nendpoint = \"http://127.0.0.1:9/\"\n\
                       sdk_app_id = 1\nadmin_identifier = \"admin\"\nsecret_key = \"k\"\n";

/// The one target of `required` settings and `extra` TOML lines.
fn target(required: &str, extra: &str) -> TargetConfig {
    let c = Config::from_toml(&format!("{required}{extra}")).unwrap();
    c.targets.into_values().next().expect("the TOML defines a target")
}

/// A ZIM target with the settings `extra` (TOML lines).
pub(crate) fn zim_target(extra: &str) -> ZimTarget {
    match target(ZIM, extra) {
        TargetConfig::Zim(z) => z,
        TargetConfig::Tencent(_) => unreachable!(),
    }
}

/// A Tencent target with the settings `extra` (TOML lines).
pub(crate) fn tencent_target(extra: &str) -> TencentTarget {
    match target(TENCENT, extra) {
        TargetConfig::Tencent(t) => t,
        TargetConfig::Zim(_) => unreachable!(),
    }
}

/// Message `m1` from alice to bob at `sent_at_ms`, with `fields` added.
pub(crate) fn message(sent_at_ms: i64, fields: Value) -> InputMessage {
    let mut v = json!({"id": "m1", "from": "alice", "to": "bob", "sent_at_ms": sent_at_ms});
    v.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    crate::load::input::parse_line(v.to_string().as_bytes()).unwrap()
}

/// A history (not live) load at [`NOW`], first of its millisecond.
pub(crate) fn context() -> PlanContext {
    PlanContext {
        now_ms: NOW,
        same_ms_index: 0,
        live: false,
    }
}

/// Asserts that `classify` puts every code of `table` in its class.
pub(crate) fn assert_classes<C: Copy + PartialEq + Debug>(table: &[(&[i64], C)], classify: fn(i64) -> C) {
    for (codes, class) in table {
        for c in *codes {
            assert_eq!(classify(*c), *class, "{c}");
        }
    }
}

/// Asserts that no code sits in two of the `lists`.
pub(crate) fn assert_disjoint(lists: &[&[i64]]) {
    let mut seen = HashSet::new();
    for c in lists.concat() {
        assert!(seen.insert(c), "{c} is listed twice");
    }
}
