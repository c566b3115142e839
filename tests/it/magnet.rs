//! Magnet links (BEP 9): `btd download MAGNET` fetches the info dictionary from real clients
//! (libtorrent, transmission) found through `x.pe` or a tracker, in hex and base32, and never
//! takes it on trust: scripted peers that serve metadata with a flipped byte, that announce an
//! absurd `metadata_size`, or that never answer, are dropped, and btd either completes from an
//! honest peer or gives up without starting a download.
//!
//! To make the order of events certain, the honest seeder sits behind a [`GatedRelay`] that
//! lets connections through only once the scripted peer has had its say.
//!
//! A seeder nobody names may also dial btd while it fetches (its tracker hands out btd's
//! address): btd takes the metadata from that incoming connection.

use crate::support::fake_peer::{
    FakeListener, FakePeer, Fixture, Msg, Recv, btd_download_with, frame, handshake_bytes,
};
use crate::support::{
    Btd, LtClient, OpenTracker, PeerSpec, RecordingTracker, Rng, SHORT, TRANSFER, TempDir,
    TorrentInfo, Transmission, assert_same_files, closed_port, free_port, hex, mktorrent, next_ip,
    test_seed, wait_until, write_payload,
};
use sha1::{Digest as _, Sha1};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
/// The extended message id the scripted peers want `ut_metadata` under (btd must use it).
const FAKE_UT_METADATA: u8 = 7;

fn within(d: Duration) -> Instant {
    Instant::now() + d
}

/// The raw `info` value of a torrent whose last top-level key is `info` (as `btd create` and
/// mktorrent write them), checked against the info hash libtorrent reports.
fn info_dict(torrent: &Path, info_hash_hex: &str) -> Vec<u8> {
    let bytes = std::fs::read(torrent).expect("read the torrent");
    let at = bytes
        .windows(7)
        .rposition(|w| w == b"4:infod")
        .expect("an info dictionary")
        + 6;
    let info = bytes[at..bytes.len() - 1].to_vec();
    assert_eq!(hex(&Sha1::digest(&info)), info_hash_hex, "info span");
    info
}

/// RFC 4648 base32 without padding, written here independently of btd's decoder.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8 | u32::from(b)) & 0xFFFF;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            let index = usize::try_from((acc >> bits) & 31).expect("five bits");
            out.push(char::from(ALPHABET[index]));
        }
    }
    assert_eq!(bits, 0, "20 bytes are exactly 32 base32 characters");
    out
}

fn hash_bytes(hex_hash: &str) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex_hash[2 * i..2 * i + 2], 16).expect("hex");
    }
    out
}

/// The `metadata received: NAME, N bytes, from PEER` line btd logs.
fn metadata_line(btd: &Btd) -> String {
    btd.output()
        .lines()
        .find(|l| l.contains("metadata received: "))
        .unwrap_or_else(|| panic!("no `metadata received` line:\n{}", btd.log_text()))
        .to_string()
}

// ---- a relay that holds connections until told ------------------------------------------------

/// A TCP relay from an address of its own to `target`. Until [`GatedRelay::open`], connections
/// wait in its listen backlog (btd's connect succeeds; its handshake waits); afterwards each is
/// joined to a fresh connection to `target`.
struct GatedRelay {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl GatedRelay {
    fn new(ip: Ipv4Addr, target: SocketAddr) -> GatedRelay {
        let listener = TcpListener::bind((ip, 0)).expect("relay: bind");
        listener.set_nonblocking(true).expect("relay: nonblocking");
        let addr = listener.local_addr().expect("relay: address");
        let open = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (open2, stop2) = (Arc::clone(&open), Arc::clone(&stop));
        let acceptor = std::thread::Builder::new()
            .name(format!("relay {addr}"))
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    if !open2.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    match listener.accept() {
                        Ok((inbound, _)) => {
                            let _ = inbound.set_nonblocking(false);
                            if let Ok(outbound) = TcpStream::connect(target) {
                                splice(inbound, outbound);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => return,
                    }
                }
            })
            .expect("relay: spawn");
        GatedRelay {
            addr,
            open,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::Relaxed);
    }
}

