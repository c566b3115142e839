//! `btd tracker` as the only tracker of real clients on loopback: a libtorrent seeder and a
//! transmission leecher find each other through it alone, and btd leechers find a libtorrent
//! seeder through it over HTTP and over UDP. An aria2 that requires encryption is listed only to
//! clients that encrypt, flagged in `crypto_flags`, and btd dials it encrypted first. Garbage over TCP and UDP gets failures or nothing,
//! and the tracker keeps serving.
//!
//! `btd tracker` runs as a child process with a small wrapper of this file's own (the support
//! module's process wrapper is private to it): killed on `Drop`, its log printed on panic.

use crate::support::{
    Btd, LtClient, PeerSpec, Rng, SHORT, TRANSFER, TempDir, TorrentInfo, Transmission,
    aria2_crypto_required, assert_same_files, mktorrent, net_args, next_ip, test_seed, wait_until,
    write_payload,
};
use crossbeam_channel::{Receiver, unbounded};
use lava_torrent::bencode::BencodeElem;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

/// Announce interval of the trackers in these tests: libtorrent re-announces this often (its
/// `min_announce_interval` is 5 s in `lt_client.py`) and so learns of peers that came later.
const INTERVAL_SECS: &str = "5";

/// `btd tracker --listen 127.0.0.1:0 ARGS...`, with its stderr collected.
struct TrackerProc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
    addr: SocketAddr,
    status: Option<ExitStatus>,
}

impl TrackerProc {
    fn start<I, S>(args: I) -> TrackerProc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Btd::command(["tracker", "--listen", "127.0.0.1:0"]);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn btd tracker");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = unbounded();
        let shared = Arc::clone(&log);
        std::thread::Builder::new()
            .name("btd tracker stderr".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    shared.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            })
            .expect("spawn reader");
        let mut t = TrackerProc {
            child,
            log,
            lines,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            status: None,
        };
        t.addr = t.wait_listening();
        t
    }

    fn wait_listening(&mut self) -> SocketAddr {
        let deadline = Instant::now() + SHORT;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(rest) = line.split("tracker serving HTTP and UDP on ").nth(1) {
                        let token = rest.split_whitespace().next().unwrap_or("");
                        return token.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
                    }
                }
                Err(_) => assert!(self.running(), "btd tracker exited:\n{}", self.log()),
            }
        }
        panic!(
            "no 'tracker serving HTTP and UDP on' line within {SHORT:?}:\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("wait btd tracker");
        }
        self.status.is_none()
    }

    fn http_url(&self) -> String {
        format!("http://{}/announce", self.addr)
    }

    fn udp_url(&self) -> String {
        format!("udp://{}/announce", self.addr)
    }

    /// Sends `signal` and waits for the exit status.
    fn stop(&mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        assert!(self.running(), "btd tracker died early:\n{}", self.log());
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("a pid"));
        nix::sys::signal::kill(pid, signal).expect("signal btd tracker");
        let deadline = Instant::now() + SHORT;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "btd tracker ignored {signal}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.status.expect("exited")
    }

    /// (seeders, completed, leechers) of `info_hash` (hex), by an HTTP scrape.
    fn scrape(&self, info_hash: &str) -> (i64, i64, i64) {
        let path = format!("/scrape?info_hash={}", percent_encode_hex(info_hash));
        let (status, body) = http_get(self.addr, path.as_bytes());
        assert_eq!(status, 200);
        let reply = decode(&body);
        let Some(files) = dict_get(&reply, b"files") else {
            panic!("scrape reply without files: {reply}");
        };
        match dict_get(files, &hex_bytes(info_hash)) {
            None => (0, 0, 0),
            Some(e) => (
                int(e, "complete"),
                int(e, "downloaded"),
                int(e, "incomplete"),
            ),
        }
    }

    /// The peers listed for `info_hash` (hex), seen by a probe that announces as a plaintext
    /// leecher and then leaves with `stopped`.
    fn peers(&self, info_hash: &str) -> Vec<SocketAddr> {
        self.peers_flagged(info_hash, "").0
    }

    /// The peers listed for `info_hash` (hex) to a probe leecher whose announce carries `extra`
    /// (`&supportcrypto=1`...), and the reply's `crypto_flags`, if any.
    fn peers_flagged(&self, info_hash: &str, extra: &str) -> (Vec<SocketAddr>, Option<Vec<u8>>) {
        let query = |event: &str| {
            format!(
                "/announce?info_hash={}&peer_id=-PROBE-0000000000000&port=1&left=1&numwant=200\
                 &compact=1&event={event}{extra}",
                percent_encode_hex(info_hash)
            )
        };
        let (status, body) = http_get(self.addr, query("started").as_bytes());
        assert_eq!(status, 200);
        let reply = decode(&body);
        let bytes = |key: &[u8]| match dict_get(&reply, key) {
            Some(BencodeElem::Bytes(b)) => Some(b.clone()),
            Some(BencodeElem::String(s)) => Some(s.clone().into_bytes()),
            None => None,
            other => panic!("{}: {other:?}", String::from_utf8_lossy(key)),
        };
        let peers = bytes(b"peers").expect("compact peers");
        let flags = bytes(b"crypto_flags");
        http_get(self.addr, query("stopped").as_bytes());
        let peers = peers
            .chunks(6)
            .map(|c| SocketAddr::from(([c[0], c[1], c[2], c[3]], u16::from_be_bytes([c[4], c[5]]))))
            .collect();
        (peers, flags)
    }
}

