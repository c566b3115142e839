//! btd on the wire, against a scripted peer whose bytes are written by hand
//! (`support::fake_peer`): what btd requests as a leecher and how it obeys choke; what it
//! announces and serves as a seeder, and what it refuses; how it treats a peer that sends bad
//! data (strikes, ban) or malformed frames; and the `cancel` it sends in endgame.

use crate::support::fake_peer::{
    BLOCK, Block, FakeListener, FakePeer, Fixture, Msg, Recv, TorrentMeta, btd_download, btd_seed,
    frame, handshake_bytes,
};
use crate::support::{Btd, SHORT, TRANSFER, assert_same_files, next_ip};
use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Two blocks per piece, so pieces have several blocks and requests can split them.
const PIECE_LEN: u32 = 32 * 1024;
/// How long btd gets to react to something on one connection (a close, an unchoke, a cancel).
const REACT: Duration = Duration::from_secs(5);
/// How long a test watches for something btd must not do.
const QUIET: Duration = Duration::from_secs(1);

fn within(d: Duration) -> Instant {
    Instant::now() + d
}

/// The handshake with btd when btd dialled the fake: btd speaks first.
fn answer_handshake(fake: &mut FakePeer, meta: &TorrentMeta) {
    fake.expect_handshake(&meta.info_hash, within(SHORT));
    fake.send_handshake(&meta.info_hash);
}

/// The handshake with btd when the fake dialled btd: the fake speaks first.
fn open_handshake(fake: &mut FakePeer, meta: &TorrentMeta) {
    fake.send_handshake(&meta.info_hash);
    fake.expect_handshake(&meta.info_hash, within(SHORT));
}

/// The first connection to a btd seeder that just logged its address, handshakes exchanged.
fn first_connection(name: &str, to: SocketAddr, meta: &TorrentMeta) -> FakePeer {
    FakePeer::connect_when_ready(name, next_ip(), to, &meta.info_hash, within(SHORT))
}

/// The fake's handshake as bytes, for a connection btd may drop before it is written.
fn handshake_for(fake: &FakePeer, meta: &TorrentMeta) -> Vec<u8> {
    handshake_bytes(&meta.info_hash, &fake.peer_id())
}

/// Checks a request btd sent: a block of the torrent's grid (16 KiB unless it is the torrent's
/// last block, inside its piece), not one already outstanding with us, not one we delivered.
fn check_request(
    fake: &FakePeer,
    meta: &TorrentMeta,
    b: Block,
    outstanding: &[Block],
    delivered: &HashSet<Block>,
) {
    if let Err(e) = meta.check_block(b) {
        panic!(
            "{}: btd sent a bad request: {e}\n{}",
            fake.name(),
            fake.transcript()
        );
    }
    assert!(
        !outstanding.contains(&b),
        "{}: btd requested {b} twice without a choke in between\n{}",
        fake.name(),
        fake.transcript()
    );
    assert!(
        !delivered.contains(&b),
        "{}: btd requested {b} again after we delivered it\n{}",
        fake.name(),
        fake.transcript()
    );
}

/// The next message is a piece message carrying exactly the payload's bytes of block `b`.
fn expect_piece(fake: &mut FakePeer, fx: &Fixture, b: Block) {
    match fake.next_message(within(REACT)) {
        Msg::Piece {
            piece,
            offset,
            data,
        } => {
            assert_eq!(
                Block::new(piece, offset, u32::try_from(data.len()).expect("a block")),
                b,
                "{}: btd sent a different block than requested\n{}",
                fake.name(),
                fake.transcript()
            );
            assert!(
                data == fx.block_data(b),
                "{}: btd sent the wrong bytes for {b}",
                fake.name()
            );
        }
        other => panic!(
            "{}: want piece {b}, got {other:?}\n{}",
            fake.name(),
            fake.transcript()
        ),
    }
}