impl Drop for GatedRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Copies both ways between `a` and `b` on two threads; each ends when its source does.
fn splice(a: TcpStream, b: TcpStream) {
    for (mut from, mut to) in [
        (a.try_clone().expect("clone"), b.try_clone().expect("clone")),
        (b, a),
    ] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
        });
    }
}

// ---- scripted metadata peers ----------------------------------------------------------------

/// The first integer after `key` in a bencoded text (`11:ut_metadatai3e` -> 3).
fn int_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = text[at..]
        .iter()
        .skip(1) // the `i`
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// What a scripted metadata peer saw.
struct Played {
    /// Metadata pieces btd asked for, in order.
    asked: Vec<u32>,
    /// btd closed the connection (rather than the deadline passing).
    closed: bool,
}

/// Plays a peer that has the metadata: handshake with the BEP 10 bit, an extended handshake
/// offering `ut_metadata` with `metadata_size` = `size`, then every request btd sends answered
/// with `serve(piece)` (`None`: no answer), until btd closes the connection or `deadline`.
fn play_metadata_peer(
    fake: &mut FakePeer,
    info_hash: &[u8; 20],
    size: u64,
    serve: impl Fn(u32) -> Option<Vec<u8>>,
    deadline: Instant,
) -> Played {
    fake.expect_handshake(info_hash, deadline);
    let mut hs = handshake_bytes(info_hash, &fake.peer_id());
    hs[20 + 5] |= 0x10;
    fake.send_raw("handshake with the extension bit", &hs);
    let mut ext = vec![0u8];
    ext.extend_from_slice(
        format!("d1:md11:ut_metadatai{FAKE_UT_METADATA}ee13:metadata_sizei{size}ee").as_bytes(),
    );
    fake.send_raw(
        &format!("extended handshake, metadata_size {size}"),
        &frame(20, &ext),
    );
    let mut btd_id = None;
    let mut played = Played {
        asked: Vec::new(),
        closed: false,
    };
    loop {
        match fake.recv(deadline) {
            Recv::Msg(Msg::Other { id: 20, payload }) if payload.first() == Some(&0) => {
                let id = int_after(&payload, b"11:ut_metadata").expect("btd offers ut_metadata");
                btd_id = Some(u8::try_from(id).expect("an extended id is a byte"));
            }
            Recv::Msg(Msg::Other { id: 20, payload })
                if payload.first() == Some(&FAKE_UT_METADATA) =>
            {
                assert_eq!(
                    int_after(&payload, b"8:msg_type"),
                    Some(0),
                    "btd sent a ut_metadata message that is not a request"
                );
                let piece = int_after(&payload, b"5:piece").expect("a piece number");
                let piece = u32::try_from(piece).expect("small");
                played.asked.push(piece);
                let Some(data) = serve(piece) else {
                    continue;
                };
                let btd_id = btd_id.expect("btd's extended handshake came before its request");
                let mut msg = vec![btd_id];
                msg.extend_from_slice(
                    format!("d8:msg_typei1e5:piecei{piece}e10:total_sizei{size}ee").as_bytes(),
                );
                msg.extend_from_slice(&data);
                if fake
                    .try_send_raw(&format!("metadata piece {piece}"), &frame(20, &msg))
                    .is_err()
                {
                    played.closed = true;
                    return played;
                }
            }
            Recv::Msg(_) => {}
            Recv::Timeout => return played,
            Recv::Closed(_) => {
                played.closed = true;
                return played;
            }
        }
    }
}

/// Piece `piece` of `info` (16 KiB pieces), with the byte at `flip` inverted when it falls in it.
fn metadata_piece(info: &[u8], piece: u32, flip: Option<usize>) -> Vec<u8> {
    let start = usize::try_from(piece).expect("small") * 16 * 1024;
    let end = info.len().min(start + 16 * 1024);
    let mut data = info[start..end].to_vec();
    if let Some(at) = flip.filter(|at| (start..end).contains(at)) {
        data[at - start] ^= 0xFF;
    }
    data
}

