//! The extension protocol (BEP 10) on the wire: btd sets the reserved bit, sends an extended
//! handshake with its client name and a deep `reqq` to peers that set the bit too (and to no
//! others), and keeps no more requests outstanding than a peer's own `reqq` allows.

use crate::support::SHORT;
use crate::support::fake_peer::{
    FakeListener, FakePeer, Fixture, Msg, TorrentMeta, btd_download, btd_seed, frame,
    handshake_bytes,
};
use crate::support::next_ip;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
const PIECE_LEN: u32 = 32 * 1024;

fn within(d: Duration) -> Instant {
    Instant::now() + d
}

/// Our handshake with the BEP 10 bit set.
fn extended_handshake_bytes(fake: &FakePeer, meta: &TorrentMeta) -> Vec<u8> {
    let mut h = handshake_bytes(&meta.info_hash, &fake.peer_id());
    h[20 + 5] |= 0x10;
    h
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn btd_sends_an_extended_handshake_with_reqq_only_to_peers_that_set_the_bit() {
    let fx = Fixture::new("ext-seed", MIB, PIECE_LEN);
    let meta = fx.meta.clone();
    let mut seeder = btd_seed("btd seeder", &fx.torrent, &fx.seed_dir, next_ip(), &[]);
    let addr = seeder.wait_listening();
    // A plain peer first (also waits until btd routes connections): no extended message.
    let mut plain =
        FakePeer::connect_when_ready("plain", next_ip(), addr, &meta.info_hash, within(SHORT));
    let (msgs, _) = plain.collect_until(within(Duration::from_secs(1)));
    assert!(
        !msgs.iter().any(|m| matches!(m, Msg::Other { id: 20, .. })),
        "btd sent an extended message to a peer without the BEP 10 bit: {msgs:?}"
    );

    let mut fake = FakePeer::connect("extended", next_ip(), addr);
    let hs = extended_handshake_bytes(&fake, &meta);
    fake.send_raw("handshake with the extension bit", &hs);
    fake.expect_handshake(&meta.info_hash, within(SHORT));
    assert!(
        fake.transcript().contains("reserved 0000000000100000"),
        "btd's handshake lacks the extension bit:\n{}",
        fake.transcript()
    );
    let (msg, _) = fake.wait_for(within(SHORT), "an extended handshake", |m| {
        matches!(m, Msg::Other { id: 20, .. })
    });
    let Msg::Other { payload, .. } = msg else {
        unreachable!()
    };
    assert_eq!(payload[0], 0, "extended message id 0 is the handshake");
    let dict = &payload[1..];
    assert!(
        contains(dict, b"4:reqqi2048e"),
        "reqq 2048 missing: {}",
        String::from_utf8_lossy(dict)
    );
    assert!(
        contains(dict, b"1:v9:btd 0.1.0"),
        "client name missing: {}",
        String::from_utf8_lossy(dict)
    );
    assert!(contains(dict, b"1:md"), "`m` dictionary missing");
    assert!(contains(dict, b"6:yourip4:"), "yourip missing");
    seeder.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_keeps_no_more_requests_outstanding_than_the_peers_reqq() {
    let fx = Fixture::new("ext-reqq", 4 * MIB, PIECE_LEN);
    let meta = fx.meta.clone();
    let listener = FakeListener::bind("fake seeder", next_ip());
    let out = fx.out_dir("leecher");
    let _btd = btd_download(
        "btd leecher",
        &fx.torrent,
        &out,
        next_ip(),
        &[listener.addr()],
    );
    let mut fake = listener.accept(within(SHORT));
    fake.expect_handshake(&meta.info_hash, within(SHORT));
    let hs = extended_handshake_bytes(&fake, &meta);
    fake.send_raw("handshake with the extension bit", &hs);
    let mut ext = vec![0u8];
    ext.extend_from_slice(b"d1:mde4:reqqi5ee");
    fake.send_raw("extended handshake, reqq 5", &frame(20, &ext));
    fake.send_raw("bitfield", &frame(5, &meta.full_bitfield()));
    fake.send_raw("unchoke", &frame(1, &[]));
    let (msgs, closed) = fake.collect_until(within(Duration::from_secs(2)));
    assert!(closed.is_none(), "btd closed the connection: {closed:?}");
    let requests = msgs.iter().filter(|m| matches!(m, Msg::Request(_))).count();
    assert!(requests > 0, "btd sent no request: {msgs:?}");
    assert!(
        requests <= 5,
        "btd sent {requests} requests to a peer whose reqq is 5"
    );
}
