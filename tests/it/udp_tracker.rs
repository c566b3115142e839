//! UDP trackers (BEP 15) and scrapes: btd's tracker client against a real opentracker over HTTP
//! and UDP; a libtorrent seeder and a btd leecher that find each other through opentracker's UDP
//! port alone; and a torrent whose UDP tracker swallows every datagram, which still downloads
//! from a `--peer`.

use crate::support::{
    Btd, LtClient, Rng, SHORT, TRANSFER, TempDir, TorrentInfo, assert_same_files, free_port,
    mktorrent, next_ip, require_program, seed_payload, test_seed, wait_until,
};
use btd::tracker::udp::UdpClient;
use btd::tracker::{AnnounceEvent, AnnounceRequest, ScrapeCounts, http};
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

const FILES: &[(&str, u64)] = &[
    ("udp/a.bin", 2 * MIB + 77),
    ("udp/b.bin", 4321),
    ("udp/c/d.bin", MIB + 5),
];

/// opentracker on 127.0.0.1 with the same port number for HTTP (TCP) and UDP, accepting the
/// listed info hashes (Debian builds it with a whitelist, read relative to its chroot directory,
/// a temp dir of ours). Killed on `Drop`; its output goes to a file that a panic prints.
struct OpenTrackerUdp {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl OpenTrackerUdp {
    /// Starts opentracker and waits until a UDP scrape of the first hash is answered.
    fn start(port: u16, info_hashes: &[&str]) -> OpenTrackerUdp {
        require_program("opentracker", "opentracker");
        let dir = TempDir::new("opentracker-udp");
        let list: String = info_hashes.iter().map(|h| format!("{h}\n")).collect();
        std::fs::write(dir.path().join("whitelist"), list).expect("write whitelist");
        let log = std::fs::File::create(dir.path().join("opentracker.log")).expect("log file");
        let child = Command::new("opentracker")
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-P", &port.to_string(), "-d"])
            .arg(dir.path())
            .args(["-w", "whitelist"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn opentracker");
        let mut tracker = OpenTrackerUdp { child, port, dir };
        let hash = hash_bytes(info_hashes[0]);
        let mut client = UdpClient::new(Duration::from_millis(100));
        let deadline = Instant::now() + SHORT;
        loop {
            let last = match client.scrape(&tracker.udp_url(), &hash, Instant::now() + SHORT / 10) {
                Ok(_) => break,
                Err(e) => e.to_string(),
            };
            if let Ok(Some(status)) = tracker.child.try_wait() {
                panic!("opentracker exited with {status}:\n{}", tracker.log());
            }
            assert!(
                Instant::now() < deadline,
                "opentracker on 127.0.0.1:{port} did not answer a UDP scrape within {SHORT:?}; \
                 last error: {last}\n{}",
                tracker.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        tracker
    }

    fn udp_url_for(port: u16) -> String {
        format!("udp://127.0.0.1:{port}/announce")
    }

    fn udp_url(&self) -> String {
        Self::udp_url_for(self.port)
    }

    fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("opentracker.log")).unwrap_or_default()
    }

    /// The tracker's counts for `hash`, scraped over UDP with btd's client.
    fn udp_scrape(&self, hash: &[u8; 20]) -> ScrapeCounts {
        UdpClient::new(Duration::from_millis(500))
            .scrape(&self.udp_url(), hash, Instant::now() + SHORT)
            .unwrap_or_else(|e| panic!("UDP scrape: {e}\n{}", self.log()))
    }
}

impl Drop for OpenTrackerUdp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("opentracker's output:\n{}", self.log());
        }
    }
}

