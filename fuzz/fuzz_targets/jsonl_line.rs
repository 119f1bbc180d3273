//! One input line, as the loader sees it: `parse_line`, then (when the line
//! parses) both providers' planners.
#![no_main]

use std::sync::OnceLock;

use chatferry::config::{Config, TargetConfig};
use chatferry::load::input::parse_line;
use chatferry::providers::{plan, PlanContext};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[targets.zim]
kind = "zim"
endpoint = "http://127.0.0.1:9/"
app_id = 1
server_secret = "fuzz"

[targets.tim]
kind = "tencent"
endpoint = "http://127.0.0.1:9/"
sdk_app_id = 1400000000
admin_identifier = "administrator"
secret_key = "fuzz"
"#;

/// A fixed load time (2027-01-15), for inputs that are not in the window.
const NOW_MS: i64 = 1_800_000_000_000;

fn targets() -> &'static (TargetConfig, TargetConfig) {
    static T: OnceLock<(TargetConfig, TargetConfig)> = OnceLock::new();
    T.get_or_init(|| {
        let c = Config::from_toml(CONFIG).expect("fuzz config is valid");
        (c.targets["zim"].clone(), c.targets["tim"].clone())
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = parse_line(data) else { return };
    let (zim, tim) = targets();
    // The fixed clock, and a clock at the message's own time (so the ZIM
    // history window and the "future" check pass and the body is built).
    // The second same-ms index spreads over all of u32, past Tencent's cap.
    let index = (data.len() as u32).wrapping_mul(2_654_435_761);
    // Both kinds of batch: history, and live (the cut-over's sync mode).
    for (now_ms, same_ms_index, live) in [(NOW_MS, 0, false), (msg.sent_at_ms, index, true)] {
        let ctx = PlanContext {
            now_ms,
            same_ms_index,
            live,
        };
        for target in [zim, tim] {
            if let Ok(jobs) = plan(target, &msg, ctx) {
                for job in &jobs {
                    assert!(!job.lane_key.is_empty(), "empty lane key");
                    assert!(
                        serde_json::from_str::<serde_json::Value>(&job.body).is_ok(),
                        "planned body is not JSON: {}",
                        job.body
                    );
                }
            }
        }
    }
});