impl Drop for TrackerProc {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- btd tracker on {}:\n{}", self.addr, self.log());
        }
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

fn percent_encode_hex(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|pair| format!("%{}", std::str::from_utf8(pair).expect("ascii")))
        .collect()
}

/// Writes `request` and reads the reply to its end: (status code, body).
fn http_get(addr: SocketAddr, path: &[u8]) -> (u16, Vec<u8>) {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(path);
    request.extend_from_slice(b" HTTP/1.0\r\n\r\n");
    let reply = raw_exchange(addr, &request);
    parse_reply(&reply)
}

fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(SHORT)).unwrap();
    // The server may answer and close before it has read everything (a head that is too big).
    let _ = s.write_all(request);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply
}

fn parse_reply(reply: &[u8]) -> (u16, Vec<u8>) {
    let text = String::from_utf8_lossy(reply);
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP reply: {text:?}"));
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, reply[split + 4..].to_vec())
}

fn decode(body: &[u8]) -> BencodeElem {
    let mut elems = BencodeElem::from_bytes(body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(body)));
    elems.remove(0)
}

fn dict_get<'a>(elem: &'a BencodeElem, key: &[u8]) -> Option<&'a BencodeElem> {
    match elem {
        BencodeElem::Dictionary(d) => d.get(std::str::from_utf8(key).ok()?),
        BencodeElem::RawDictionary(d) => d.get(key),
        _ => None,
    }
}

fn int(elem: &BencodeElem, key: &str) -> i64 {
    match dict_get(elem, key.as_bytes()) {
        Some(BencodeElem::Integer(n)) => *n,
        other => panic!("{key}: {other:?} in {elem}"),
    }
}

