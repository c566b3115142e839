//! The extension protocol (BEP 10) on the wire: btd sets the reserved bit, sends an extended
//! handshake with its client name and a deep `reqq` to peers that set the bit too (and to no
//! others), and keeps no more requests outstanding than a peer's own `reqq` allows.

use crate::support::SHORT;
use crate::support::fake_peer::{Block, Recv};
use crate::support::fake_peer::{
    FakeListener, FakePeer, Fixture, Msg, TorrentMeta, btd_download, btd_seed, compact_v4, frame,
    handshake_bytes, take_pex_from_btd,
};
use crate::support::next_ip;
use std::collections::HashSet;
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
        fake.transcript().contains("reserved 0000000000100004"),
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

/// The value of `key` (an integer) in a bencoded dictionary, by a plain search: enough for the
/// flat dictionaries of ut_metadata.
fn int_after(dict: &[u8], key: &[u8]) -> Option<u64> {
    let at = dict.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = dict.get(at..)?.strip_prefix(b"i")?;
    let end = rest.iter().position(|b| *b == b'e')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[test]
fn btd_serves_its_metadata_to_a_peer_that_asks_with_ut_metadata() {
    use sha1::{Digest, Sha1};
    let fx = Fixture::new("ext-metadata", 24 * MIB, 16 * 1024);
    let meta = fx.meta.clone();
    let mut seeder = btd_seed("btd seeder", &fx.torrent, &fx.seed_dir, next_ip(), &[]);
    let addr = seeder.wait_listening();
    FakePeer::connect_when_ready("probe", next_ip(), addr, &meta.info_hash, within(SHORT));
    let mut fake = FakePeer::connect("metadata fetcher", next_ip(), addr);
    let hs = extended_handshake_bytes(&fake, &meta);
    fake.send_raw("handshake with the extension bit", &hs);
    fake.expect_handshake(&meta.info_hash, within(SHORT));
    let (msg, _) = fake.wait_for(
        within(SHORT),
        "btd's extended handshake",
        |m| matches!(m, Msg::Other { id: 20, payload } if payload.first() == Some(&0)),
    );
    let Msg::Other { payload, .. } = msg else {
        unreachable!()
    };
    let their_id = int_after(&payload[1..], b"11:ut_metadata").expect("btd advertises ut_metadata");
    let size = int_after(&payload[1..], b"13:metadata_size").expect("btd advertises metadata_size");
    let mut ours = vec![0u8];
    ours.extend_from_slice(b"d1:md11:ut_metadatai7eee");
    fake.send_raw("our extended handshake, ut_metadata 7", &frame(20, &ours));
    let pieces = size.div_ceil(16 * 1024);
    let mut info = Vec::new();
    for piece in 0..pieces {
        let mut req = vec![u8::try_from(their_id).unwrap()];
        req.extend_from_slice(format!("d8:msg_typei0e5:piecei{piece}ee").as_bytes());
        fake.send_raw("metadata request", &frame(20, &req));
        let (msg, _) = fake.wait_for(
            within(SHORT),
            "a metadata piece",
            |m| matches!(m, Msg::Other { id: 20, payload } if payload.first() == Some(&7)),
        );
        let Msg::Other { payload, .. } = msg else {
            unreachable!()
        };
        let body = &payload[1..];
        assert_eq!(int_after(body, b"8:msg_type"), Some(1), "data message");
        assert_eq!(int_after(body, b"5:piece"), Some(piece));
        assert_eq!(int_after(body, b"10:total_size"), Some(size));
        let dict_end = body
            .windows(2)
            .position(|w| w == b"ee")
            .expect("dictionary end")
            + 2;
        info.extend_from_slice(&body[dict_end..]);
    }
    assert!(pieces >= 2, "want several metadata pieces");
    assert_eq!(info.len() as u64, size);
    assert_eq!(
        <[u8; 20]>::from(Sha1::digest(&info)),
        meta.info_hash,
        "metadata hashes to the info hash"
    );
    // A piece past the end is rejected.
    let mut req = vec![u8::try_from(their_id).unwrap()];
    req.extend_from_slice(format!("d8:msg_typei0e5:piecei{pieces}ee").as_bytes());
    fake.send_raw("request past the end", &frame(20, &req));
    let (msg, _) = fake.wait_for(
        within(SHORT),
        "a reject",
        |m| matches!(m, Msg::Other { id: 20, payload } if payload.first() == Some(&7)),
    );
    let Msg::Other { payload, .. } = msg else {
        unreachable!()
    };
    assert_eq!(int_after(&payload[1..], b"8:msg_type"), Some(2), "reject");
    seeder.terminate_and_assert_ok(SHORT);
}

/// Our handshake with the BEP 6 bit set.
fn fast_handshake_bytes(fake: &FakePeer, meta: &TorrentMeta) -> Vec<u8> {
    let mut h = handshake_bytes(&meta.info_hash, &fake.peer_id());
    h[20 + 7] |= 0x04;
    h
}

fn reject_frame(b: Block) -> Vec<u8> {
    let payload: Vec<u8> = [b.piece, b.offset, b.len]
        .iter()
        .flat_map(|n| n.to_be_bytes())
        .collect();
    frame(16, &payload)
}

#[test]
fn btd_seeder_sends_have_all_to_a_fast_peer_and_rejects_requests_while_choking() {
    let fx = Fixture::new("fast-seed", MIB, PIECE_LEN);
    let meta = fx.meta.clone();
    let mut seeder = btd_seed("btd seeder", &fx.torrent, &fx.seed_dir, next_ip(), &[]);
    let addr = seeder.wait_listening();
    FakePeer::connect_when_ready("probe", next_ip(), addr, &meta.info_hash, within(SHORT));
    let mut fake = FakePeer::connect("fast leecher", next_ip(), addr);
    let hs = fast_handshake_bytes(&fake, &meta);
    fake.send_raw("handshake with the fast bit", &hs);
    fake.expect_handshake(&meta.info_hash, within(SHORT));
    assert!(
        fake.transcript().contains("reserved 0000000000100004"),
        "btd's handshake lacks the fast bit:\n{}",
        fake.transcript()
    );
    match fake.next_message(within(SHORT)) {
        Msg::Other { id: 14, payload } if payload.is_empty() => {}
        other => panic!("btd's first message to a fast peer is {other:?}, not have all"),
    }
    // Still choked: a request is rejected, not ignored.
    let block = meta.blocks_of(0)[0];
    fake.send_request(block);
    let (msg, _) = fake.wait_for(within(SHORT), "a reject", |m| {
        matches!(m, Msg::Other { id: 16, .. } | Msg::Piece { .. })
    });
    let Msg::Other { payload, .. } = msg else {
        panic!("btd served a choked peer: {msg:?}");
    };
    assert_eq!(
        payload,
        reject_frame(block)[5..].to_vec(),
        "the reject names the request"
    );
    seeder.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_leecher_takes_have_all_and_requests_rejected_blocks_again() {
    let fx = Fixture::new("fast-leech", 2 * MIB, PIECE_LEN);
    let meta = fx.meta.clone();
    let listener = FakeListener::bind("fast seeder", next_ip());
    let out = fx.out_dir("leecher");
    let mut btd = btd_download(
        "btd leecher",
        &fx.torrent,
        &out,
        next_ip(),
        &[listener.addr()],
    );
    let mut fake = listener.accept(within(SHORT));
    fake.expect_handshake(&meta.info_hash, within(SHORT));
    let hs = fast_handshake_bytes(&fake, &meta);
    fake.send_raw("handshake with the fast bit", &hs);
    fake.send_raw("have all", &frame(14, &[]));
    fake.wait_for(within(SHORT), "interested after have all", |m| {
        *m == Msg::Interested
    });
    fake.send_unchoke();
    let (first, _) = fake.wait_for(within(SHORT), "a request", |m| matches!(m, Msg::Request(_)));
    let Msg::Request(rejected) = first else {
        unreachable!()
    };
    fake.send_raw("reject", &reject_frame(rejected));
    // Serve everything else until btd asks for the rejected block again.
    let mut outstanding: HashSet<Block> = HashSet::new();
    let deadline = within(SHORT);
    loop {
        assert!(
            Instant::now() < deadline,
            "btd never asked for the rejected block again"
        );
        match fake.recv(within(Duration::from_millis(200))) {
            Recv::Msg(Msg::Request(b)) if b == rejected => {
                outstanding.insert(b);
                break;
            }
            Recv::Msg(Msg::Request(b)) => {
                let data = fx.block_data(b).to_vec();
                fake.send_piece(b.piece, b.offset, &data);
            }
            Recv::Closed(why) => panic!("btd closed the connection: {why}"),
            _ => {}
        }
    }
    // A choke from a fast peer voids nothing by itself: btd sends no new request while choked,
    // and after our rejects and unchoke it asks again for exactly what we rejected.
    fake.send_choke();
    let (msgs, _) = fake.collect_until(within(Duration::from_secs(1)));
    outstanding.extend(msgs.iter().filter_map(|m| match m {
        Msg::Request(b) => Some(*b),
        _ => None,
    }));
    for b in &outstanding {
        fake.send_raw("reject", &reject_frame(*b));
    }
    fake.send_unchoke();
    let deadline = within(SHORT);
    while !btd.has_exited() && Instant::now() < deadline {
        match fake.recv(within(Duration::from_millis(200))) {
            Recv::Msg(Msg::Request(b)) => {
                outstanding.remove(&b);
                let data = fx.block_data(b).to_vec();
                let _ = fake.try_send_piece(b.piece, b.offset, &data);
            }
            Recv::Closed(_) => break,
            _ => {}
        }
    }
    assert!(
        outstanding.is_empty(),
        "rejected blocks never requested again: {outstanding:?}"
    );
    btd.assert_exits_ok(SHORT);
    crate::support::assert_same_files(&fx.payload(), &out.join(&fx.name));
}

/// Connects a fake peer to `addr` with the extension bit and an extended handshake that offers
/// `ut_pex` under id 5 and names `listen_port`.
fn pex_peer(
    name: &str,
    addr: std::net::SocketAddr,
    meta: &TorrentMeta,
    listen_port: u16,
) -> FakePeer {
    let mut fake = FakePeer::connect(name, next_ip(), addr);
    let hs = extended_handshake_bytes(&fake, meta);
    fake.send_raw("handshake with the extension bit", &hs);
    fake.expect_handshake(&meta.info_hash, within(SHORT));
    let mut ext = vec![0u8];
    ext.extend_from_slice(format!("d1:md6:ut_pexi5ee1:pi{listen_port}ee").as_bytes());
    fake.send_raw("extended handshake with ut_pex", &frame(20, &ext));
    fake
}

#[test]
fn btd_tells_each_peer_about_the_others_by_their_listen_addresses() {
    let fx = Fixture::new("pex-send", MIB, PIECE_LEN);
    let meta = fx.meta.clone();
    let mut seeder = btd_seed("btd seeder", &fx.torrent, &fx.seed_dir, next_ip(), &[]);
    let addr = seeder.wait_listening();
    FakePeer::connect_when_ready("probe", next_ip(), addr, &meta.info_hash, within(SHORT));
    let listen_a = FakeListener::bind("a's listener", next_ip());
    let listen_b = FakeListener::bind("b's listener", next_ip());
    let mut a = pex_peer("a", addr, &meta, listen_a.addr().port());
    let _b = pex_peer("b", addr, &meta, listen_b.addr().port());
    // b connected from an ephemeral port; btd must describe it by b's IP and listen port.
    let b_listen = std::net::SocketAddr::new(_b.local_addr().ip(), listen_b.addr().port());
    let want = compact_v4(b_listen);
    let (msg, _) = fake_wait_pex(&mut a, &want);
    let Msg::Other { payload, .. } = msg else {
        unreachable!()
    };
    assert!(contains(&payload[1..], b"5:added"), "{payload:?}");
    seeder.terminate_and_assert_ok(SHORT);
}

fn fake_wait_pex(fake: &mut FakePeer, want: &[u8]) -> (Msg, Vec<Msg>) {
    let want = want.to_vec();
    fake.wait_for(within(SHORT), "a ut_pex message naming the other peer", move |m| {
        matches!(m, Msg::Other { id: 20, payload } if payload.first() == Some(&5) && contains(payload, &want))
    })
}

#[test]
fn btd_dials_a_peer_it_learned_of_only_through_pex() {
    let fx = Fixture::new("pex-learn", MIB, PIECE_LEN);
    let meta = fx.meta.clone();
    let first = FakeListener::bind("first seeder", next_ip());
    let third = FakeListener::bind("third peer", next_ip());
    let out = fx.out_dir("leecher");
    let _btd = btd_download("btd leecher", &fx.torrent, &out, next_ip(), &[first.addr()]);
    let mut fake = first.accept(within(SHORT));
    fake.expect_handshake(&meta.info_hash, within(SHORT));
    take_pex_from_btd(&mut fake, &meta.info_hash);
    // btd offers ut_pex under id 2 (its `m`); send it the third peer's address there.
    let mut pex = vec![2u8];
    pex.extend_from_slice(b"d5:added6:");
    pex.extend(compact_v4(third.addr()));
    pex.extend_from_slice(b"e");
    fake.send_raw("ut_pex naming the third peer", &frame(20, &pex));
    let mut t = third.accept(within(SHORT));
    t.expect_handshake(&meta.info_hash, within(SHORT));
    t.send_handshake(&meta.info_hash);
    t.send_bitfield(&meta.full_bitfield());
    t.wait_for(within(SHORT), "interested from btd", |m| {
        *m == Msg::Interested
    });
}
