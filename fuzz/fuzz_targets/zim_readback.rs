//! A QueryPeerMsg list item and an ImportPeerMsg body: parsing either
//! never panics, and a body always matches the read-back ZIM documents
//! for it (query-the-message-list-of-one-on-one-chats.md) when it is text.
#![no_main]

use chatferry::providers::zim::readback::{parse_item, url_decode, Expected};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = url_decode(text);
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        if let Some(item) = parse_item(&v) {
            assert_eq!(item.fingerprint(), parse_item(&v).unwrap().fingerprint());
        }
    }
    let Some(e) = Expected::of_body(text) else { return };
    let _ = e.fingerprint();
    if e.msg_type == 1 {
        let content = match &e.parts[..] {
            [chatferry::providers::zim::readback::Part::Plain { content, .. }] => content.clone(),
            other => panic!("a text body has one plain part, not {other:?}"),
        };
        let back = json!({"Sender": e.sender, "MsgType": 1, "MsgBody": content, "Payload": e.payload});
        let item = parse_item(&back).expect("a text item parses");
        assert!(e.matches(&item) && e.fingerprint() == item.fingerprint());
    }
});
