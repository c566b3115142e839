//! DHT datagrams (BEP 5 KRPC, BEP 32): the input is decoded as a message (what decodes must
//! encode and decode to the same message), then handed to a node's core as a datagram from a
//! stranger, whose answer must be valid KRPC no larger than the amplification bound allows.
#![no_main]

use std::time::Instant;

use btd::dht::krpc::Message;
use btd::dht::node::{AMPLIFICATION, Action, Node};
use btd::wire::compact::Family;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        let again = Message::decode(&msg.to_bytes()).expect("our encoding decodes");
        assert_eq!(again, msg);
    }
    let now = Instant::now();
    let mut node = Node::new([7; 20], &[Family::V4, Family::V6], Vec::new(), [1; 16], now);
    for from in ["10.0.0.1:6881", "[2001:db8::1]:6881"] {
        for action in node.on_datagram(from.parse().unwrap(), data, now) {
            if let Action::Send { bytes, .. } = action {
                Message::decode(&bytes).expect("our answer is KRPC");
                assert!(bytes.len() <= (data.len() * AMPLIFICATION).max(120));
            }
        }
    }
});
