//! UDP tracker datagrams (BEP 15): the input is a datagram answering a connect, an announce or a
//! scrape, classified as our client does, then the announce reply read as IPv4 and IPv6 peers.
#![no_main]

use btd::wire::compact::Family as CompactFamily;
use btd::tracker::udp::{Received, parse_announce_reply, parse_datagram, parse_scrape_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The transaction id the datagram carries is the one we "sent", so replies get through.
    let tid = data
        .get(4..8)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    for (action, min_reply) in [(0, 8), (1, 12), (2, 12)] {
        match parse_datagram(data, action, tid, min_reply) {
            Some(Received::Reply(payload)) => {
                assert!(payload.len() >= min_reply);
                if action == 1 {
                    for family in [CompactFamily::V4, CompactFamily::V6] {
                        let reply = parse_announce_reply(&payload, family).expect("12 bytes");
                        assert!(reply.peers.iter().all(|p| p.port() != 0));
                    }
                } else if action == 2 {
                    parse_scrape_reply(&payload).expect("12 bytes");
                }
            }
            Some(Received::Error(message)) => assert!(!message.is_empty()),
            Some(Received::TimedOut) => panic!("a datagram is never a timeout"),
            None => {}
        }
    }
    let _ = parse_announce_reply(data, CompactFamily::V4);
    let _ = parse_scrape_reply(data);
});
