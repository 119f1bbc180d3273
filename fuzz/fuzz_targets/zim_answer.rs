//! A ZIM answer: HTTP status (first 2 bytes, big-endian) and body.
#![no_main]

use chatferry::providers::zim::{classify_answer, parse_answer};
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
    // Status 0..=65535 includes values `StatusCode` refuses: no panic either way.
    let Ok(v) = parse_answer(status, body) else { return };
    assert!(v.is_object() && v.get("Code").is_some(), "parse_answer let through {v}");
    let outcome = classify_answer(&v);
    let code_is_zero = int_of(v.get("Code")) == Some(0);
    assert_eq!(
        matches!(outcome, Outcome::Accepted(_)),
        code_is_zero,
        "Code {:?} classified as {outcome:?}",
        v.get("Code")
    );
});