#[test]
fn btd_leecher_pipelines_16_kib_requests_and_honours_choke() {
    let fx = Fixture::new("fp-leech", 3 * MIB + 12_345, PIECE_LEN);
    let meta = fx.meta.clone();
    assert_ne!(meta.last_block().len, BLOCK, "want a short last block");
    let listener = FakeListener::bind("fake seeder", next_ip());
    let out = fx.out_dir("leecher");
    let mut btd = btd_download(
        "btd leecher",
        &fx.torrent,
        &out,
        next_ip(),
        &[listener.addr()],
    );
    let mut fake = listener.accept(within(SHORT));
    answer_handshake(&mut fake, &meta);
    fake.send_bitfield(&meta.full_bitfield());

    // btd has nothing: no bitfield, or an empty one of the right length. Then `interested`, and
    // no request while we choke it.
    let (_, mut before) = fake.wait_for(within(SHORT), "interested", |m| *m == Msg::Interested);
    let (choked, closed) = fake.collect_until(within(QUIET));
    assert!(closed.is_none(), "btd closed the connection: {closed:?}");
    before.extend(choked);
    for m in &before {
        match m {
            Msg::Bitfield(bits) => assert!(
                bits.len() == meta.bitfield_len() && bits.iter().all(|b| *b == 0),
                "btd has no piece yet but sent {m:?}"
            ),
            Msg::Request(_) | Msg::Piece { .. } | Msg::Have(_) => {
                panic!(
                    "btd sent {m:?} before we unchoked it\n{}",
                    fake.transcript()
                )
            }
            _ => {}
        }
    }

    // Unchoked, btd fills a pipeline of full-size requests for blocks of the torrent.
    fake.send_unchoke();
    let delivered_none = HashSet::new();
    let mut outstanding: Vec<Block> = Vec::new();
    let pipeline_by = within(REACT);
    while outstanding.len() <= 8 {
        match fake.recv(pipeline_by) {
            Recv::Msg(Msg::Request(b)) => {
                check_request(&fake, &meta, b, &outstanding, &delivered_none);
                outstanding.push(b);
            }
            Recv::Msg(Msg::KeepAlive) => {}
            Recv::Msg(other) => panic!("want requests after our unchoke, got {other:?}"),
            Recv::Timeout | Recv::Closed(_) => panic!(
                "{REACT:?} after our unchoke btd has {} requests outstanding; want a pipeline \
                 of more than 8\n{}",
                outstanding.len(),
                fake.transcript()
            ),
        }
    }
    // The rest of the batch, if it is still on its way.
    let (more, closed) = fake.collect_until(within(Duration::from_millis(300)));
    assert!(closed.is_none(), "btd closed the connection: {closed:?}");
    for m in more {
        if let Msg::Request(b) = m {
            check_request(&fake, &meta, b, &outstanding, &delivered_none);
            outstanding.push(b);
        }
    }
    eprintln!("btd had {} requests outstanding", outstanding.len());

    // We answer a quarter of them, then choke.
    let mut delivered: HashSet<Block> = HashSet::new();
    let answered = (outstanding.len() / 4).max(1);
    for b in outstanding.drain(..answered) {
        fake.send_piece(b.piece, b.offset, fx.block_data(b));
        delivered.insert(b);
    }
    fake.send_choke();
    // A barrier: btd unchokes an interested peer while it has a free upload slot, so its
    // `unchoke` means it has handled our choke (sent on the same connection before). Requests
    // before it were on their way before btd saw the choke.
    fake.send_interested();
    let (_, before) = fake.wait_for(
        within(REACT),
        "btd's unchoke answering our interested",
        |m| *m == Msg::Unchoke,
    );
    for m in before {
        if let Msg::Request(b) = m {
            check_request(&fake, &meta, b, &outstanding, &delivered);
            outstanding.push(b);
        }
    }
    let (during_choke, closed) = fake.collect_until(within(QUIET));
    assert!(
        closed.is_none(),
        "btd closed the connection while choked: {closed:?}"
    );
    let requests: Vec<&Msg> = during_choke
        .iter()
        .filter(|m| matches!(m, Msg::Request(_)))
        .collect();
    assert!(
        requests.is_empty(),
        "btd requested while choked: {requests:?}\n{}",
        fake.transcript()
    );

    // Choke voided the unanswered requests: right after our unchoke btd asks for them again
    // (within seconds, so not because its 20 s request timeout gave up on them). We serve
    // everything until btd, complete, closes the connection to us (two seeds).
    let voided: BTreeSet<Block> = outstanding.drain(..).collect();
    fake.send_unchoke();
    let reask_by = within(REACT);
    let deadline = within(TRANSFER);
    let mut rerequested: BTreeSet<Block> = BTreeSet::new();
    loop {
        let all_reasked = voided.is_subset(&rerequested);
        match fake.recv(if all_reasked { deadline } else { reask_by }) {
            Recv::Msg(Msg::Request(b)) => {
                check_request(&fake, &meta, b, &outstanding, &delivered);
                rerequested.insert(b);
                fake.send_piece(b.piece, b.offset, fx.block_data(b));
                delivered.insert(b);
            }
            Recv::Msg(_) => {}
            Recv::Closed(_) if all_reasked => break,
            Recv::Closed(_) | Recv::Timeout if !all_reasked => {
                let missing: Vec<&Block> = voided.difference(&rerequested).collect();
                panic!(
                    "{REACT:?} after the unchoke btd had not asked again for {} of the {} \
                     blocks the choke voided: {missing:?}\n{}",
                    missing.len(),
                    voided.len(),
                    fake.transcript()
                );
            }
            Recv::Closed(_) | Recv::Timeout => panic!(
                "btd did not finish downloading from the fake seeder\n{}",
                fake.transcript()
            ),
        }
    }
    assert_eq!(
        delivered.len(),
        meta.all_blocks().len(),
        "each block delivered once"
    );
    btd.assert_exits_ok(SHORT);
    assert_same_files(&fx.payload(), &out.join(&fx.name));
}

