//! The alert rules (deploy/prometheus/alerts.yml) and the Grafana
//! dashboard (deploy/grafana/chatferry.json) may only use metrics a
//! running daemon exports: this test scrapes `/metrics` from a daemon
//! that has sent a batch through the simulator and compares names.
//! `promtool check rules` (scripts/check-deploy) checks the rules' syntax.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;

/// Series Prometheus makes itself for every scraped target.
const PROMETHEUS_OWN: &[&str] = &["up"];

/// Every `chatferry_*` name in a text (exprs, legends, comments alike).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("chatferry_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// Sample names in a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_grafana_use_only_exported_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let grafana_text = std::fs::read_to_string(root.join("deploy/grafana/chatferry.json")).unwrap();
    let grafana: serde_json::Value = serde_json::from_str(&grafana_text).expect("the Grafana JSON parses");
    let exprs: Vec<String> = grafana["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("every target has an expr").to_string())
        .collect();
    assert!(exprs.len() >= 10, "a dashboard worth the name: {exprs:?}");

    let app = TestApp::simulated(TencentTarget::default(), SimSetup::registering()).await;
    let lines: Vec<String> = (0..20)
        .map(|i| text_line(&format!("m{i}"), "ann", "ben", now_ms() - 10_000 + i, "hi"))
        .collect();
    app.load("b", &lines).await;
    let port = free_port();
    let mut settings = app.settings.clone();
    settings.http.listen = Some(format!("127.0.0.1:{port}"));
    let bin = Binary::new(&settings);
    let mut child = bin.spawn(false);

    // Wait until the sends and the periodic gauges have all been exported.
    let wanted: BTreeSet<String> = names_in(&rules)
        .into_iter()
        .chain(exprs.iter().flat_map(|e| names_in(e)))
        .collect();
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let scraped = poll(
        Duration::from_secs(15),
        || http_get(&metrics, None),
        |r| matches!(r, Some((200, text)) if wanted.is_subset(&exported(text))),
    )
    .await;
    let have = match scraped {
        Some((200, text)) => exported(&text),
        _ => BTreeSet::new(),
    };
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let missing: Vec<&String> = wanted.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}; exported: {have:?}"
    );

    // Any other selector (`name{...}`) is a series Prometheus makes itself.
    let all = format!("{rules}\n{}", exprs.join("\n"));
    for part in all.split('{').map(|p| {
        p.rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap()
    }) {
        if !part.is_empty() && !part.starts_with("chatferry_") {
            assert!(
                PROMETHEUS_OWN.contains(&part),
                "{part} is neither exported nor Prometheus's own"
            );
        }
    }
}
