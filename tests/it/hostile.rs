//! Hostile and buggy peers against real btd processes that are serving (or using) an honest
//! peer at the same time: scripted peers (`support::fake_peer`, every byte written by hand)
//! send absurd lengths, truncated and malformed messages, bad bitfields and haves, bad and
//! flooding requests, never read, send data that fails its hash or was never asked for, stall
//! mid-piece, lie in their handshake, or open too many connections. Each test asserts what btd
//! does about it (the connection closes within a bound, nothing is served, the address is
//! banned, a slow peer's blocks go to others) and that the honest peer ends with the right bytes.
//!
//! Scenarios are grouped so one btd process serves many offenders in turn, each offender on a
//! fresh connection from its own loopback address.

use crate::support::fake_peer::{
    BLOCK, Block, FakeListener, FakePeer, Fixture, Msg, Recv, TorrentMeta, frame, handshake_bytes,
};
use crate::support::{
    Btd, LtClient, PYTHON, PeerSpec, Proc, SHORT, TRANSFER, assert_same_files, client_script,
    connect_from, hex, next_ip,
};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Two blocks per piece.
const PIECE_LEN: u32 = 32 * 1024;
/// How long btd gets to react to something on one connection (a close, an unchoke, a piece).
const REACT: Duration = Duration::from_secs(5);
/// How long a test watches for something btd must not do.
const QUIET: Duration = Duration::from_millis(500);

fn within(d: Duration) -> Instant {
    Instant::now() + d
}

/// Writes `text` as a btd config file next to the fixture and returns its path.
fn write_config(fx: &Fixture, label: &str, text: &str) -> PathBuf {
    let path = fx.tmp.path().join(format!("{label}.toml"));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

/// `btd ARGS... --config CONFIG --bind IP --port 0 [--peer ADDR]...` at debug level (the log
/// is what some assertions read).
fn btd(name: &str, args: &[&OsString], config: &Path, ip: Ipv4Addr, peers: &[SocketAddr]) -> Btd {
    let mut all: Vec<OsString> = args.iter().map(|a| (*a).clone()).collect();
    all.extend([
        "--config".into(),
        config.into(),
        "--bind".into(),
        ip.to_string().into(),
        "--port".into(),
        "0".into(),
    ]);
    for p in peers {
        all.extend(["--peer".into(), p.to_string().into()]);
    }
    let mut cmd = Btd::command(all);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "btd=debug");
    }
    Btd::spawn(name, cmd)
}

fn seed(name: &str, fx: &Fixture, config: &Path, ip: Ipv4Addr, peers: &[SocketAddr]) -> Btd {
    let args = [
        "seed".into(),
        fx.torrent.clone().into(),
        "-d".into(),
        fx.seed_dir.clone().into(),
    ];
    btd(name, &args.iter().collect::<Vec<_>>(), config, ip, peers)
}

fn download(
    name: &str,
    fx: &Fixture,
    out: &Path,
    config: &Path,
    ip: Ipv4Addr,
    peers: &[SocketAddr],
) -> Btd {
    let args: [OsString; 4] = [
        "download".into(),
        fx.torrent.clone().into(),
        "-o".into(),
        out.into(),
    ];
    btd(name, &args.iter().collect::<Vec<_>>(), config, ip, peers)
}

/// A fresh connection to a btd seeder, handshakes exchanged and its bitfield (every piece) read.
fn connected(name: &str, to: SocketAddr, meta: &TorrentMeta) -> FakePeer {
    let mut fake = FakePeer::connect(name, next_ip(), to);
    fake.send_handshake(&meta.info_hash);
    fake.expect_handshake(&meta.info_hash, within(SHORT));
    match fake.next_message(within(SHORT)) {
        Msg::Bitfield(bits) => assert_eq!(bits, meta.full_bitfield(), "{name}: btd's bitfield"),
        other => panic!("{name}: btd seeder's first message is {other:?}, not a bitfield"),
    }
    fake
}

/// [`connected`], then interested and btd's unchoke.
fn unchoked(name: &str, to: SocketAddr, meta: &TorrentMeta) -> FakePeer {
    let mut fake = connected(name, to, meta);
    fake.send_interested();
    fake.wait_for(within(REACT), "unchoke after interested", |m| {
        *m == Msg::Unchoke
    });
    fake
}

/// btd closes the connection within [`REACT`] and sends nothing before (keep-alives aside).
fn assert_dropped_silently(fake: &mut FakePeer, what: &str) {
    let got = fake.expect_closed(within(REACT));
    assert!(
        got.is_empty(),
        "btd answered {what} with {got:?}\n{}",
        fake.transcript()
    );
}

/// 700 bytes of HTTP instead of a handshake: not a plaintext handshake, so btd takes it for
/// the start of an encrypted one (MSE), answers with at most its public key and pad (608
/// bytes), finds no synchronisation hash within the bounds the pads allow, and closes: no
/// BitTorrent handshake, and no waiting for the handshake timeout.
fn assert_garbage_gets_no_handshake(addr: std::net::SocketAddr) {
    let mut garbage = connect_from(next_ip(), addr).expect("connect the garbage peer");
    let http = b"GET / HTTP/1.1\r\n".repeat(44);
    garbage.write_all(&http[..700]).expect("send the garbage");
    garbage
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let deadline = within(REACT);
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match garbage.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => break true,
            Err(_) if Instant::now() >= deadline => break false,
            Err(_) => {}
        }
    };
    assert!(
        closed,
        "btd kept a connection that sent 700 bytes of garbage open"
    );
    assert!(
        reply.len() <= 96 + 512 && !reply.starts_with(b"\x13BitTorrent protocol"),
        "btd answered garbage with {} bytes: {:?}",
        reply.len(),
        &reply[..reply.len().min(40)]
    );
}