// ---- real seeders ---------------------------------------------------------------------------

/// A payload and its mktorrent torrent: 36 MiB in 32 KiB pieces, so the info dictionary (over
/// 23 KB of piece hashes) comes in two metadata pieces.
fn big_payload(tmp: &TempDir, test: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut rng = Rng::new(test_seed(test));
    let seed_dir = tmp.subdir("seed");
    write_payload(
        &seed_dir,
        &[
            ("mag-payload/big.bin", 34 * MIB + 5),
            ("mag-payload/notes.txt", 777),
            ("mag-payload/sub/c.bin", 2 * MIB),
        ],
        &mut rng,
    );
    let torrent = tmp.path().join("mag.torrent");
    mktorrent(&seed_dir.join("mag-payload"), &torrent, 15, &[]);
    (seed_dir, torrent)
}

#[test]
fn btd_downloads_a_hex_magnet_from_a_libtorrent_seeder_in_two_metadata_pieces() {
    let tmp = TempDir::new("magnet-lt");
    let (seed_dir, torrent) = big_payload(&tmp, "hex_magnet_from_a_libtorrent_seeder");
    let info = TorrentInfo::read(&torrent);
    let metadata = info_dict(&torrent, &info.info_hash);
    assert!(
        metadata.len() > 16 * 1024,
        "the metadata must span two pieces"
    );
    let (mut lt, lt_addr) =
        LtClient::ready_seeder("libtorrent seeder", &torrent, &seed_dir, next_ip(), false);

    let uri = format!(
        "magnet:?xt=urn:btih:{}&dn=mag+payload%21&x.pe={lt_addr}",
        info.info_hash
    );
    let out = tmp.subdir("out");
    let mut btd = btd_download_with("btd leecher", &uri, &out, &[], next_ip(), &[]);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("mag-payload"), &out.join("mag-payload"));
    assert!(
        metadata_line(&btd).ends_with(&format!(
            "metadata received: mag-payload, {} bytes, from {lt_addr}",
            metadata.len()
        )),
        "{}",
        btd.log_text()
    );
    lt.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_downloads_a_base32_magnet_from_a_libtorrent_seeder_despite_a_dead_tracker() {
    let tmp = TempDir::new("magnet-b32");
    let mut rng = Rng::new(test_seed("base32_magnet"));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, &[("b32.iso", 3 * MIB + 333)], &mut rng);
    let torrent = tmp.path().join("b32.torrent");
    mktorrent(&seed_dir.join("b32.iso"), &torrent, 16, &[]);
    let info = TorrentInfo::read(&torrent);
    let (mut lt, lt_addr) =
        LtClient::ready_seeder("libtorrent seeder", &torrent, &seed_dir, next_ip(), false);

    // Lower-case base32, and a tracker nobody listens on: its failure is only a warning.
    let b32 = base32(&hash_bytes(&info.info_hash)).to_lowercase();
    let dead = format!("http://127.0.0.1:{}/announce", closed_port());
    let uri = format!(
        "magnet:?xt=urn:btih:{b32}&tr={}&x.pe={lt_addr}",
        dead.replace(':', "%3A").replace('/', "%2F")
    );
    let out = tmp.subdir("out");
    let mut btd = btd_download_with("btd leecher", &uri, &out, &[], next_ip(), &[]);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("b32.iso"), &out.join("b32.iso"));
    assert!(
        btd.output().contains(&format!("tracker {dead}")),
        "btd did not try the magnet's tracker:\n{}",
        btd.log_text()
    );
    lt.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_downloads_a_magnet_from_a_transmission_seeder() {
    let tmp = TempDir::new("magnet-tr");
    let mut rng = Rng::new(test_seed("magnet_from_a_transmission_seeder"));
    let seed_dir = tmp.subdir("seed");
    write_payload(
        &seed_dir,
        &[
            ("tr mag/a.bin", 4 * MIB + 4097),
            ("tr mag/b/c.bin", 1000),
            ("tr mag/b/d.bin", 2 * MIB - 1),
        ],
        &mut rng,
    );
    let torrent = tmp.path().join("trmag.torrent");
    mktorrent(&seed_dir.join("tr mag"), &torrent, 15, &[]);
    let info = TorrentInfo::read(&torrent);
    let mut tr = Transmission::seed(
        "transmission seeder",
        &PeerSpec {
            torrent: &torrent,
            dir: &seed_dir,
            ip: next_ip(),
            peers: vec![],
            announce: false,
        },
    );
    let tr_addr = tr.wait_listening();
    tr.wait_seeding();

    // Upper-case hex, a percent-encoded x.pe and a name with a space.
    let uri = format!(
        "magnet:?xt=urn:btih:{}&dn=tr%20mag&x.pe={}",
        info.info_hash.to_uppercase(),
        tr_addr.to_string().replace(':', "%3A")
    );
    let out = tmp.subdir("out");
    let mut btd = btd_download_with("btd leecher", &uri, &out, &[], next_ip(), &[]);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("tr mag"), &out.join("tr mag"));
    assert!(metadata_line(&btd).contains(&format!("from {tr_addr}")));
    tr.terminate_and_assert_ok(SHORT);
}

