//! A corpus of malformed lines between good ones: each bad line is rejected
//! with its line number and a reason; every good line still loads. Nothing
//! panics.

mod common;

use std::collections::HashMap;
use std::io::Write;

use common::*;

/// An app with one ZIM target (never sent to) and these load settings.
async fn zim_app(load: LoadSettings) -> TestApp {
    TestApp::builder()
        .zim(ZimTarget::default())
        .settings(|s| s.load = load)
        .spawn()
        .await
}

#[tokio::test]
async fn every_bad_line_is_named_and_the_good_ones_load() {
    let app = zim_app(LoadSettings {
        max_line_bytes: Some(65536),
        ..Default::default()
    })
    .await;
    let (db, cfg) = (&app.db, &app.cfg);
    let now = now_ms() - 60_000;
    let good = |i: usize| text_line(&format!("g{i}"), "alice", "bob", now + i as i64, "fine");
    // (bad line bytes, what its reason must mention)
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"id\":\"1\",\"from\":".to_vec(), "invalid JSON"),
        (b"[1,2,3]".to_vec(), "invalid JSON"),
        (
            br#"{"id":1,"from":"a","to":"b","sent_at_ms":1,"type":"text","text":"x"}"#.to_vec(),
            "invalid type",
        ),
        (
            format!(r#"{{"id":"2","from":"a","to":"b","sent_at_ms":"{now}","type":"text","text":"x"}}"#)
                .into_bytes(),
            "invalid type",
        ),
        (
            format!(
                r#"{{"id":"3","from":"a","to":"b","sent_at_ms":{now},"type":"text","text":"{}"}}"#,
                "x".repeat(3 << 20)
            )
            .into_bytes(),
            "byte limit",
        ),
        (
            b"{\"id\":\"4\",\"from\":\"a\xff\xfe\",\"to\":\"b\"}".to_vec(),
            "UTF-8",
        ),
        (
            b"{\"id\":\"5\",\"from\":\"a\0\",\"to\":\"b\"}".to_vec(),
            "invalid JSON",
        ),
        (
            format!(r#"{{"id":"6","from":"a\u0000","to":"b","sent_at_ms":{now},"type":"text","text":"x"}}"#)
                .into_bytes(),
            "from",
        ),
        (
            format!(r#"{{"id":"7","from":"a","to":"b","sent_at_ms":{now},"type":"hologram"}}"#).into_bytes(),
            "not supported",
        ),
        (
            format!(r#"{{"id":"8","to":"b","sent_at_ms":{now},"type":"text","text":"x"}}"#).into_bytes(),
            "missing field `from`",
        ),
        (
            format!(r#"{{"id":"9","from":"a","to":"b","sent_at_ms":{now},"type":"text"}}"#).into_bytes(),
            "needs the field `text`",
        ),
        (
            text_line("10", &"u".repeat(33), "b", now, "x").into_bytes(),
            "at most 32",
        ),
        (text_line("11", "al/ice", "b", now, "x").into_bytes(), "refuses"),
        (
            text_line("12", "a", "b", now + 86_400_000, "x").into_bytes(),
            "future",
        ),
        (
            text_line("13", "a", "b", now - 30 * 86_400_000, "x").into_bytes(),
            "window",
        ),
        (
            text_line(&"i".repeat(300), "a", "b", now, "x").into_bytes(),
            "id is 300 bytes",
        ),
        (
            format!(
                r#"{{"id":"14","from":"a","to":"b","sent_at_ms":{now},"type":"text","text":"{}"}}"#,
                "y".repeat(3000)
            )
            .into_bytes(),
            "max_message_bytes",
        ),
        (
            format!(r#"{{"id":"15","from":"a","to":"b","sent_at_ms":{now},"type":"signalling","data":"x"}}"#)
                .into_bytes(),
            "signalling",
        ),
    ];
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let mut expect: HashMap<u64, &str> = HashMap::new();
    let mut line = 0u64;
    let mut goods = 0;
    for (i, (b, why)) in bad.iter().enumerate() {
        writeln!(file, "{}", good(i)).unwrap();
        line += 1;
        goods += 1;
        file.write_all(b).unwrap();
        file.write_all(b"\n").unwrap();
        line += 1;
        expect.insert(line, why);
    }
    writeln!(file, "{}", good(999)).unwrap();
    goods += 1;
    file.flush().unwrap();

    let rejects = tempfile::NamedTempFile::new().unwrap();
    let s = load(
        db,
        cfg,
        "zim",
        "b",
        &[file.path()],
        Some(rejects.path().to_path_buf()),
    )
    .await;
    assert_eq!(s.accepted, goods, "every good line loads");
    assert_eq!(s.rejected as usize, bad.len());
    let got: HashMap<u64, String> = std::fs::read_to_string(rejects.path())
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("rejects file is JSON Lines");
            (
                v["line"].as_u64().unwrap(),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (line, why) in &expect {
        let reason = got
            .get(line)
            .unwrap_or_else(|| panic!("line {line} not rejected; got {got:?}"));
        assert!(
            reason.contains(why),
            "line {line}: {reason:?} should mention {why:?}"
        );
    }
    // Each good line is two ZIM jobs (both views).
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs").await,
        2 * goods as i64
    );
}

/// Reads a rejects file: (line, reason) per rejected line.
fn read_rejects(path: &std::path::Path) -> Vec<(u64, String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["line"].as_u64().unwrap(),
                v["reason"].as_str().unwrap().to_string(),
                v["input"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_reused_id_with_other_content_is_rejected_naming_both_lines() {
    // Two-row chunks: the duplicates land in different, concurrent chunks.
    let app = zim_app(LoadSettings {
        chunk_rows: Some(2),
        ..Default::default()
    })
    .await;
    let (db, cfg) = (&app.db, &app.cfg);
    let now = now_ms() - 60_000;
    let first = jsonl(&[
        text_line("x", "alice", "bob", now, "one"),
        text_line("y", "alice", "bob", now + 1, "other"),
        text_line("z", "alice", "bob", now + 2, "third"),
        text_line("x", "alice", "bob", now, "two"),
        text_line("x", "alice", "bob", now, "one"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let rej = dir.path().join("rejects.jsonl");
    let s = load(db, cfg, "zim", "b", &[first.path()], Some(rej.clone())).await;
    assert_eq!((s.accepted, s.rejected), (4, 1), "{s:?}");
    assert_eq!(s.jobs_new, 6, "x, y, z in both views");
    assert_eq!(
        s.jobs_planned - s.jobs_new,
        2,
        "the identical line 5 is already loaded"
    );
    let r = read_rejects(&rej);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].0, 4);
    let name = first.path().display().to_string();
    assert!(r[0].1.contains(&format!("{name} line 1")), "{}", r[0].1);
    assert!(r[0].1.contains("\"x\""), "{}", r[0].1);
    assert!(r[0].2.contains("two"), "the rejected line is kept: {}", r[0].2);
    let kept = db
        .scalar("SELECT count(*) FROM chatferry.jobs WHERE source_id = 'x' AND body LIKE '%one%'")
        .await;
    assert_eq!(kept, 2, "the first x stays, in both views");

    // Another load: the same message again (other batch, other neighbours)
    // is idempotent; a changed one is refused naming the first load.
    let again = jsonl(&[
        text_line("w", "alice", "bob", now, "same millisecond, before x"),
        text_line("x", "alice", "bob", now, "one"),
        text_line("y", "alice", "bob", now + 1, "changed"),
    ]);
    let rej2 = dir.path().join("rejects2.jsonl");
    let s = load(db, cfg, "zim", "c", &[again.path()], Some(rej2.clone())).await;
    assert_eq!((s.accepted, s.rejected), (2, 1), "{s:?}");
    assert_eq!(s.jobs_new, 2, "only w is new");
    let r = read_rejects(&rej2);
    assert_eq!(r[0].0, 3);
    assert!(r[0].1.contains(&format!("{name} line 2")), "{}", r[0].1);
    assert_eq!(
        db.scalar("SELECT count(*) FROM chatferry.jobs WHERE body LIKE '%changed%'")
            .await,
        0,
        "nothing of a refused message is stored, in either view"
    );
}
