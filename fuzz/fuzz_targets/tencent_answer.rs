//! A Tencent answer: HTTP status (first 2 bytes, big-endian) and body.
#![no_main]

use chatferry::providers::tencent::{classify_answer, parse_answer};
use chatferry::providers::Outcome;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The documented reading of an integer field: a number, or a string of
/// an integer (surrounding whitespace allowed).
fn int_of(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|u| u as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]);
    let body = &data[2..];
    let Ok(v) = parse_answer(status, body) else { return };
    assert!(
        v.is_object() && (v.get("ActionStatus").is_some() || v.get("ErrorCode").is_some()),
        "parse_answer let through {v}"
    );
    // The code is ErrorCode when it reads as an integer; without one,
    // ActionStatus "OK" means 0.
    let code = int_of(v.get("ErrorCode")).unwrap_or_else(|| {
        if v.get("ActionStatus").and_then(Value::as_str) == Some("OK") {
            0
        } else {
            -1
        }
    });
    for sent_seq in [None, Some(7)] {
        let outcome = classify_answer(&v, sent_seq);
        // Accepted exactly when the code is 0 and ActionStatus, if given,
        // does not say otherwise.
        let status_ok = v.get("ActionStatus").and_then(Value::as_str).is_none_or(|s| s == "OK");
        assert_eq!(
            matches!(outcome, Outcome::Accepted(_)),
            code == 0 && status_ok,
            "ErrorCode {:?} / ActionStatus {:?} classified as {outcome:?}",
            v.get("ErrorCode"),
            v.get("ActionStatus")
        );
        if let (Outcome::Accepted(a), Some(s)) = (&outcome, sent_seq) {
            assert!(a.msg_seq.is_some(), "accepted without a MsgSeq although one was sent ({s})");
        }
    }
});