#[test]
fn btd_finds_the_metadata_through_the_magnets_tracker() {
    let tmp = TempDir::new("magnet-ot");
    let mut rng = Rng::new(test_seed("metadata_through_the_magnets_tracker"));
    let seed_dir = tmp.subdir("seed");
    write_payload(&seed_dir, &[("tracked.bin", 2 * MIB + 7)], &mut rng);
    let port = free_port(Ipv4Addr::LOCALHOST);
    let torrent = tmp.path().join("tracked.torrent");
    mktorrent(
        &seed_dir.join("tracked.bin"),
        &torrent,
        15,
        &[OpenTracker::url_for(port)],
    );
    let info = TorrentInfo::read(&torrent);
    let tracker = OpenTracker::start(port, &[&info.info_hash]);
    let (mut lt, _) =
        LtClient::ready_seeder("libtorrent seeder", &torrent, &seed_dir, next_ip(), true);
    // btd announces once for the metadata: the seeder must be registered before.
    wait_until(
        Instant::now() + SHORT,
        "opentracker to count the libtorrent seeder",
        || tracker.seeders(&info.info_hash) >= 1,
    );

    // No x.pe and no --peer: only the tracker knows the seeder.
    let uri = format!(
        "magnet:?xt=urn:btih:{}&tr={}",
        info.info_hash,
        tracker.announce_url()
    );
    let out = tmp.subdir("out");
    let mut btd = btd_download_with("btd leecher", &uri, &out, &[], next_ip(), &[]);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("tracked.bin"), &out.join("tracked.bin"));
    lt.terminate_and_assert_ok(SHORT);
}

// ---- metadata not taken on trust --------------------------------------------------------------

/// A small payload made by `btd create`, its raw info dictionary, and a libtorrent seeder of it
/// behind a closed [`GatedRelay`].
struct HonestBehindGate {
    fx: Fixture,
    info: Vec<u8>,
    /// The seeder (its type is private to the support module); stopped on drop.
    _lt: Box<dyn std::any::Any>,
    relay: GatedRelay,
}

fn honest_behind_gate(test: &str) -> HonestBehindGate {
    let fx = Fixture::new(test, 2 * MIB + 3, 32 * 1024);
    let info = info_dict(&fx.torrent, &hex(&fx.meta.info_hash));
    let (lt, lt_addr) = LtClient::ready_seeder(
        "libtorrent seeder",
        &fx.torrent,
        &fx.seed_dir,
        next_ip(),
        false,
    );
    let relay = GatedRelay::new(next_ip(), lt_addr);
    HonestBehindGate {
        fx,
        info,
        _lt: Box::new(lt),
        relay,
    }
}