fn hash_bytes(hex: &str) -> [u8; 20] {
    assert_eq!(hex.len(), 40, "info hash {hex:?}");
    let mut out = [0; 20];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex info hash");
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn request(info_hash: [u8; 20], peer_id: &[u8; 20], port: u16, left: u64) -> AnnounceRequest {
    AnnounceRequest {
        info_hash,
        peer_id: *peer_id,
        port,
        uploaded: 0,
        downloaded: 0,
        left,
        event: Some(AnnounceEvent::Started),
        numwant: 50,
        tracker_id: None,
        key: 0x0bad_cafe,
        addrs: btd::tracker::OurAddrs::default(),
        encryption: btd::peer::mse::Encryption::Preferred,
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

#[test]
fn btd_announces_to_and_scrapes_opentracker_over_http_and_udp() {
    // A hash with bytes that are not UTF-8, so the HTTP scrape's `files` key is raw bytes.
    let mut rng = Rng::new(test_seed("announces_to_and_scrapes_opentracker"));
    let mut info_hash = [0; 20];
    rng.fill(&mut info_hash);
    info_hash[0] = 0xFF;
    let port = free_port(Ipv4Addr::LOCALHOST);
    let tracker = OpenTrackerUdp::start(port, &[&hex(&info_hash)]);
    let deadline = || Instant::now() + SHORT;
    let mut udp = UdpClient::new(Duration::from_millis(500));

    // A seeder over UDP, then a leecher over HTTP: each is given the other.
    let seeder = request(info_hash, b"-BT0001-udp-seeder-1", 40001, 0);
    udp.announce(&tracker.udp_url(), &seeder, deadline())
        .unwrap_or_else(|e| panic!("UDP announce: {e}"));
    let leecher = request(info_hash, b"-BT0001-http-leech-2", 40002, 5000);
    let reply = http::announce(&tracker.http_url(), &leecher, SHORT)
        .unwrap_or_else(|e| panic!("HTTP announce: {e}"));
    assert!(
        reply.peers.contains(&local(40001)),
        "the HTTP leecher was not given the UDP seeder: {reply:?}"
    );
    let mut again = seeder.clone();
    again.event = None;
    let reply = udp
        .announce(&tracker.udp_url(), &again, deadline())
        .unwrap_or_else(|e| panic!("UDP re-announce: {e}"));
    assert!(
        reply.peers.contains(&local(40002)),
        "the UDP seeder was not given the HTTP leecher: {reply:?}"
    );
    assert!(reply.interval >= Duration::from_secs(1), "{reply:?}");
    assert_eq!((reply.complete, reply.incomplete), (Some(1), Some(1)));

    // The leecher finishes; both scrapes see it.
    let mut done = leecher.clone();
    done.event = Some(AnnounceEvent::Completed);
    done.left = 0;
    http::announce(&tracker.http_url(), &done, SHORT).unwrap();
    let want = ScrapeCounts {
        seeders: 2,
        leechers: 0,
        completed: Some(1),
    };
    assert_eq!(
        http::scrape(&tracker.http_url(), &info_hash, SHORT).unwrap(),
        want
    );
    assert_eq!(
        udp.scrape(&tracker.udp_url(), &info_hash, deadline())
            .unwrap(),
        want
    );

    // Both leave.
    let mut stopped = seeder.clone();
    stopped.event = Some(AnnounceEvent::Stopped);
    stopped.numwant = 0;
    udp.announce(&tracker.udp_url(), &stopped, deadline())
        .unwrap();
    done.event = Some(AnnounceEvent::Stopped);
    // opentracker answers `stopped` with a reply we may or may not call well-formed; the request
    // got there either way, which the scrape shows.
    let _ = http::announce(&tracker.http_url(), &done, SHORT);
    let counts = tracker.udp_scrape(&info_hash);
    assert_eq!((counts.seeders, counts.leechers), (0, 0), "{counts:?}");
}

#[test]
fn btd_and_a_libtorrent_seeder_find_each_other_through_opentracker_over_udp() {
    let tmp = TempDir::new("udp-opentracker");
    let seed_dir = seed_payload(&tmp, "find_each_other_over_udp", FILES);
    let port = free_port(Ipv4Addr::LOCALHOST);
    let torrent = tmp.path().join("udp.torrent");
    mktorrent(
        &seed_dir.join("udp"),
        &torrent,
        15,
        &[OpenTrackerUdp::udp_url_for(port)],
    );
    let info = TorrentInfo::read(&torrent);
    assert_eq!(info.trackers.len(), 1, "{:?}", info.trackers);
    let tracker = OpenTrackerUdp::start(port, &[&info.info_hash]);
    let hash = hash_bytes(&info.info_hash);

    let (mut lt, _) =
        LtClient::ready_seeder("libtorrent seeder", &torrent, &seed_dir, next_ip(), true);
    // opentracker's announce interval is 30 minutes: btd must find the seeder on its first
    // announce, so the seeder has to be registered before btd starts.
    wait_until(
        Instant::now() + SHORT,
        "opentracker to count the libtorrent seeder (announced over UDP)",
        || tracker.udp_scrape(&hash).seeders >= 1,
    );

    let out = tmp.subdir("out");
    let mut btd = Btd::download("btd leecher", &torrent, &out, next_ip(), &[], false);
    btd.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("udp"), &out.join("udp"));
    lt.terminate_and_assert_ok(SHORT);
}

/// A UDP socket on 127.0.0.1 that reads and drops every datagram, counting them. Stopped and
/// joined on `Drop`.
struct BlackHole {
    port: u16,
    datagrams: Arc<AtomicUsize>,
    first: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BlackHole {
    fn bind() -> BlackHole {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the black hole");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        let port = socket.local_addr().expect("local addr").port();
        let datagrams = Arc::new(AtomicUsize::new(0));
        let first = Arc::new(std::sync::Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, keep, stopping) = (
            Arc::clone(&datagrams),
            Arc::clone(&first),
            Arc::clone(&stop),
        );
        let thread = std::thread::Builder::new()
            .name("udp black hole".into())
            .spawn(move || {
                let mut buf = [0; 2048];
                while !stopping.load(Ordering::Relaxed) {
                    if let Ok(len) = socket.recv(&mut buf) {
                        count.fetch_add(1, Ordering::Relaxed);
                        keep.lock()
                            .unwrap()
                            .get_or_insert_with(|| buf[..len].to_vec());
                    }
                }
            })
            .expect("spawn the black hole");
        BlackHole {
            port,
            datagrams,
            first,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn create_torrent(seed_dir: &Path, torrent: &Path, url: &str) {
    Btd::run([
        OsString::from("create"),
        seed_dir.join("udp").into(),
        "-o".into(),
        torrent.into(),
        "-t".into(),
        url.into(),
    ])
    .assert_success();
}

#[test]
fn download_completes_from_a_peer_when_the_udp_tracker_never_answers() {
    let tmp = TempDir::new("udp-black-hole");
    let seed_dir = seed_payload(&tmp, "udp_tracker_never_answers", FILES);
    let hole = BlackHole::bind();
    let torrent = tmp.path().join("udp.torrent");
    create_torrent(
        &seed_dir,
        &torrent,
        &format!("udp://127.0.0.1:{}/announce", hole.port),
    );
    let mut seeder = Btd::seed("btd seeder", &torrent, &seed_dir, next_ip(), &[]);
    let seeder_addr = seeder.wait_listening();
    let out = tmp.subdir("out");
    let mut leecher = Btd::download(
        "btd leecher",
        &torrent,
        &out,
        next_ip(),
        &[seeder_addr],
        false,
    );
    leecher.assert_exits_ok(TRANSFER);
    assert_same_files(&seed_dir.join("udp"), &out.join("udp"));
    seeder.terminate_and_assert_ok(SHORT);
    assert!(
        hole.datagrams.load(Ordering::Relaxed) >= 1,
        "btd never sent anything to the torrent's UDP tracker"
    );
    let first = hole.first.lock().unwrap().clone().expect("a datagram");
    assert_eq!(
        first[..12],
        [0, 0, 0x04, 0x17, 0x27, 0x10, 0x19, 0x80, 0, 0, 0, 0],
        "the first datagram is not a BEP 15 connect"
    );
}