#[test]
fn peer_sending_bad_data_is_banned_and_the_download_completes_from_an_honest_seeder() {
    let fx = Fixture::new("fp-ban", 2 * MIB + 4321, PIECE_LEN);
    let meta = fx.meta.clone();
    let liar_ip = next_ip();
    let listener = FakeListener::bind("lying seeder", liar_ip);
    // The honest seeder is given to the leecher from the start, but stopped (SIGSTOP) until the
    // liar is banned: its kernel still accepts the connection, so the leecher waits for its
    // handshake while it deals with the liar alone, and every bad piece has one sender.
    let mut honest = btd_seed("honest seeder", &fx.torrent, &fx.seed_dir, next_ip(), &[]);
    let honest_addr = honest.wait_listening();
    honest.signal("STOP");
    let out = fx.out_dir("leecher");
    let mut leecher = btd_download(
        "btd leecher",
        &fx.torrent,
        &out,
        next_ip(),
        &[listener.addr(), honest_addr],
    );
    let leecher_addr = leecher.wait_listening();

    let mut liar = listener.accept(within(SHORT));
    answer_handshake(&mut liar, &meta);
    liar.send_bitfield(&meta.full_bitfield());
    liar.wait_for(within(SHORT), "interested", |m| *m == Msg::Interested);
    liar.send_unchoke();

    // Serve one whole piece of wrong bytes at a time, and wait for btd to say it failed its hash
    // (or to drop us) before the next, so we know how many bad pieces it took.
    let failed = |leecher: &Btd, piece: u32| {
        let needle = format!("piece {piece} failed its hash check");
        leecher.output().matches(&needle).count()
    };
    let mut queue: Vec<Block> = Vec::new();
    let mut bad_pieces: Vec<u32> = Vec::new();
    let deadline = within(SHORT);
    'serve: loop {
        let ready = queue
            .iter()
            .map(|b| b.piece)
            .find(|p| meta.blocks_of(*p).iter().all(|b| queue.contains(b)));
        let Some(piece) = ready else {
            match liar.recv(deadline) {
                Recv::Msg(Msg::Request(b)) => {
                    check_request(&liar, &meta, b, &queue, &HashSet::new());
                    queue.push(b);
                }
                Recv::Msg(_) => {}
                Recv::Closed(_) => break 'serve,
                Recv::Timeout => panic!("btd neither requested nor dropped the liar"),
            }
            continue;
        };
        let failures_before = failed(&leecher, piece);
        for b in meta.blocks_of(piece) {
            queue.retain(|q| *q != b);
            let junk: Vec<u8> = fx.block_data(b).iter().map(|x| x ^ 0xa5).collect();
            if liar.try_send_piece(b.piece, b.offset, &junk).is_err() {
                break 'serve;
            }
        }
        bad_pieces.push(piece);
        while failed(&leecher, piece) == failures_before {
            match liar.recv(within(Duration::from_millis(50))) {
                Recv::Msg(Msg::Request(b)) => {
                    check_request(&liar, &meta, b, &queue, &HashSet::new());
                    queue.push(b);
                }
                Recv::Closed(_) => break 'serve,
                Recv::Msg(_) | Recv::Timeout => {}
            }
            assert!(
                Instant::now() < deadline,
                "btd did not report a hash failure for bad piece {piece}"
            );
        }
    }
    eprintln!(
        "btd dropped the liar after {} bad pieces: {bad_pieces:?}",
        bad_pieces.len()
    );
    assert!(
        !bad_pieces.is_empty() && bad_pieces.len() <= 3,
        "btd dropped the liar after {} bad pieces ({bad_pieces:?}); want a few (two strikes)",
        bad_pieces.len()
    );
    let ban = format!("{}: banned after", listener.addr());
    leecher.wait_for_line(REACT, "the liar's ban", |l| l.contains(&ban).then_some(()));

    // Banned means banned: btd drops the liar's address when it dials it again, and refuses a
    // connection from the liar's IP. A peer that is not refused would be sent `interested` (we
    // announce every piece) and kept.
    if let Some(mut again) = listener.try_accept(within(REACT)) {
        if again
            .handshake_or_closed(&meta.info_hash, within(SHORT))
            .is_some()
        {
            let _ = again.try_send_raw("handshake", &handshake_for(&again, &meta));
            let _ = again.try_send_raw("bitfield", &frame(5, &meta.full_bitfield()));
        }
        let got = again.expect_closed(within(REACT));
        assert!(
            got.is_empty(),
            "btd sent {got:?} to a banned peer it dialled again"
        );
    }
    let mut incoming = FakePeer::connect("liar dialling in", liar_ip, leecher_addr);
    let _ = incoming.try_send_raw("handshake", &handshake_for(&incoming, &meta));
    let _ = incoming.try_send_raw("bitfield", &frame(5, &meta.full_bitfield()));
    let _ = incoming.handshake_or_closed(&meta.info_hash, within(REACT));
    let got = incoming.expect_closed(within(REACT));
    assert!(
        got.is_empty(),
        "btd sent {got:?} to a banned peer that dialled in"
    );

    // The honest seeder wakes up and the download completes with the right bytes.
    honest.signal("CONT");
    leecher.assert_exits_ok(TRANSFER);
    assert_same_files(&fx.payload(), &out.join(&fx.name));
    honest.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_seeder_announces_every_piece_serves_blocks_and_drops_oversized_requests() {
    let fx = Fixture::new("fp-seed", 3 * MIB + 12_345, PIECE_LEN);
    let meta = fx.meta.clone();
    assert_ne!(meta.num_pieces % 8, 0, "want spare bits in the bitfield");
    let mut seeder = btd_seed("btd seeder", &fx.torrent, &fx.seed_dir, next_ip(), &[]);
    let addr = seeder.wait_listening();

    let mut fake = first_connection("fake leecher", addr, &meta);
    match fake.next_message(within(SHORT)) {
        Msg::Bitfield(bits) => {
            assert_eq!(bits.len(), meta.bitfield_len(), "bitfield length");
            assert_eq!(
                bits,
                meta.full_bitfield(),
                "want every piece set and the spare bits clear"
            );
        }
        other => panic!("btd seeder's first message is {other:?}, not a bitfield"),
    }
    fake.send_interested();
    let (_, before) = fake.wait_for(within(REACT), "unchoke after interested", |m| {
        *m == Msg::Unchoke
    });
    assert!(before.is_empty(), "before the unchoke btd sent {before:?}");
    for b in [
        Block::new(5, BLOCK, BLOCK),
        meta.last_block(),
        Block::new(0, 0, BLOCK),
    ] {
        fake.send_request(b);
        expect_piece(&mut fake, &fx, b);
    }
    // More than 16 KiB in one request: dropped, and nothing of it served.
    fake.send_request(Block::new(1, 0, 2 * BLOCK));
    let got = fake.expect_closed(within(REACT));
    assert!(
        got.iter().all(|m| !matches!(m, Msg::Piece { .. })),
        "btd served (part of) a 32 KiB request: {got:?}"
    );

    // A request while choked is void: not served now, nor later once we are unchoked (the next
    // piece message is for the request after the unchoke).
    let mut choked = FakePeer::connect("fake leecher, choked", next_ip(), addr);
    open_handshake(&mut choked, &meta);
    match choked.next_message(within(SHORT)) {
        Msg::Bitfield(bits) => assert_eq!(bits, meta.full_bitfield()),
        other => panic!("btd seeder's first message is {other:?}, not a bitfield"),
    }
    let void = Block::new(2, 0, BLOCK);
    choked.send_request(void);
    let (got, closed) = choked.collect_until(within(QUIET));
    assert!(
        closed.is_none(),
        "btd dropped a peer for one request while choked"
    );
    assert!(
        got.iter().all(|m| !matches!(m, Msg::Piece { .. })),
        "btd served a choked peer: {got:?}"
    );
    choked.send_interested();
    let (_, before) = choked.wait_for(within(REACT), "unchoke after interested", |m| {
        *m == Msg::Unchoke
    });
    assert!(
        before.iter().all(|m| !matches!(m, Msg::Piece { .. })),
        "btd served a choked peer: {before:?}"
    );
    let real = Block::new(3, BLOCK, BLOCK);
    choked.send_request(real);
    expect_piece(&mut choked, &fx, real);

    seeder.assert_running();
    seeder.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_seeder_closes_a_leecher_whose_last_have_makes_it_a_seed() {
    // The peer thread gathers a peer's `have`s for up to 100 ms before its coordinator sees
    // them: the last one must still reach it with nothing after it on the wire to carry it.
    let fx = Fixture::new("fp-haves", 2 * MIB, PIECE_LEN);
    let meta = fx.meta.clone();
    let mut seeder = btd_seed("btd seeder", &fx.torrent, &fx.seed_dir, next_ip(), &[]);
    let addr = seeder.wait_listening();

    let mut fake = first_connection("fake leecher, one have at a time", addr, &meta);
    match fake.next_message(within(SHORT)) {
        Msg::Bitfield(bits) => assert_eq!(bits, meta.full_bitfield()),
        other => panic!("btd seeder's first message is {other:?}, not a bitfield"),
    }
    let last = meta.num_pieces - 1;
    for piece in 0..last {
        fake.send_have(piece);
    }
    let (_, closed) = fake.collect_until(within(QUIET));
    assert!(
        closed.is_none(),
        "btd closed a peer that still lacks piece {last}\n{}",
        fake.transcript()
    );
    // Now both sides only upload: btd hangs up.
    fake.send_have(last);
    fake.expect_closed(within(REACT));

    seeder.assert_running();
    seeder.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_seeder_drops_peers_sending_malformed_frames_and_keeps_serving_others() {
    let fx = Fixture::new("fp-malformed", MIB + 777, PIECE_LEN);
    let meta = fx.meta.clone();
    let n = meta.bitfield_len();
    let mut seeder = btd_seed("btd seeder", &fx.torrent, &fx.seed_dir, next_ip(), &[]);
    let addr = seeder.wait_listening();

    let huge = |id: u8| {
        let mut b = vec![0xff, 0xff, 0xff, 0xff, id];
        b.extend_from_slice(&[0; 64]);
        b
    };
    let mut spare_bit_set = meta.full_bitfield();
    *spare_bit_set.last_mut().expect("a byte") |= 1;
    assert_ne!(meta.num_pieces % 8, 0, "want spare bits in the bitfield");
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("length prefix 0xFFFFFFFF, piece id", huge(7)),
        ("length prefix 0xFFFFFFFF, bitfield id", huge(5)),
        ("length prefix 0xFFFFFFFF, unknown id 20", huge(20)),
        ("bitfield one byte too long", frame(5, &vec![0xff; n + 1])),
        ("bitfield one byte too short", frame(5, &vec![0xff; n - 1])),
        ("bitfield with a spare bit set", frame(5, &spare_bit_set)),
        (
            "have for the piece past the last",
            frame(4, &meta.num_pieces.to_be_bytes()),
        ),
        ("have for piece 2^32-1", frame(4, &u32::MAX.to_be_bytes())),
    ];
    for (i, (what, bytes)) in malformed.iter().enumerate() {
        let name = format!("fake sending {what}");
        let mut fake = if i == 0 {
            first_connection(&name, addr, &meta)
        } else {
            let mut fake = FakePeer::connect(&name, next_ip(), addr);
            open_handshake(&mut fake, &meta);
            fake
        };
        match fake.next_message(within(SHORT)) {
            Msg::Bitfield(bits) => assert_eq!(bits, meta.full_bitfield()),
            other => panic!("btd seeder's first message is {other:?}, not a bitfield"),
        }
        fake.send_raw(what, bytes);
        let got = fake.expect_closed(within(REACT));
        assert!(got.is_empty(), "btd answered {what} with {got:?}");
        seeder.assert_running();
    }

    // An honest peer afterwards gets every block, right.
    let mut honest = FakePeer::connect("honest fake leecher", next_ip(), addr);
    open_handshake(&mut honest, &meta);
    match honest.next_message(within(SHORT)) {
        Msg::Bitfield(bits) => assert_eq!(bits, meta.full_bitfield()),
        other => panic!("btd seeder's first message is {other:?}, not a bitfield"),
    }
    honest.send_interested();
    honest.wait_for(within(REACT), "unchoke after interested", |m| {
        *m == Msg::Unchoke
    });
    let blocks = meta.all_blocks();
    for b in &blocks {
        honest.send_request(*b);
    }
    for b in &blocks {
        expect_piece(&mut honest, &fx, *b);
    }
    seeder.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_cancels_the_endgame_duplicate_at_the_stalled_peer_when_the_other_delivers() {
    // 5 pieces, 10 blocks: fewer than btd's first pipeline, so the first peer to unchoke it is
    // asked for every block.
    let fx = Fixture::new("fp-endgame", 4 * u64::from(PIECE_LEN) + 20_000, PIECE_LEN);
    let meta = fx.meta.clone();
    let all: BTreeSet<Block> = meta.all_blocks().into_iter().collect();
    let la = FakeListener::bind("seeder A (stalls)", next_ip());
    let lb = FakeListener::bind("seeder B", next_ip());
    let out = fx.out_dir("leecher");
    let mut btd = btd_download(
        "btd leecher",
        &fx.torrent,
        &out,
        next_ip(),
        &[la.addr(), lb.addr()],
    );
    let mut a = la.accept(within(SHORT));
    let mut b = lb.accept(within(SHORT));
    for fake in [&mut a, &mut b] {
        answer_handshake(fake, &meta);
        fake.send_bitfield(&meta.full_bitfield());
        let (_, before) = fake.wait_for(within(SHORT), "interested", |m| *m == Msg::Interested);
        assert!(before.is_empty(), "before interested btd sent {before:?}");
    }

    // A is asked for every block.
    a.send_unchoke();
    let mut a_requests: Vec<Block> = Vec::new();
    while a_requests.len() < all.len() {
        match a.next_message(within(SHORT)) {
            Msg::Request(r) => {
                check_request(&a, &meta, r, &a_requests, &HashSet::new());
                a_requests.push(r);
            }
            other => panic!("A wants requests, got {other:?}"),
        }
    }
    // A delivers the first two pieces it was asked for; btd's `have`s show it took them.
    let mut served: Vec<u32> = Vec::new();
    for r in &a_requests {
        if !served.contains(&r.piece) && served.len() < 2 {
            served.push(r.piece);
        }
    }
    let mut delivered = HashSet::new();
    for r in a_requests.iter().filter(|r| served.contains(&r.piece)) {
        a.send_piece(r.piece, r.offset, fx.block_data(*r));
        delivered.insert(*r);
    }
    let a_stalled_since = Instant::now();
    let mut awaited: BTreeSet<u32> = served.iter().copied().collect();
    while !awaited.is_empty() {
        match a.next_message(within(REACT)) {
            Msg::Have(p) => assert!(awaited.remove(&p), "btd announced piece {p}"),
            other => panic!("A wants btd's have for {awaited:?}, got {other:?}"),
        }
    }
    let stalled: BTreeSet<Block> = all
        .iter()
        .filter(|r| !delivered.contains(*r))
        .copied()
        .collect();

    // Endgame: B, unchoked now, is asked for exactly the blocks A still owes.
    b.send_unchoke();
    let mut b_requests: Vec<Block> = Vec::new();
    while b_requests.len() < stalled.len() {
        match b.next_message(within(REACT)) {
            Msg::Request(r) => {
                check_request(&b, &meta, r, &b_requests, &delivered);
                assert!(
                    stalled.contains(&r),
                    "B was asked for {r}, which A did not owe"
                );
                b_requests.push(r);
            }
            Msg::Have(_) => {}
            other => panic!("B wants endgame requests, got {other:?}"),
        }
    }

    // B delivers them one at a time; after each, A gets a cancel for exactly that block. (The
    // last may instead find A's connection closed: btd is complete then and drops seeds.)
    for (i, r) in b_requests.iter().enumerate() {
        b.send_piece(r.piece, r.offset, fx.block_data(*r));
        let last = i + 1 == b_requests.len();
        loop {
            match a.recv(within(REACT)) {
                Recv::Msg(Msg::Cancel(c)) => {
                    assert_eq!(c, *r, "A got a cancel for {c} after B delivered {r}");
                    break;
                }
                Recv::Msg(Msg::Have(_) | Msg::KeepAlive) => {}
                Recv::Msg(other) => panic!("A wants a cancel for {r}, got {other:?}"),
                Recv::Closed(why) if last => {
                    eprintln!("A closed ({why}) instead of a cancel for the last block {r}");
                    break;
                }
                Recv::Closed(why) => panic!("A closed ({why}) before a cancel for {r}"),
                Recv::Timeout => panic!(
                    "A got no cancel for {r} after B delivered it\n{}",
                    a.transcript()
                ),
            }
        }
    }
    // btd also gives up on a peer's requests 20 s after its last block; these cancels came well
    // before that.
    let stalled_for = a_stalled_since.elapsed();
    assert!(
        stalled_for < Duration::from_secs(15),
        "A stalled for {stalled_for:?}"
    );
    btd.assert_exits_ok(SHORT);
    assert_same_files(&fx.payload(), &out.join(&fx.name));
}
