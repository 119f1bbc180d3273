//! Every message kind, each media type and multi-item included, as a user
//! runs it: `chatferry load`, `chatferry run --exit-when-idle` and
//! `chatferry verify` (the real binary) against the built-in simulator,
//! which follows the vendors' documents: ZIM reads media and multi-item
//! back URL-encoded in another schema, so reconcile and verify must parse
//! it. A share of calls is applied and then dropped, so in-doubt jobs of
//! every kind are reconciled (ZIM) or resent with their frozen triple
//! (Tencent); nothing may be stored twice. And the lines ZIM's documents
//! forbid are rejected at load, naming the line and the field.

mod common;

use common::*;
use common::{jsonl, now_ms};
use serde_json::{json, Value};

/// Runs the binary with `args` after `--config`; returns (exit code,
/// stdout then stderr).
async fn run(bin: &Binary, args: &[&str]) -> (i32, String) {
    let ran = bin.cli(args).await;
    (ran.code(), ran.text())
}

const CDN: &str = "https://cdn.example.com/media";

/// The ZIM kinds, each labelled as tests/common/provider.rs reads labels
/// back (text, custom data, media Uid, a multi-item's first part).
fn zim_kind(i: usize, label: &str) -> Value {
    match i % 10 {
        0 => json!({"type": "text", "text": label, "ext": "e"}),
        1 => json!({"type": "custom", "data": label, "sub_type": 9, "search_text": "s", "ext": "e"}),
        2 => json!({"type": "image", "uid": label, "url": format!("{CDN}/{label}/o.jpg?sig=a+b"),
                    "file_name": "photo one.jpg", "width": 10, "height": 20, "size": 3,
                    "large_url": format!("{CDN}/{label}/l.jpg"), "thumbnail_url": format!("{CDN}/{label}/t.jpg")}),
        // No file_name: ZIM's FileName comes from the URL's last segment.
        3 => json!({"type": "image", "uid": label, "url": format!("{CDN}/{label}/from-url.png"), "ext": "x"}),
        4 => json!({"type": "file", "uid": label, "url": format!("{CDN}/{label}/report.pdf"), "size": 4096}),
        5 => json!({"type": "audio", "uid": label, "url": format!("{CDN}/{label}.m4a"), "duration_secs": 5}),
        6 => json!({"type": "video", "uid": label, "url": format!("{CDN}/{label}.mp4"), "duration_secs": 31,
                    "thumbnail_url": format!("{CDN}/{label}.jpg"), "thumbnail_width": 320, "thumbnail_height": 180}),
        7 => json!({"type": "multi", "ext": "m", "items": [
            {"type": "text", "text": label},
            {"type": "image", "url": format!("{CDN}/{label}/p.png"), "width": 1, "height": 1},
            {"type": "file", "url": format!("{CDN}/{label}/f.zip"), "file_name": "f 1.zip"},
            {"type": "audio", "url": format!("{CDN}/{label}/a.mp3"), "duration_secs": 2},
            {"type": "video", "url": format!("{CDN}/{label}/v.mp4"), "thumbnail_url": format!("{CDN}/{label}/v.jpg")},
            {"type": "custom", "data": "{\"card\":1}", "sub_type": 3, "search_text": "card"},
        ]}),
        8 => {
            json!({"type": "multi", "items": (0..20).map(|k| json!({"type": "text", "text": format!("{label}/{k}")}))
                    .collect::<Vec<_>>()})
        }
        _ => json!({"type": "native", "native": {"MessageType": 1, "Message": label}}),
    }
}

fn tim_kind(i: usize, label: &str) -> Value {
    let kinds = [
        "text", "custom", "image", "file", "audio", "video", "face", "location",
    ];
    let mut v = message_fields(kinds[i % kinds.len()], label);
    if i % 3 == 0 {
        v["ext"] = json!("cloud custom");
    }
    v
}

/// `n` messages over three conversations, one second apart, kind by kind;
/// the multi-item labels are their first part.
fn corpus(n: usize, kind: fn(usize, &str) -> Value) -> Corpus {
    let start = now_ms() - 3_600_000;
    let msgs = (0..n)
        .map(|i| {
            let c = i % 3;
            let (from, to) = if i % 2 == 0 {
                (format!("k{c}a"), format!("k{c}b"))
            } else {
                (format!("k{c}b"), format!("k{c}a"))
            };
            let label = format!("c{c}m{i}");
            let mut v = kind(i / 3, &label);
            let first = if v["type"] == "multi" {
                v["items"][0]["text"].as_str().unwrap().to_string()
            } else {
                label.clone()
            };
            let at = start + i as i64 * 1000;
            v["id"] = json!(format!("m{i}"));
            v["from"] = json!(from);
            v["to"] = json!(to);
            v["sent_at_ms"] = json!(at);
            Msg {
                label: first,
                visible: vec![from.clone(), to.clone()],
                from,
                to,
                at,
                line: v.to_string(),
            }
        })
        .collect();
    Corpus { msgs }
}