fn failure_reason(body: &[u8]) -> String {
    match dict_get(&decode(body), b"failure reason") {
        Some(BencodeElem::String(s)) => s.clone(),
        Some(BencodeElem::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("no failure reason: {other:?}"),
    }
}

/// A payload of a few files under `tmp/seed/NAME` and a torrent of it (made by mktorrent, not by
/// btd) announcing to `url`: (seed dir, torrent, info hash in hex).
fn payload_and_torrent(
    tmp: &TempDir,
    test: &str,
    name: &str,
    url: &str,
) -> (PathBuf, PathBuf, String) {
    let mut rng = Rng::new(test_seed(test));
    let seed_dir = tmp.subdir("seed");
    write_payload(
        &seed_dir,
        &[
            (&format!("{name}/big.bin"), 3 * MIB + 5),
            (&format!("{name}/small.txt"), 777),
            (&format!("{name}/sub/mid.bin"), MIB - 3),
        ],
        &mut rng,
    );
    let torrent = tmp.path().join(format!("{name}.torrent"));
    mktorrent(&seed_dir.join(name), &torrent, 15, &[url.to_owned()]);
    let info_hash = TorrentInfo::read(&torrent).info_hash;
    (seed_dir, torrent, info_hash)
}

/// Starts a libtorrent seeder of `torrent` that announces to the torrent's tracker, and waits
/// until `tracker` counts it (so a leecher's first announce already finds it). Gives the client
/// and its address.
macro_rules! lt_seeder_on {
    ($tracker:expr, $torrent:expr, $seed_dir:expr, $info_hash:expr) => {{
        let (lt, lt_addr) =
            LtClient::ready_seeder("libtorrent seeder", $torrent, $seed_dir, next_ip(), true);
        wait_until(
            Instant::now() + SHORT,
            "btd tracker to count the libtorrent seeder",
            || $tracker.scrape($info_hash).0 >= 1,
        );
        (lt, lt_addr)
    }};
}

#[test]
fn libtorrent_seeder_and_transmission_leecher_find_each_other_through_btd_tracker() {
    let mut tracker = TrackerProc::start(["--interval", INTERVAL_SECS]);
    let tmp = TempDir::new("btd-tracker-tr");
    let (seed_dir, torrent, info_hash) = payload_and_torrent(
        &tmp,
        "lt_and_transmission_via_btd_tracker",
        "tracked",
        &tracker.http_url(),
    );
    let (mut lt, lt_addr) = lt_seeder_on!(tracker, &torrent, &seed_dir, &info_hash);

    // Transmission learns of the seeder but will not dial 127.x; libtorrent learns of
    // transmission on its next announce (within INTERVAL_SECS) and dials it.
    let out = tmp.subdir("out");
    let mut tr = Transmission::leech(
        "transmission leecher",
        &PeerSpec {
            torrent: &torrent,
            dir: &out,
            ip: next_ip(),
            peers: vec![],
            announce: false, // transmission.py always announces to the torrent's trackers
        },
    );
    tr.wait_listening();
    wait_until(
        Instant::now() + SHORT,
        "btd tracker to count the transmission leecher",
        || tracker.scrape(&info_hash).2 >= 1,
    );
    tr.wait_complete(TRANSFER);
    assert_same_files(&seed_dir.join("tracked"), &out.join("tracked"));
    // libtorrent says `stopped` on its way out, and the tracker stops listing it. (Transmission
    // is stopped by transmission.py as soon as it completes; it may or may not get its own
    // `stopped` out first.)
    assert!(tracker.peers(&info_hash).contains(&lt_addr));
    lt.terminate_and_assert_ok(SHORT);
    wait_until(
        Instant::now() + SHORT,
        "btd tracker to drop the stopped seeder",
        || !tracker.peers(&info_hash).contains(&lt_addr),
    );
    assert!(tracker.stop(nix::sys::signal::Signal::SIGTERM).success());
}

/// A btd leecher with no `--peer` completes from a libtorrent seeder it finds through `url`.
fn btd_leecher_finds_a_libtorrent_seeder(test: &str, udp: bool) {
    let mut tracker = TrackerProc::start(["--interval", INTERVAL_SECS]);
    let url = if udp {
        tracker.udp_url()
    } else {
        tracker.http_url()
    };
    let tmp = TempDir::new("btd-tracker-btd");
    let (seed_dir, torrent, info_hash) = payload_and_torrent(&tmp, test, "tracked", &url);
    let (mut lt, lt_addr) = lt_seeder_on!(tracker, &torrent, &seed_dir, &info_hash);

    let out = tmp.subdir("out");
    let mut btd = Btd::download("btd leecher", &torrent, &out, next_ip(), &[], false);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("tracked"), &out.join("tracked"));
    // btd announced to this tracker too: its `completed` is counted, its `stopped` unlisted it.
    wait_until(
        Instant::now() + SHORT,
        "btd tracker to count btd's completed download",
        || tracker.scrape(&info_hash).1 >= 1,
    );
    assert_eq!(tracker.peers(&info_hash), vec![lt_addr]);
    lt.terminate_and_assert_ok(SHORT);
    assert!(tracker.stop(nix::sys::signal::Signal::SIGINT).success());
}