#[test]
fn btd_bans_a_peer_serving_bad_metadata_and_completes_from_an_honest_one() {
    let honest = honest_behind_gate("magnet-liar");
    let fx = &honest.fx;
    let info = honest.info.clone();
    let size = u64::try_from(info.len()).expect("small");
    // The liar's copy differs in one byte inside the piece hashes: still a valid torrent.
    let flip = info.len() - 10;
    let liar = FakeListener::bind("liar", next_ip());
    let uri = format!(
        "magnet:?xt=urn:btih:{}&x.pe={}&x.pe={}",
        hex(&fx.meta.info_hash),
        liar.addr(),
        honest.relay.addr
    );
    let out = fx.out_dir("leecher");
    let mut btd = btd_download_with("btd leecher", &uri, &out, &[], next_ip(), &[]);
    let mut fake = liar.accept(within(SHORT));
    let played = play_metadata_peer(
        &mut fake,
        &fx.meta.info_hash,
        size,
        |piece| Some(metadata_piece(&info, piece, Some(flip))),
        within(SHORT),
    );
    assert_eq!(
        played.asked,
        vec![0],
        "btd asks the only ready peer for the piece"
    );
    assert!(played.closed, "btd kept the liar's connection open");
    honest.relay.open();
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&fx.payload(), &out.join(&fx.name));
    assert!(
        btd.output().contains("fail the info hash check"),
        "{}",
        btd.log_text()
    );
    assert!(
        metadata_line(&btd).ends_with(&format!("from {}", honest.relay.addr)),
        "the metadata must come from the honest peer alone:\n{}",
        btd.log_text()
    );
    assert!(
        liar.try_accept(within(Duration::from_millis(200)))
            .is_none(),
        "btd dialled the liar again"
    );
}

#[test]
fn btd_never_starts_a_download_from_bad_metadata_alone() {
    let fx = Fixture::new("magnet-liar-alone", MIB, 32 * 1024);
    let info = info_dict(&fx.torrent, &hex(&fx.meta.info_hash));
    let size = u64::try_from(info.len()).expect("small");
    let flip = info.len() - 10;
    let liar = FakeListener::bind("liar", next_ip());
    let uri = format!(
        "magnet:?xt=urn:btih:{}&x.pe={}",
        hex(&fx.meta.info_hash),
        liar.addr()
    );
    let out = fx.out_dir("leecher");
    let mut btd = btd_download_with(
        "btd leecher",
        &uri,
        &out,
        &["--metadata-timeout", "60"],
        next_ip(),
        &[],
    );
    let mut fake = liar.accept(within(SHORT));
    let played = play_metadata_peer(
        &mut fake,
        &fx.meta.info_hash,
        size,
        |piece| Some(metadata_piece(&info, piece, Some(flip))),
        within(SHORT),
    );
    assert_eq!(played.asked, vec![0]);
    assert!(played.closed, "btd kept the liar's connection open");
    // With its only peer banned, btd gives up at once rather than at the deadline.
    let status = btd.wait_exit(SHORT);
    assert_eq!(status.code(), Some(1), "{}", btd.log_text());
    assert!(
        btd.output()
            .contains("no peers left to ask for the metadata"),
        "{}",
        btd.log_text()
    );
    assert!(
        std::fs::read_dir(&out).expect("out dir").next().is_none(),
        "btd created files from metadata that failed the hash check"
    );
}

#[test]
fn btd_drops_a_peer_with_an_absurd_metadata_size_and_completes_from_an_honest_one() {
    let honest = honest_behind_gate("magnet-absurd");
    let fx = &honest.fx;
    let (out, mut btd, played) = liar_listener_with_size(fx, &honest.relay, 1 << 40);
    assert!(
        played.asked.is_empty(),
        "btd asked for pieces: {:?}",
        played.asked
    );
    assert!(
        played.closed,
        "btd kept the connection of a peer offering 1 TiB of metadata"
    );
    honest.relay.open();
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&fx.payload(), &out.join(&fx.name));
    assert!(
        btd.output()
            .contains("metadata_size 1099511627776 is outside"),
        "{}",
        btd.log_text()
    );
}