/// Loads, runs and verifies `corpus` with the binary; asserts the
/// simulator holds it exactly and verify says so too.
async fn round_trip(app: &TestApp<TestSim>, corpus: &Corpus) {
    let bin = app.binary();
    let input = jsonl(&corpus.lines());
    let (code, out) = run(
        &bin,
        &[
            "load",
            "--target",
            app.target(),
            "--batch",
            "kinds",
            input.path().to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "load: {out}");
    bin.run_to_the_end().await;
    assert_eq!(app.not_done().await, vec![], "every job is done");
    app.assert_holds_exactly(corpus);
    assert_eq!(app.stats()["validation_failures"], 0, "{}", app.stats());
    // Verify reads the faults' answers too: turn them off first.
    app.provider.clear_faults();
    let (code, out) = run(&bin, &["verify", "--batch", "kinds", "--json"]).await;
    assert_eq!(code, 0, "verify: {out}");
    let r: Value =
        serde_json::from_str(out.lines().next().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(r["lanes"].as_u64() > Some(0), "{r}");
    assert_eq!(r["clean_lanes"], r["lanes"], "{r}");
    assert_eq!(
        (r["missing"].as_u64(), r["extra"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
}

/// ZIM: text, custom, each media type (an image with and without a file
/// name), multi-item with every part type and with 20 parts, native; with
/// 30% of the calls applied and then dropped, so every kind is reconciled
/// through QueryPeerMsg's URL-encoded read-back and never stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zim_every_kind_is_run_reconciled_and_verified() {
    let app = TestApp::simulated(
        ZimTarget::default(),
        SimSetup::faulty(faults(Kind::Zim, 31, 0.0, 0.3)),
    )
    .await;
    let corpus = corpus(90, zim_kind);
    round_trip(&app, &corpus).await;
    let st = app.stats();
    assert!(st["faults"]["apply_then_drop"].as_u64() > Some(10), "{st}");
    assert!(st["calls_by_api"]["QueryPeerMsg"].as_u64() > Some(10), "{st}");

    // A second copy of a multi-item and of a video is what verify reports.
    for t in [10, 14] {
        let body: String = sqlx::query_scalar(&format!(
            "SELECT body FROM chatferry.jobs WHERE body LIKE '%\"MessageType\":{t},%' LIMIT 1"
        ))
        .fetch_one(app.db.store.pool())
        .await
        .unwrap();
        let r = app
            .provider
            .zim("ImportPeerMsg", &serde_json::from_str(&body).unwrap())
            .await;
        assert_eq!(r.code(), 0, "{body}");
    }
    let (code, out) = run(&app.binary(), &["verify", "--batch", "kinds", "--json"]).await;
    assert_eq!(code, 4, "verify: {out}");
    let r: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (r["extra"].as_u64(), r["missing"].as_u64()),
        (Some(2), Some(0)),
        "{r}"
    );
}

/// Tencent: text, custom, each media element, face and location; 30% of
/// the calls applied and then dropped, resent with the frozen triple.
/// admin_getroammsg answers media elements in the format they were sent
/// (消息格式描述), and verify compares sender and triple.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tencent_every_kind_is_run_and_verified() {
    let app = TestApp::simulated(
        TencentTarget::default(),
        SimSetup::faulty(faults(Kind::Tencent, 32, 0.0, 0.3)),
    )
    .await;
    let corpus = corpus(72, tim_kind);
    round_trip(&app, &corpus).await;
    let st = app.stats();
    assert!(st["faults"]["apply_then_drop"].as_u64() > Some(5), "{st}");
    assert!(st["dedup_hits"].as_u64() > Some(5), "{st}");
}

/// Lines ZEGO's documents forbid never reach ZIM: `load` exits 3 and the
/// rejects file names each line and its field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zim_load_rejects_what_the_documents_forbid() {
    let app = TestApp::simulated(ZimTarget::default(), SimSetup::registering()).await;
    let at = now_ms() - 60_000;
    let line = |id: &str, fields: Value| {
        let mut v = json!({"id": id, "from": "a", "to": "b", "sent_at_ms": at});
        v.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        v.to_string()
    };
    let parts: Vec<Value> = (0..21)
        .map(|k| json!({"type": "text", "text": format!("p{k}")}))
        .collect();
    let lines = vec![
        line("ok", json!({"type": "text", "text": "fine"})),
        line("many", json!({"type": "multi", "items": parts})),
        line(
            "noname",
            json!({"type": "image", "url": "https://cdn.example.com/"}),
        ),
        line("empty", json!({"type": "text", "text": ""})),
        line(
            "emptypart",
            json!({"type": "multi", "items": [{"type": "image", "url": "https://cdn.example.com"}]}),
        ),
    ];
    let bin = app.binary();
    let input = jsonl(&lines);
    let rejects = bin.dir().join("rejects.jsonl");
    let (code, out) = run(
        &bin,
        &[
            "load",
            "--target",
            "zim",
            "--batch",
            "bad",
            "--rejects",
            rejects.to_str().unwrap(),
            input.path().to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 3, "load exits 3 when lines were rejected: {out}");
    let got: Vec<(u64, String)> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["line"].as_u64().unwrap(),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        (2, "items has 21 parts; a ZIM multi-item message holds at most 20"),
        (
            3,
            "file_name is missing and url has no file name to take; an image needs one",
        ),
        (4, "text is empty; ZIM refuses an empty message"),
        (5, "items[0].file_name is missing"),
    ];
    assert_eq!(got.len(), want.len(), "{got:?}");
    for ((line, reason), (want_line, want_reason)) in got.iter().zip(want) {
        assert_eq!(*line, want_line, "{got:?}");
        assert!(
            reason.contains(want_reason),
            "line {line}: {reason:?} lacks {want_reason:?}"
        );
    }
    assert_eq!(
        app.jobs().await,
        2,
        "only the good line became jobs (one per view)"
    );
}