#[test]
fn btd_leecher_finds_a_libtorrent_seeder_through_btd_tracker_over_http() {
    btd_leecher_finds_a_libtorrent_seeder("btd_via_btd_tracker_http", false);
}

#[test]
fn btd_leecher_finds_a_libtorrent_seeder_through_btd_tracker_over_udp() {
    btd_leecher_finds_a_libtorrent_seeder("btd_via_btd_tracker_udp", true);
}

/// The MSE tracker keys with real clients: aria2 with encryption required announces
/// `requirecrypto=1`. btd tracker lists it to a client that encrypts, with its `crypto_flags`
/// byte set, and never to a plaintext-only one. A btd leecher in `tolerated` mode (plaintext
/// first) takes the flag: its first dial to aria2 is encrypted, with no plaintext attempt
/// refused first, and it downloads everything.
#[test]
fn btd_tracker_flags_an_aria2_that_requires_encryption_and_btd_dials_it_encrypted_first() {
    let mut tracker = TrackerProc::start(["--interval", INTERVAL_SECS]);
    let tmp = TempDir::new("btd-tracker-crypto");
    let (seed_dir, torrent, info_hash) =
        payload_and_torrent(&tmp, "btd_tracker_crypto", "tracked", &tracker.http_url());
    let mut aria2 =
        aria2_crypto_required("aria2 seeder (crypto required)", &torrent, &seed_dir, true);
    wait_until(
        Instant::now() + SHORT,
        "btd tracker to count the aria2 seeder",
        || tracker.scrape(&info_hash).0 >= 1,
    );
    let (peers, flags) = tracker.peers_flagged(&info_hash, "&supportcrypto=1");
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(flags, Some(vec![1]), "aria2 said requirecrypto=1");
    let aria2_at = peers[0];
    let (plain, no_flags) = tracker.peers_flagged(&info_hash, "");
    assert!(
        plain.is_empty(),
        "a plaintext-only client was given {plain:?}"
    );
    assert_eq!(no_flags, None);

    let out = tmp.subdir("out");
    let mut args: Vec<std::ffi::OsString> = vec![
        "download".into(),
        torrent.clone().into(),
        "-o".into(),
        out.clone().into(),
        "--encryption".into(),
        "tolerated".into(),
    ];
    args.extend(net_args(next_ip(), &[]));
    let mut cmd = Btd::command(args);
    cmd.env("RUST_LOG", "info,btd::peer=debug");
    let mut btd = Btd::spawn("btd leecher (tolerated)", cmd);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("tracked"), &out.join("tracked"));
    let log = btd.proc.output();
    let first = format!("peer {aria2_at}: it prefers encryption: dialling encrypted first");
    let refused = format!("peer {aria2_at}: plaintext handshake refused");
    assert!(log.contains(&first), "no '{first}' in:\n{log}");
    assert!(!log.contains(&refused), "a plaintext attempt first:\n{log}");
    aria2.terminate_and_assert_ok(SHORT);
    assert!(tracker.stop(nix::sys::signal::Signal::SIGTERM).success());
}

/// A valid announce (compact) for a made-up torrent from port `port`; returns the reply body.
fn announce(tracker: &TrackerProc, port: u16) -> Vec<u8> {
    let path = format!(
        "/announce?info_hash={}&peer_id=-GB0001-{port:012}&port={port}&left=10&compact=1",
        "%5a".repeat(20)
    );
    let (status, body) = http_get(tracker.addr, path.as_bytes());
    assert_eq!(status, 200);
    body
}

