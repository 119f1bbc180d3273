//! `chatferry plan`: a dry run of `load` that needs no database. The
//! configured database is a closed port, so any attempt to connect would
//! fail the command; the counts, reasons, line numbers and send time are
//! what an operator reads before a migration.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

fn text(id: &str, from: &str, to: &str, at: i64) -> String {
    text_line(id, from, to, at, "hi")
}

/// The binary on a config whose database cannot be reached: `plan` must
/// not need it.
fn binary() -> Binary {
    let tim = TencentTarget {
        rate_per_sec: Some(50.0),
        account_rate_per_sec: Some(10.0),
        ..Default::default()
    };
    let zim = ZimTarget {
        rate_per_sec: Some(10.0),
        ..Default::default()
    };
    let settings = Settings {
        database_url: Some("postgres://nobody@127.0.0.1:1/none".into()),
        ..Default::default()
    };
    Binary::new(&settings.with(tim).with(zim))
}

/// The plan's input: good lines, a broken one, two from = to, a blank.
fn input(dir: &Path) -> PathBuf {
    let now = now_ms() - 60_000;
    let lines = [
        text("1", "alice", "bob", now),
        text("2", "bob", "alice", now + 1),
        "{\"id\":\"3\",\"from\":".to_string(), // line 3: broken JSON
        text("4", "carol", "carol", now),      // line 4: from = to
        String::new(),                         // line 5: blank
        text("6", "alice", "dave", now + 2),
        text("7", "erin", "erin", now), // line 7: from = to
        text("8", "alice", "bob", now + 3),
    ];
    let p = dir.join("in.jsonl");
    let mut f = std::fs::File::create(&p).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    p
}

async fn plan(bin: &Binary, args: &[&str]) -> (i32, String, String) {
    let ran = bin.cli(&[&["plan"], args].concat()).await;
    (ran.code(), ran.stdout, ran.stderr)
}

#[tokio::test]
async fn plan_counts_reasons_and_send_time_without_a_database() {
    let bin = binary();
    let file = input(bin.dir());
    let f = file.to_str().unwrap();
    let (code, out, err) = plan(&bin, &["--target", "tim", "--json", f]).await;
    assert_eq!(code, 3, "some lines are rejected: exit 3; stderr: {err}");
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["lines"], 7);
    assert_eq!(r["blank"], 1);
    assert_eq!(r["accepted"], 4);
    assert_eq!(r["rejected"], 3);
    assert_eq!(r["jobs"], 4, "Tencent: one call per message");
    assert_eq!(r["conversations"], 2);
    assert_eq!(r["views"], 2);
    assert_eq!(r["users"], 3);
    assert_eq!(r["largest_conversations"][0]["messages"], 3);
    let reasons = r["rejected_by_reason"].as_array().unwrap();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    // The two from = to lines share a reason; most frequent first.
    assert_eq!(reasons[0]["count"], 2);
    let lines: Vec<u64> = reasons[0]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [4, 7]);
    assert_eq!(reasons[1]["examples"][0]["line"], 3);
    assert!(
        reasons[1]["reason"].as_str().unwrap().contains("JSON"),
        "{reasons:?}"
    );
    // 4 calls at 50 × 0.98 calls/s.
    let secs = r["send_secs"].as_f64().unwrap();
    assert!((secs - 4.0 / 49.0).abs() < 1e-9, "{secs}");

    let (_, out, _) = plan(&bin, &["--target", "tim", "--json", "--replicas", "3", f]).await;
    let r: Value = serde_json::from_str(&out).unwrap();
    // Three replicas each take a whole number of calls a second, less
    // 0.5 % (ratelimit::share): 3 × floor(50 × 0.98 / 3) / 1.005 together.
    let together = 3.0 * (50.0_f64 * 0.98 / 3.0).floor() / 1.005;
    assert!(
        (r["send_secs"].as_f64().unwrap() - 4.0 / together).abs() < 1e-9,
        "{r}"
    );
}

#[tokio::test]
async fn plan_prints_a_readable_report_and_counts_zim_views() {
    let bin = binary();
    let file = input(bin.dir());
    let (code, out, _) = plan(&bin, &["--target", "zim", file.to_str().unwrap()]).await;
    assert_eq!(code, 3);
    assert!(out.contains("4 accepted, 3 rejected"), "{out}");
    assert!(out.contains("line 3:"), "{out}");
    assert!(out.contains("line 4:") && out.contains("line 7:"), "{out}");
    // ZIM: one job per participant's view.
    assert!(out.contains("jobs (provider calls): 8"), "{out}");
    assert!(out.contains("views (lanes): 4"), "{out}");
    // 8 calls at 10 × 0.98 calls/s.
    assert!(out.contains("send time: 0.8s at 9.8 calls/s"), "{out}");

    let clean = bin.dir().join("clean.jsonl");
    std::fs::write(&clean, text("1", "a", "b", now_ms() - 1000) + "\n").unwrap();
    let (code, _, err) = plan(&bin, &["--target", "zim", clean.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = plan(&bin, &["--target", "nope", clean.to_str().unwrap()]).await;
    assert_eq!(code, 2);
    assert!(err.contains("unknown target"), "{err}");
}