/// The next message other than a keep-alive is a piece message with exactly the payload's bytes
/// of block `b`.
fn expect_piece(fake: &mut FakePeer, fx: &Fixture, b: Block) {
    match fake.next_message(within(REACT)) {
        Msg::Piece {
            piece,
            offset,
            data,
        } => {
            let len = u32::try_from(data.len()).expect("a block");
            assert_eq!(
                Block::new(piece, offset, len),
                b,
                "{}: btd sent a different block than the valid request\n{}",
                fake.name(),
                fake.transcript()
            );
            assert!(
                data == fx.block_data(b),
                "{}: wrong bytes for {b}",
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

/// A config whose leecher downloads at `kib_per_sec`, so the download overlaps what a test does
/// to the seeder meanwhile.
fn slow_leecher_config(kib_per_sec: u64) -> String {
    format!("[rates]\ndownload_kib_per_sec = {kib_per_sec}\n")
}

#[test]
fn seeder_drops_peers_that_break_the_wire_protocol_or_handshake_and_serves_an_honest_leecher() {
    let fx = Fixture::new("hostile-wire", 4 * MIB + 3333, PIECE_LEN);
    let meta = fx.meta.clone();
    let n = meta.bitfield_len();
    assert_ne!(meta.num_pieces % 8, 0, "want spare bits in the bitfield");
    let seeder_config = write_config(&fx, "seeder", "");
    let mut seeder = seed("btd seeder", &fx, &seeder_config, next_ip(), &[]);
    let addr = seeder.wait_listening();
    // btd logs `listening on` before the torrent is registered: the first connection retries.
    let mut first = FakePeer::connect_when_ready(
        "first fake",
        next_ip(),
        addr,
        &meta.info_hash,
        within(SHORT),
    );
    first.next_message(within(SHORT));
    // Meanwhile, a handshake trickled a byte every 500 ms (each read of btd's well within its
    // timeout): btd's 10 s are for the whole handshake, so it hangs up long before the 68th byte.
    let trickler = {
        let mut fake = FakePeer::connect("fake trickling its handshake", next_ip(), addr);
        let bytes = handshake_bytes(&meta.info_hash, &fake.peer_id());
        std::thread::spawn(move || {
            let started = Instant::now();
            for (i, byte) in bytes.iter().enumerate() {
                if fake
                    .try_send_raw("a byte of the handshake", &[*byte])
                    .is_err()
                {
                    return (i, started.elapsed(), fake);
                }
                if let Recv::Closed(_) = fake.recv(within(Duration::from_millis(500))) {
                    return (i + 1, started.elapsed(), fake);
                }
            }
            (bytes.len(), started.elapsed(), fake)
        })
    };
    let out = fx.out_dir("honest");
    let leecher_config = write_config(&fx, "leecher", &slow_leecher_config(1024));
    let mut honest = download(
        "honest btd leecher",
        &fx,
        &out,
        &leecher_config,
        next_ip(),
        &[addr],
    );

    // Each offender: a fresh connection that gets btd's bitfield, sends its bytes, and must be
    // closed with nothing sent back.
    let absurd = |len: u32, id: u8| {
        let mut b = len.to_be_bytes().to_vec();
        b.push(id);
        b.extend_from_slice(&[0xab; 64]);
        b
    };
    let mut spare_bit_set = meta.full_bitfield();
    *spare_bit_set.last_mut().expect("a byte") |= 1;
    let mut second_bad = frame(5, &meta.full_bitfield());
    second_bad.extend(frame(5, &vec![0xff; n + 3]));
    let offenders: Vec<(&str, Vec<u8>)> = vec![
        (
            "a 4 GiB piece message (length 0xFFFFFFFF)",
            absurd(u32::MAX, 7),
        ),
        ("a 4 GiB bitfield", absurd(u32::MAX, 5)),
        ("a 2 GiB extended message", absurd(1 << 31, 20)),
        ("a 4 GiB message of unknown id 99", absurd(u32::MAX, 99)),
        ("a 16 MiB + 1 have", absurd((16 << 20) + 1, 4)),
        ("a have with a 2-byte payload", frame(4, &[0, 1])),
        ("a request with an 8-byte payload", frame(6, &[0; 8])),
        ("a piece message shorter than its header", frame(7, &[0; 5])),
        ("a choke with a payload", frame(0, &[1])),
        ("a bitfield one byte too long", frame(5, &vec![0xff; n + 1])),
        (
            "a bitfield one byte too short",
            frame(5, &vec![0xff; n - 1]),
        ),
        ("an empty bitfield", frame(5, &[])),
        ("a bitfield with a spare bit set", frame(5, &spare_bit_set)),
        ("a good bitfield, then one of the wrong length", second_bad),
        (
            "have for the piece past the last",
            frame(4, &meta.num_pieces.to_be_bytes()),
        ),
        ("have for piece 2^32-1", frame(4, &u32::MAX.to_be_bytes())),
        (
            "fast-extension have-all without the fast bit",
            frame(14, &[]),
        ),
    ];
    let count = offenders.len();
    for (what, bytes) in offenders {
        let mut fake = connected(&format!("fake sending {what}"), addr, &meta);
        fake.send_raw(what, &bytes);
        assert_dropped_silently(&mut fake, what);
    }

    // A message cut off by the end of the stream: btd sees the end and closes too, serving
    // nothing of it.
    let mut truncated = unchoked("fake truncating a request", addr, &meta);
    let request = frame(6, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0]);
    truncated.send_raw("the first 9 of 17 bytes of a request", &request[..9]);
    truncated.shutdown_write();
    assert_dropped_silently(&mut truncated, "a truncated request");

    // Handshakes: a wrong info hash gets no handshake; nor does one that is not BitTorrent; our
    // own peer id gets nothing after the handshake.
    let mut wrong = FakePeer::connect("fake with a wrong info hash", next_ip(), addr);
    let other_hash = [0x5a; 20];
    wrong.send_handshake(&other_hash);
    assert!(
        wrong
            .handshake_or_closed(&other_hash, within(REACT))
            .is_none(),
        "btd answered a handshake for a torrent it does not have"
    );
    assert_garbage_gets_no_handshake(addr);
    let mut me = FakePeer::connect("fake with btd's own peer id", next_ip(), addr);
    let btd_id = {
        let mut probe = FakePeer::connect("peer id probe", next_ip(), addr);
        probe.send_handshake(&meta.info_hash);
        probe.expect_handshake(&meta.info_hash, within(SHORT))
    };
    me.send_raw(
        "handshake with btd's peer id",
        &handshake_bytes(&meta.info_hash, &btd_id),
    );
    let _ = me.handshake_or_closed(&meta.info_hash, within(REACT));
    assert_dropped_silently(&mut me, "a handshake with btd's own peer id");

    // Tolerated, not dropped: a message of an unknown id, and a second bitfield of the right
    // length (aria2 sends one); the peer is still served afterwards.
    let mut odd = connected(
        "fake sending an unknown id and a second bitfield",
        addr,
        &meta,
    );
    odd.send_raw("unknown id 99 (10 bytes)", &frame(99, &[7; 10]));
    odd.send_bitfield(&vec![0; n]);
    odd.send_bitfield(&vec![0; n]);
    odd.send_keep_alive();
    odd.send_interested();
    odd.wait_for(within(REACT), "unchoke after interested", |m| {
        *m == Msg::Unchoke
    });
    let b = Block::new(meta.num_pieces / 2, BLOCK, BLOCK);
    odd.send_request(b);
    expect_piece(&mut odd, &fx, b);

    let (sent, after, trickled) = trickler.join().expect("the trickler thread");
    eprintln!("btd hung up on the trickler after {sent} bytes, {after:?}");
    assert!(
        trickled.is_closed() && sent < 68 && after < Duration::from_secs(10) + REACT,
        "btd was still reading a trickled handshake after {sent} bytes and {after:?}\n{}",
        trickled.transcript()
    );
    eprintln!(
        "{} offenders dropped; the honest leecher {} still downloading",
        count + 5,
        if honest.has_exited() {
            "was not"
        } else {
            "was"
        }
    );
    seeder.assert_running();
    honest.assert_exits_ok(TRANSFER);
    assert_same_files(&fx.payload(), &out.join(&fx.name));
    seeder.terminate_and_assert_ok(SHORT);
}

#[test]
fn seeder_refuses_bad_requests_drops_floods_and_slow_readers_and_serves_an_honest_leecher() {
    let fx = Fixture::new("hostile-requests", 4 * MIB + 5555, PIECE_LEN);
    let meta = fx.meta.clone();
    let last = meta.num_pieces - 1;
    let last_size = meta.piece_size(last);
    assert!(last_size < PIECE_LEN, "want a short last piece");
    // A write that makes no progress for 3 s drops the peer (60 s by default).
    let seeder_config = write_config(&fx, "seeder", "[network]\nwrite_timeout_secs = 3\n");
    let mut seeder = seed("btd seeder", &fx, &seeder_config, next_ip(), &[]);
    let addr = seeder.wait_listening();
    let mut first = FakePeer::connect_when_ready(
        "first fake",
        next_ip(),
        addr,
        &meta.info_hash,
        within(SHORT),
    );
    first.next_message(within(SHORT));
    drop(first);
    let out = fx.out_dir("honest");
    let leecher_config = write_config(&fx, "leecher", &slow_leecher_config(1024));
    let mut honest = download(
        "honest btd leecher",
        &fx,
        &out,
        &leecher_config,
        next_ip(),
        &[addr],
    );

    // Requests outside the torrent are not served and do not end the connection: the next piece
    // message answers the valid request after them.
    let mut fake = unchoked("fake requesting out of range", addr, &meta);
    let bad = [
        Block::new(meta.num_pieces, 0, BLOCK),
        Block::new(u32::MAX, 0, BLOCK),
        Block::new(0, PIECE_LEN, BLOCK),
        Block::new(0, PIECE_LEN - 8192, BLOCK),
        Block::new(last, last_size - 100, 200),
        Block::new(last, u32::MAX - 10, 100),
        Block::new(1, 0, 0),
    ];
    for b in bad {
        fake.send_request(b);
    }
    let good = Block::new(2, BLOCK, BLOCK);
    fake.send_request(good);
    expect_piece(&mut fake, &fx, good);
    let (got, closed) = fake.collect_until(within(QUIET));
    assert!(
        closed.is_none() && got.iter().all(|m| !matches!(m, Msg::Piece { .. })),
        "after out-of-range requests btd sent {got:?}, closed: {closed:?}"
    );

    // More than 16 KiB in one request: dropped, nothing served.
    for len in [BLOCK + 1, 1 << 31] {
        let mut fake = unchoked(&format!("fake requesting {len} bytes"), addr, &meta);
        fake.send_request(Block::new(0, 0, len));
        assert_dropped_silently(&mut fake, &format!("a request of {len} bytes"));
    }

    // Requests while choked are void: not served then, nor once unchoked.
    let mut choked = connected("fake requesting while choked", addr, &meta);
    for p in 0..8 {
        choked.send_request(Block::new(p, 0, BLOCK));
    }
    let (got, closed) = choked.collect_until(within(QUIET));
    assert!(
        closed.is_none() && got.is_empty(),
        "btd answered requests while choking with {got:?}, closed: {closed:?}"
    );
    choked.send_interested();
    choked.wait_for(within(REACT), "unchoke", |m| *m == Msg::Unchoke);
    let good = Block::new(9, 0, BLOCK);
    choked.send_request(good);
    expect_piece(&mut choked, &fx, good);

    // A flood: 6000 requests in one write, more than btd queues for one peer (4096).
    let mut flood = unchoked("fake flooding requests", addr, &meta);
    let blocks = meta.all_blocks();
    let bytes: Vec<u8> = (0..6000)
        .flat_map(|i| {
            let b = blocks[i % blocks.len()];
            frame(
                6,
                &[b.piece, b.offset, b.len].map(u32::to_be_bytes).concat(),
            )
        })
        .collect();
    flood.send_raw("6000 requests", &bytes);
    let got = flood.expect_closed(within(REACT));
    let served = got
        .iter()
        .filter(|m| matches!(m, Msg::Piece { .. }))
        .count();
    assert!(served < 4096, "btd served {served} blocks of a flood");
    seeder.wait_for_line(REACT, "the flood named in the log", |l| {
        l.contains(&format!(
            "{}: disconnected: protocol violation: request flood",
            flood.local_addr()
        ))
        .then_some(())
    });

    // A peer that asks for 2000 blocks (32 MiB) and never reads: btd's write stops making
    // progress and times out; the thread does not block forever.
    let mut sloth = unchoked("fake that never reads", addr, &meta);
    let bytes: Vec<u8> = (0..2000)
        .flat_map(|i| {
            let b = blocks[i % blocks.len()];
            frame(
                6,
                &[b.piece, b.offset, b.len].map(u32::to_be_bytes).concat(),
            )
        })
        .collect();
    sloth.send_raw("2000 requests", &bytes);
    let since = Instant::now();
    let line = format!("peer {}: disconnected: write failed", sloth.local_addr());
    seeder.wait_for_line(
        Duration::from_secs(3) + REACT + REACT,
        "the slow reader's write timeout",
        |l| l.contains(&line).then_some(()),
    );
    let waited = since.elapsed();
    eprintln!("btd dropped the slow reader {waited:?} after its requests");
    // What was in flight drains, then the end of the stream (or a reset).
    let (_, closed) = sloth.collect_until(within(REACT));
    assert!(
        closed.is_some(),
        "the slow reader's connection is still open"
    );

    seeder.assert_running();
    honest.assert_exits_ok(TRANSFER);
    assert_same_files(&fx.payload(), &out.join(&fx.name));
    seeder.terminate_and_assert_ok(SHORT);
}

/// Dials `to` from `from` and sends a handshake: `Some(fake)` when btd answers with its
/// handshake and bitfield (a peer it took), `None` when it closes the connection first.
fn try_join(name: &str, from: Ipv4Addr, to: SocketAddr, meta: &TorrentMeta) -> Option<FakePeer> {
    let mut fake = FakePeer::connect(name, from, to);
    // The write fails when btd has already closed the connection.
    let _ = fake.try_send_raw(
        "handshake",
        &handshake_bytes(&meta.info_hash, &fake.peer_id()),
    );
    fake.handshake_or_closed(&meta.info_hash, within(REACT))?;
    match fake.recv(within(REACT)) {
        Recv::Msg(Msg::Bitfield(_)) => Some(fake),
        Recv::Closed(_) => None,
        other => panic!("{name}: want btd's bitfield or a close, got {other:?}"),
    }
}

#[test]
fn listener_limits_connections_per_ip_and_globally_and_an_honest_leecher_completes() {
    let fx = Fixture::new("hostile-floods", 4 * MIB + 777, PIECE_LEN);
    let meta = fx.meta.clone();
    let seeder_config = write_config(&fx, "seeder", "[peers]\nmax_per_ip = 2\nmax_global = 5\n");
    let mut seeder = seed("btd seeder", &fx, &seeder_config, next_ip(), &[]);
    let addr = seeder.wait_listening();
    let probe =
        FakePeer::connect_when_ready("probe", next_ip(), addr, &meta.info_hash, within(SHORT));
    drop(probe);
    // The honest leecher takes one of the 5 slots for the whole test (about 16 s at 256 KiB/s).
    let out = fx.out_dir("honest");
    let leecher_config = write_config(&fx, "leecher", &slow_leecher_config(256));
    let honest_ip = next_ip();
    let mut honest = download(
        "honest btd leecher",
        &fx,
        &out,
        &leecher_config,
        honest_ip,
        &[addr],
    );
    let honest_in = format!(" {honest_ip}:");
    seeder.wait_for_line(SHORT, "the honest leecher connected", |l| {
        (l.contains(&honest_in) && l.contains("connected (in)")).then_some(())
    });

    // Per IP: of 5 connections from one address, btd takes 2.
    let crowd_ip = next_ip();
    let mut taken: Vec<FakePeer> = (0..5)
        .filter_map(|i| try_join(&format!("crowd {i}"), crowd_ip, addr, &meta))
        .collect();
    assert_eq!(
        taken.len(),
        2,
        "btd took {} connections from one IP (max_per_ip 2)",
        taken.len()
    );
    // A slot freed is a slot again: after one closes, the address gets one more (once btd has
    // seen the close).
    drop(taken.pop());
    let deadline = within(REACT);
    loop {
        if let Some(fake) = try_join("crowd, again", crowd_ip, addr, &meta) {
            taken.push(fake);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "btd never took a connection from the crowd's IP again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Globally: 5 slots, 3 taken (honest + 2 from the crowd): of 6 newcomers from 6 addresses
    // btd takes 2.
    let newcomers: Vec<FakePeer> = (0..6)
        .filter_map(|i| try_join(&format!("newcomer {i}"), next_ip(), addr, &meta))
        .collect();
    assert_eq!(
        newcomers.len(),
        2,
        "btd took {} newcomers into 2 free slots",
        newcomers.len()
    );
    let gone: Vec<SocketAddr> = taken
        .iter()
        .chain(&newcomers)
        .map(FakePeer::local_addr)
        .collect();
    drop(newcomers);
    drop(taken);
    for a in gone {
        let line = format!("{a} (in): disconnected");
        seeder.wait_for_line(REACT, "btd seeing a fake leave", |l| {
            l.contains(&line).then_some(())
        });
    }

    // Silent connections (no handshake) hold a thread each for up to 10 s: btd takes at most 64
    // at once, from 70 addresses, and refuses the rest at once.
    let silent: Vec<FakePeer> = (0..70)
        .map(|i| FakePeer::connect(&format!("silent {i}"), next_ip(), addr))
        .collect();
    let started = Instant::now();
    let mut refused = 0;
    let mut waiting = 0;
    for mut s in silent {
        let left = Duration::from_secs(2).saturating_sub(started.elapsed());
        match s.recv(within(left.max(Duration::from_millis(10)))) {
            Recv::Closed(_) => refused += 1,
            Recv::Timeout => waiting += 1,
            Recv::Msg(m) => panic!("btd sent {m:?} to a silent connection"),
        }
    }
    assert_eq!(
        (waiting, refused),
        (64, 6),
        "of 70 silent connections btd kept (waiting, refused) at once; want 64 kept"
    );

    assert!(
        !honest.has_exited(),
        "the honest leecher finished before the floods did: the slot counts above assumed it \
         connected"
    );
    honest.assert_exits_ok(TRANSFER);
    assert_same_files(&fx.payload(), &out.join(&fx.name));
    seeder.assert_running();
    seeder.terminate_and_assert_ok(SHORT);
}

#[test]
fn leecher_bans_a_peer_whose_pieces_fail_their_hash_and_completes_from_an_honest_seeder() {
    let fx = Fixture::new("hostile-liar", 2 * MIB + 4321, PIECE_LEN);
    let meta = fx.meta.clone();
    let liar_ip = next_ip();
    let listener = FakeListener::bind("lying seeder", liar_ip);
    // The honest seeder uploads slowly (about 8 s for the payload), so the liar, which answers
    // at once, delivers many pieces, alone or mixed with honest blocks.
    let seeder_config = write_config(&fx, "seeder", "[rates]\nupload_kib_per_sec = 256\n");
    let mut honest = seed("honest btd seeder", &fx, &seeder_config, next_ip(), &[]);
    let honest_addr = honest.wait_listening();
    FakePeer::connect_when_ready(
        "probe",
        next_ip(),
        honest_addr,
        &meta.info_hash,
        within(SHORT),
    );
    let out = fx.out_dir("leecher");
    let leecher_config = write_config(&fx, "leecher", "");
    let mut leecher = download(
        "btd leecher",
        &fx,
        &out,
        &leecher_config,
        next_ip(),
        &[listener.addr(), honest_addr],
    );
    let leecher_addr = leecher.wait_listening();

    let mut liar = listener.accept(within(SHORT));
    liar.expect_handshake(&meta.info_hash, within(SHORT));
    liar.send_handshake(&meta.info_hash);
    liar.send_bitfield(&meta.full_bitfield());
    liar.wait_for(within(SHORT), "interested", |m| *m == Msg::Interested);
    liar.send_unchoke();
    // Every request answered at once with wrong bytes, until btd hangs up.
    let mut lies = 0;
    let deadline = within(SHORT);
    loop {
        match liar.recv(deadline) {
            Recv::Msg(Msg::Request(b)) => {
                let junk: Vec<u8> = fx.block_data(b).iter().map(|x| x ^ 0x5a).collect();
                if liar.try_send_piece(b.piece, b.offset, &junk).is_err() {
                    break;
                }
                lies += 1;
            }
            Recv::Msg(_) => {}
            Recv::Closed(_) => break,
            Recv::Timeout => panic!("btd neither stopped asking the liar nor dropped it"),
        }
    }
    eprintln!("the liar sent {lies} bad blocks before btd dropped it");
    let ban = format!("{}: banned after", listener.addr());
    leecher.wait_for_line(REACT, "the liar's ban", |l| l.contains(&ban).then_some(()));

    // Banned: a connection from the liar's address gets nothing and is closed.
    let mut again = FakePeer::connect("liar dialling in", liar_ip, leecher_addr);
    let _ = again.try_send_raw(
        "handshake",
        &handshake_bytes(&meta.info_hash, &again.peer_id()),
    );
    let _ = again.try_send_raw("bitfield", &frame(5, &meta.full_bitfield()));
    let _ = again.handshake_or_closed(&meta.info_hash, within(REACT));
    assert_dropped_silently(&mut again, "a banned peer dialling in");

    leecher.assert_exits_ok(TRANSFER);
    assert_same_files(&fx.payload(), &out.join(&fx.name));
    // Only the liar was blamed: the honest seeder, whose blocks shared pieces with the liar's,
    // never got a strike.
    let log = leecher.output();
    let honest_struck: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&honest_addr.to_string()) && l.contains("bad data"))
        .collect();
    assert!(
        honest_struck.is_empty(),
        "btd blamed the honest seeder: {honest_struck:?}"
    );
    honest.terminate_and_assert_ok(SHORT);
}

#[test]
fn leecher_ignores_unrequested_blocks_drops_a_firehose_refuses_requests_for_missing_pieces_and_reassigns_a_stalled_peers_blocks()
 {
    let fx = Fixture::new("hostile-stall", 2 * MIB + 999, PIECE_LEN);
    let meta = fx.meta.clone();
    let staller_listener = FakeListener::bind("stalling seeder", next_ip());
    let out = fx.out_dir("leecher");
    let leecher_config = write_config(&fx, "leecher", "");
    let mut leecher = download(
        "btd leecher",
        &fx,
        &out,
        &leecher_config,
        next_ip(),
        &[staller_listener.addr()],
    );
    let leecher_addr = leecher.wait_listening();

    // The staller has everything, is asked for a pipeline of blocks, delivers one and stalls.
    let mut staller = staller_listener.accept(within(SHORT));
    staller.expect_handshake(&meta.info_hash, within(SHORT));
    staller.send_handshake(&meta.info_hash);
    staller.send_bitfield(&meta.full_bitfield());
    staller.wait_for(within(SHORT), "interested", |m| *m == Msg::Interested);
    staller.send_unchoke();
    let mut owed: BTreeSet<Block> = BTreeSet::new();
    let first = match staller.next_message(within(REACT)) {
        Msg::Request(b) => b,
        other => panic!("the staller wants a request, got {other:?}"),
    };
    let (more, _) = staller.collect_until(within(QUIET));
    owed.extend(more.iter().filter_map(|m| match m {
        Msg::Request(b) => Some(*b),
        _ => None,
    }));
    staller.send_piece(first.piece, first.offset, fx.block_data(first));
    let stalled_at = Instant::now();
    assert!(!owed.is_empty(), "btd asked the staller for one block only");

    // Meanwhile a peer that btd never asked for anything sends it junk for every block: none of
    // it may reach a piece. It also asks btd for pieces btd does not have.
    let mut pest = FakePeer::connect("unsolicited peer", next_ip(), leecher_addr);
    pest.send_handshake(&meta.info_hash);
    pest.expect_handshake(&meta.info_hash, within(SHORT));
    pest.send_bitfield(&vec![0; meta.bitfield_len()]);
    for b in meta.all_blocks() {
        let junk: Vec<u8> = fx.block_data(b).iter().map(|x| !x).collect();
        pest.send_piece(b.piece, b.offset, &junk);
    }
    pest.send_interested();
    pest.wait_for(within(REACT), "unchoke after interested", |m| {
        *m == Msg::Unchoke
    });
    let missing: Vec<u32> = (0..meta.num_pieces)
        .filter(|p| *p != first.piece)
        .take(4)
        .collect();
    for p in &missing {
        pest.send_request(Block::new(*p, 0, BLOCK));
    }
    let (got, closed) = pest.collect_until(within(QUIET));
    assert!(
        closed.is_none() && got.iter().all(|m| !matches!(m, Msg::Piece { .. })),
        "btd served pieces it does not have: {got:?}, closed: {closed:?}\n{}",
        pest.transcript()
    );

    // A firehose of blocks btd never asked for, more than any honest peer could still have
    // queued after a cancel (a full pipeline of 1,000 plus 64): btd hangs up on it.
    let mut firehose = FakePeer::connect("firehose", next_ip(), leecher_addr);
    firehose.send_handshake(&meta.info_hash);
    firehose.expect_handshake(&meta.info_hash, within(SHORT));
    firehose.send_bitfield(&vec![0; meta.bitfield_len()]);
    let junk = vec![0u8; BLOCK as usize];
    let mut sent = 0;
    while sent < 1100 && firehose.try_send_piece(0, 0, &junk).is_ok() {
        sent += 1;
    }
    let closed_after = Instant::now();
    firehose.expect_closed(within(REACT));
    eprintln!(
        "btd dropped the firehose after {sent} unrequested blocks ({:?} after the last)",
        closed_after.elapsed()
    );
    assert!(
        sent > 1000,
        "btd dropped the firehose after only {sent} blocks"
    );

    // btd gives up on the staller's blocks after its request timeout (20 s) and cancels them.
    let mut cancelled: BTreeSet<Block> = BTreeSet::new();
    let deadline = within(Duration::from_secs(20) + SHORT);
    while !owed.is_subset(&cancelled) {
        match staller.recv(deadline) {
            Recv::Msg(Msg::Cancel(b)) => {
                cancelled.insert(b);
            }
            Recv::Msg(Msg::Request(_) | Msg::KeepAlive | Msg::Have(_)) => {}
            other => panic!(
                "the staller wants cancels for {} blocks, got {other:?} after {:?}\n{}",
                owed.difference(&cancelled).count(),
                stalled_at.elapsed(),
                staller.transcript()
            ),
        }
    }
    let after = stalled_at.elapsed();
    assert!(
        after >= Duration::from_secs(15),
        "btd cancelled after only {after:?}"
    );
    eprintln!(
        "btd cancelled the staller's {} blocks {after:?} after its last block",
        owed.len()
    );

    // An honest seeder turns up (it dials the leecher) and the blocks go to it.
    let seeder_config = write_config(&fx, "seeder", "");
    let mut honest = seed(
        "honest btd seeder",
        &fx,
        &seeder_config,
        next_ip(),
        &[leecher_addr],
    );
    leecher.assert_exits_ok(TRANSFER);
    assert_same_files(&fx.payload(), &out.join(&fx.name));
    let log = leecher.output();
    assert!(
        !log.contains("failed its hash check"),
        "an unrequested junk block reached a piece:\n{log}"
    );
    honest.terminate_and_assert_ok(SHORT);
    drop(pest);
}

#[test]
fn leecher_bans_a_liar_that_hangs_up_after_each_bad_piece_and_dials_back() {
    let fx = Fixture::new("hostile-hit-and-run", MIB + 1234, PIECE_LEN);
    let meta = fx.meta.clone();
    let liar_ip = next_ip();
    let listener = FakeListener::bind("hit-and-run liar", liar_ip);
    let out = fx.out_dir("leecher");
    let leecher_config = write_config(&fx, "leecher", "");
    let mut leecher = download(
        "btd leecher",
        &fx,
        &out,
        &leecher_config,
        next_ip(),
        &[listener.addr()],
    );
    let leecher_addr = leecher.wait_listening();
    let ban = format!("{}: banned after", listener.addr());
    let banned = |leecher: &Btd| leecher.output().contains(&ban);

    // Each connection: one whole piece of wrong bytes, then hang up before btd has hashed it.
    // btd dials the address again a couple of seconds later; strikes must follow the address,
    // not the connection.
    let mut connections = 0;
    while !banned(&leecher) {
        assert!(
            connections < 4,
            "btd took {connections} bad pieces from one address, each on a new connection, and \
             did not ban it\n{}",
            leecher.output()
        );
        let Some(mut liar) = listener.try_accept(within(SHORT)) else {
            break;
        };
        connections += 1;
        if liar
            .handshake_or_closed(&meta.info_hash, within(SHORT))
            .is_none()
        {
            continue;
        }
        liar.send_handshake(&meta.info_hash);
        liar.send_bitfield(&meta.full_bitfield());
        liar.wait_for(within(SHORT), "interested", |m| *m == Msg::Interested);
        liar.send_unchoke();
        let mut asked: Vec<Block> = Vec::new();
        let piece = loop {
            if let Some(p) = asked
                .iter()
                .map(|b| b.piece)
                .find(|p| meta.blocks_of(*p).iter().all(|b| asked.contains(b)))
            {
                break p;
            }
            if let Msg::Request(b) = liar.next_message(within(REACT)) {
                asked.push(b);
            }
        };
        for b in meta.blocks_of(piece) {
            let junk: Vec<u8> = fx.block_data(b).iter().map(|x| x ^ 0xff).collect();
            liar.send_piece(b.piece, b.offset, &junk);
        }
        drop(liar);
        // Let btd hash the piece before the next connection (it logs the failure).
        let failed = format!("piece {piece} failed its hash check");
        leecher.wait_for_line(REACT, "the hash failure", |l| {
            l.contains(&failed).then_some(())
        });
    }
    eprintln!("btd banned the liar after {connections} connections");
    assert!(
        banned(&leecher),
        "btd stopped dialling the liar without banning it"
    );
    // Banned: no more dials, and a connection from its address is closed with nothing sent.
    if let Some(mut again) = listener.try_accept(within(Duration::from_secs(3))) {
        let _ = again.handshake_or_closed(&meta.info_hash, within(REACT));
        let _ = again.try_send_raw(
            "handshake",
            &handshake_bytes(&meta.info_hash, &again.peer_id()),
        );
        assert_dropped_silently(&mut again, "a banned address dialled again");
    }
    let mut incoming = FakePeer::connect("liar dialling in", liar_ip, leecher_addr);
    let _ = incoming.try_send_raw(
        "handshake",
        &handshake_bytes(&meta.info_hash, &incoming.peer_id()),
    );
    let _ = incoming.handshake_or_closed(&meta.info_hash, within(REACT));
    assert_dropped_silently(&mut incoming, "a banned peer dialling in");

    // An honest seeder dials the leecher, which completes with the right bytes.
    let seeder_config = write_config(&fx, "seeder", "");
    let mut honest = seed(
        "honest btd seeder",
        &fx,
        &seeder_config,
        next_ip(),
        &[leecher_addr],
    );
    leecher.assert_exits_ok(TRANSFER);
    assert_same_files(&fx.payload(), &out.join(&fx.name));
    honest.terminate_and_assert_ok(SHORT);
}

/// `idle_peers.py`: `count` connections to `to` that handshake for `meta`'s torrent and then
/// say nothing, each from a /24 network of its own; returns once it reports them open.
fn silent_crowd(to: SocketAddr, meta: &TorrentMeta, count: usize) -> (Proc, usize) {
    let mut cmd = std::process::Command::new(PYTHON);
    cmd.arg(client_script("idle_peers.py"))
        .args(["--to", &to.to_string()])
        .args(["--info-hash", &hex(&meta.info_hash)])
        .args([
            "--count",
            &count.to_string(),
            "--spread",
            "--timeout",
            "300",
        ])
        .arg("--ignore-stdin");
    let mut crowd = Proc::spawn("silent crowd", cmd);
    let held = crowd.wait_for_line(SHORT, "CONNECTED <n>", |l| {
        l.strip_prefix("CONNECTED ")?.trim().parse::<usize>().ok()
    });
    (crowd, held)
}

/// Waits (within [`REACT`]) until the crowd reports fewer than `than` connections open (it
/// looks once a second); false if it never does.
fn crowd_shrinks(crowd: &Proc, than: usize) -> bool {
    let deadline = within(REACT);
    loop {
        let held = crowd
            .output()
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("CONNECTED ")?.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if held < than {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn silent_peers_in_every_slot_make_room_for_an_honest_libtorrent_leecher_and_seeder() {
    let fx = Fixture::new("hostile-room", 2 * MIB + 99, PIECE_LEN);
    let meta = fx.meta.clone();
    // A seeder whose torrent is full of silent peers: a libtorrent leecher still gets in.
    let config = write_config(&fx, "seeder", "[peers]\nmax_per_torrent = 6\n");
    let mut seeder = seed("btd seeder", &fx, &config, next_ip(), &[]);
    let addr = seeder.wait_listening();
    let (crowd, held) = silent_crowd(addr, &meta, 6);
    assert_eq!(
        held, 6,
        "the silent crowd should fill the torrent's 6 slots"
    );
    // Past their grace period, they are the least useful peers there are.
    std::thread::sleep(Duration::from_secs(6));
    let leech_dir = fx.out_dir("libtorrent");
    let mut leecher = LtClient::leech_from("libtorrent leecher", &fx.torrent, &leech_dir, addr);
    let secs = leecher.wait_complete(SHORT);
    assert_same_files(&fx.payload(), &leech_dir.join(&fx.name));
    assert!(
        crowd_shrinks(&crowd, 6),
        "no silent peer was dropped for the leecher"
    );
    eprintln!("honest leecher done in {secs:.1} s past 6 silent peers");
    drop(crowd);
    seeder.terminate_and_assert_ok(SHORT);

    // A downloader whose whole peer budget is taken by silent peers: a libtorrent seeder that
    // dials in still gets a slot, and the download completes.
    let config = write_config(&fx, "leecher", "[peers]\nmax_global = 5\n");
    let out = fx.out_dir("btd");
    let mut leecher = download("btd leecher", &fx, &out, &config, next_ip(), &[]);
    let addr = leecher.wait_listening();
    let (crowd, held) = silent_crowd(addr, &meta, 5);
    assert_eq!(
        held, 5,
        "the silent crowd should take the whole peer budget of 5"
    );
    std::thread::sleep(Duration::from_secs(6));
    let _seeder = LtClient::seed(
        "libtorrent seeder",
        &PeerSpec {
            torrent: &fx.torrent,
            dir: &fx.seed_dir,
            ip: next_ip(),
            peers: vec![addr],
            announce: false,
        },
    );
    leecher.assert_exits_ok(TRANSFER);
    assert_same_files(&fx.payload(), &out.join(&fx.name));
    assert!(
        crowd_shrinks(&crowd, 5),
        "no silent peer was dropped for the seeder"
    );
}

#[test]
fn one_network_holds_at_most_max_per_prefix_of_a_torrents_slots() {
    let fx = Fixture::new("hostile-prefix", MIB, PIECE_LEN);
    let meta = fx.meta.clone();
    let config = write_config(&fx, "seeder", "[peers]\nmax_per_prefix = 4\n");
    let mut seeder = seed("btd seeder", &fx, &config, next_ip(), &[]);
    let addr = seeder.wait_listening();
    // Six addresses of one /24 (the tests' own loopback network): four are taken.
    let taken: Vec<FakePeer> = (0..6)
        .filter_map(|i| try_join(&format!("same network {i}"), next_ip(), addr, &meta))
        .collect();
    assert_eq!(taken.len(), 4, "btd took {} peers of one /24", taken.len());
    // Another network is not held back.
    let (crowd, held) = silent_crowd(addr, &meta, 3);
    assert_eq!(held, 3, "peers of other networks still get in");
    drop(crowd);
    drop(taken);
    seeder.terminate_and_assert_ok(SHORT);
}

#[test]
fn a_stop_ends_the_thread_of_a_peer_that_never_reads_within_the_stop_budget() {
    let fx = Fixture::new("hostile-stop-sloth", 4 * MIB, PIECE_LEN);
    let meta = fx.meta.clone();
    // The default write timeout (60 s) would hold the peer's thread long past the stop; the
    // stop budget is `announce.stop_timeout_secs`, 3 s by default.
    let config = write_config(&fx, "seeder", "");
    let mut seeder = seed("btd seeder", &fx, &config, next_ip(), &[]);
    let addr = seeder.wait_listening();
    let mut sloth = unchoked("fake that never reads", addr, &meta);
    let blocks = meta.all_blocks();
    let bytes: Vec<u8> = blocks
        .iter()
        .flat_map(|b| {
            frame(
                6,
                &[b.piece, b.offset, b.len].map(u32::to_be_bytes).concat(),
            )
        })
        .collect();
    sloth.send_raw("a request for every block", &bytes);
    // 4 MiB asked, none read: the socket buffers fill and btd's write blocks.
    std::thread::sleep(Duration::from_secs(1));
    let since = Instant::now();
    seeder.stop_and_assert_ok("INT", SHORT);
    let took = since.elapsed();
    eprintln!("btd stopped {took:?} after SIGINT with a peer that never reads");
    let log = seeder.output();
    assert!(
        log.contains(&format!("torrent {}: every peer thread ended", fx.name)),
        "{log}"
    );
    assert!(!log.contains("peer threads still running"), "{log}");
    assert!(took < Duration::from_secs(3) + REACT, "{took:?}");
}