#[test]
fn btd_tracker_answers_garbage_with_failures_and_keeps_serving() {
    let mut tracker = TrackerProc::start(["--interval", "60", "--max-torrents", "1"]);
    let addr = tracker.addr;
    announce(&tracker, 1000);

    // A request head far over 8 KiB.
    let huge = format!("GET /announce?{} HTTP/1.1\r\n\r\n", "a=b&".repeat(100_000));
    let reply = raw_exchange(addr, huge.as_bytes());
    assert!(
        reply.is_empty() || parse_reply(&reply).0 == 431,
        "{:?}",
        String::from_utf8_lossy(&reply[..reply.len().min(200)])
    );
    // Bad info_hash, missing port, bad numbers: 200 with a failure reason.
    let cases = [
        (
            "/announce?info_hash=%01%02&peer_id=-GB0001-000000000001&port=1&left=0",
            "info_hash",
        ),
        (
            "/announce?info_hash=ZZZZZZZZZZZZZZZZZZZZ&peer_id=-GB0001-000000000001&left=0",
            "missing port",
        ),
        (
            "/announce?info_hash=ZZZZZZZZZZZZZZZZZZZZ&peer_id=-GB0001-000000000001&port=99999&left=0",
            "port",
        ),
        // A second torrent: over --max-torrents.
        (
            "/announce?info_hash=YYYYYYYYYYYYYYYYYYYY&peer_id=-GB0001-000000000001&port=1&left=0",
            "tracker is full",
        ),
    ];
    for (path, want) in cases {
        let (status, body) = http_get(addr, path.as_bytes());
        assert_eq!(status, 200, "{path}");
        let reason = failure_reason(&body);
        assert!(reason.contains(want), "{path}: {reason:?} lacks {want:?}");
    }
    assert_eq!(http_get(addr, b"/admin").0, 404);
    assert_eq!(
        parse_reply(&raw_exchange(addr, b"\x16\x03\x01junk\r\n\r\n")).0,
        400
    );
    // A connection that says nothing and one that closes at once do not block the others.
    let _silent = TcpStream::connect(addr).expect("connect");
    drop(TcpStream::connect(addr).expect("connect"));

    // UDP junk of every size gets nothing back (no connect magic, unknown actions).
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut rng = Rng::new(test_seed("btd_tracker_udp_junk"));
    for len in [0usize, 1, 8, 15, 16, 17, 98, 500, 1500] {
        let mut junk = vec![0u8; len];
        rng.fill(&mut junk);
        if len >= 12 {
            junk[8..12].copy_from_slice(&[0xff, 0xff, 0xff, 0x7f]); // no such action
        }
        socket.send_to(&junk, addr).expect("send");
    }
    let mut buf = [0u8; 2048];
    assert!(socket.recv_from(&mut buf).is_err(), "junk got an answer");
    // An announce with a connection id never issued gets an error packet (action 3).
    let mut bogus = vec![1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1, 0xca, 0xfe, 0xba, 0xbe];
    bogus.resize(98, 0);
    socket.send_to(&bogus, addr).expect("send");
    let (n, _) = socket.recv_from(&mut buf).expect("an error packet");
    assert_eq!(&buf[..8], &[0, 0, 0, 3, 0xca, 0xfe, 0xba, 0xbe]);
    assert!(String::from_utf8_lossy(&buf[8..n]).contains("connection id"));
    // A proper connect still works.
    let connect = [
        0, 0, 4, 0x17, 0x27, 0x10, 0x19, 0x80, 0, 0, 0, 0, 0, 0, 0, 9,
    ];
    socket.send_to(&connect, addr).expect("send");
    let (n, _) = socket.recv_from(&mut buf).expect("a connect reply");
    assert_eq!((n, &buf[..8]), (16, &[0u8, 0, 0, 0, 0, 0, 0, 9][..]));

    // After all that, announces work and see the first peer.
    let reply = decode(&announce(&tracker, 2000));
    assert_eq!((int(&reply, "complete"), int(&reply, "incomplete")), (0, 2));
    assert!(tracker.stop(nix::sys::signal::Signal::SIGINT).success());
}

#[test]
fn btd_tracker_refuses_impossible_options() {
    let out = Btd::run([
        "tracker",
        "--listen",
        "127.0.0.1:0",
        "--interval",
        "10",
        "--min-interval",
        "20",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.description);
    assert!(out.stderr.contains("min interval"), "{}", out.description);
    // Too long for UDP's 32-bit interval (and once an overflow in the derived peer TTL).
    let out = Btd::run([
        "tracker",
        "--listen",
        "127.0.0.1:0",
        "--interval",
        "18446744073709551615",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.description);
    assert!(
        out.stderr.contains("interval must be"),
        "{}",
        out.description
    );
    let out = Btd::run(["tracker", "--listen", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.description);
}