/// Starts btd on a magnet naming a scripted peer that offers `size` bytes of metadata (and
/// serves none) and the relay; plays the scripted peer until btd drops it.
fn liar_listener_with_size(
    fx: &Fixture,
    relay: &GatedRelay,
    size: u64,
) -> (std::path::PathBuf, Btd, Played) {
    let liar = FakeListener::bind("liar", next_ip());
    let uri = format!(
        "magnet:?xt=urn:btih:{}&x.pe={}&x.pe={}",
        hex(&fx.meta.info_hash),
        liar.addr(),
        relay.addr
    );
    let out = fx.out_dir("leecher");
    let btd = btd_download_with("btd leecher", &uri, &out, &[], next_ip(), &[]);
    let mut fake = liar.accept(within(SHORT));
    let played = play_metadata_peer(&mut fake, &fx.meta.info_hash, size, |_| None, within(SHORT));
    (out, btd, played)
}

#[test]
fn btd_gives_up_after_the_metadata_timeout_when_no_peer_answers() {
    let fx = Fixture::new("magnet-silent", MIB, 32 * 1024);
    let info = info_dict(&fx.torrent, &hex(&fx.meta.info_hash));
    let size = u64::try_from(info.len()).expect("small");
    let silent = FakeListener::bind("silent", next_ip());
    let uri = format!(
        "magnet:?xt=urn:btih:{}&x.pe={}",
        hex(&fx.meta.info_hash),
        silent.addr()
    );
    let out = fx.out_dir("leecher");
    let started = Instant::now();
    let mut btd = btd_download_with(
        "btd leecher",
        &uri,
        &out,
        &["--metadata-timeout", "3"],
        next_ip(),
        &[],
    );
    let mut fake = silent.accept(within(SHORT));
    // Takes requests, answers none; btd gives up at its deadline.
    let played = play_metadata_peer(&mut fake, &fx.meta.info_hash, size, |_| None, within(SHORT));
    assert_eq!(played.asked, vec![0]);
    let status = btd.wait_exit(SHORT);
    assert_eq!(status.code(), Some(1), "{}", btd.log_text());
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(
        btd.output().contains("no verified metadata within 3s"),
        "{}",
        btd.log_text()
    );
    assert!(std::fs::read_dir(&out).expect("out dir").next().is_none());
}

#[test]
fn btd_fetches_the_metadata_from_a_seeder_that_dials_in() {
    let tmp = TempDir::new("magnet-dialled-in");
    let (seed_dir, torrent) = big_payload(&tmp, "magnet_from_a_seeder_that_dials_in");
    let info = TorrentInfo::read(&torrent);
    // It answers with no peers: btd knows no peer to dial.
    let tracker = RecordingTracker::start();
    let uri = format!(
        "magnet:?xt=urn:btih:{}&tr={}",
        info.info_hash,
        tracker.announce_url()
    );
    let out = tmp.subdir("out");
    let ip = next_ip();
    let mut btd = btd_download_with(
        "btd leecher",
        &uri,
        &out,
        &["--metadata-timeout", "60"],
        ip,
        &[],
    );
    let started = tracker.wait_event(&info.info_hash, Some("started"), 1, SHORT);
    let btd_addr = SocketAddr::from((ip, started.port));
    let lt_ip = next_ip();
    let mut lt = LtClient::seed(
        "libtorrent seeder (dials in)",
        &PeerSpec {
            torrent: &torrent,
            dir: &seed_dir,
            ip: lt_ip,
            peers: vec![btd_addr],
            announce: false,
        },
    );
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("mag-payload"), &out.join("mag-payload"));
    let line = metadata_line(&btd);
    assert!(line.contains(&format!("from {lt_ip}:")), "{line}");
    lt.terminate_and_assert_ok(SHORT);
}
