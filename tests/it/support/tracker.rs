//! Trackers for tests: a real opentracker on 127.0.0.1, a fake one that answers garbage, one that
//! records every announce (`RecordingTracker`), one that accepts connections and never answers
//! (`SilentTracker`), and a port where nothing listens.

use super::process::Proc;
use super::{SHORT, TempDir, require_program};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A TCP port on `ip` that was free a moment ago (the kernel picked it; we let it go).
pub fn free_port(ip: Ipv4Addr) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A port on 127.0.0.1 where nothing listens: connections to it are refused.
pub fn closed_port() -> u16 {
    free_port(Ipv4Addr::LOCALHOST)
}

/// `GET path` over HTTP/1.0 to `addr`; returns (status code, body). Bounded by [`SHORT`].
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(SHORT))?;
    s.set_write_timeout(Some(SHORT))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of HTTP header"))?;
    let head = String::from_utf8_lossy(&reply[..split]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((code, reply[split + 4..].to_vec()))
}

/// `%XX` for every byte of a 40-hex-digit info hash.
pub fn percent_encode_hex(info_hash_hex: &str) -> String {
    assert_eq!(info_hash_hex.len(), 40, "info hash {info_hash_hex:?}");
    info_hash_hex
        .as_bytes()
        .chunks(2)
        .map(|pair| format!("%{}", std::str::from_utf8(pair).expect("ascii")))
        .collect()
}

/// opentracker on 127.0.0.1:PORT (HTTP only), accepting the listed info hashes. Debian builds it
/// with a whitelist, read relative to its chroot directory (a temp dir of ours); it then runs as
/// `nobody`, so the whitelist stays world-readable.
pub struct OpenTracker {
    proc: Proc,
    pub port: u16,
    _dir: TempDir,
}

impl OpenTracker {
    /// The announce URL of a tracker on `port`, for making the torrent before the tracker starts
    /// (its whitelist needs the info hash, and the info hash does not depend on the URL).
    pub fn url_for(port: u16) -> String {
        format!("http://127.0.0.1:{port}/announce")
    }

    pub fn announce_url(&self) -> String {
        Self::url_for(self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Starts opentracker on `port` and waits until it answers an announce for the first hash.
    pub fn start(port: u16, info_hashes: &[&str]) -> OpenTracker {
        require_program("opentracker", "opentracker");
        let dir = TempDir::new("opentracker");
        let list: String = info_hashes.iter().map(|h| format!("{h}\n")).collect();
        std::fs::write(dir.path().join("whitelist"), list).expect("write whitelist");
        let mut cmd = Command::new("opentracker");
        cmd.args(["-i", "127.0.0.1", "-p", &port.to_string(), "-d"])
            .arg(dir.path())
            .args(["-w", "whitelist"]);
        let mut t = OpenTracker {
            proc: Proc::spawn("opentracker", cmd),
            port,
            _dir: dir,
        };
        // A probe announce that leaves no peer behind (event=stopped). opentracker answers a hash
        // it has not whitelisted (yet) with a failure reason.
        let probe = format!(
            "/announce?info_hash={}&peer_id=-PROBE-0000000000000&port=1&uploaded=0&downloaded=0\
             &left=0&compact=1&event=stopped",
            percent_encode_hex(info_hashes[0])
        );
        let deadline = Instant::now() + SHORT;
        loop {
            t.proc.assert_running();
            let last = match http_get(t.addr(), &probe) {
                Ok((200, body)) if !contains(&body, b"failure reason") => break,
                Ok((code, body)) => format!("HTTP {code}: {}", String::from_utf8_lossy(&body)),
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "opentracker on 127.0.0.1:{port} did not accept an announce within {SHORT:?}; \
                 last answer: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    /// How many seeders (`complete`) opentracker counts for `info_hash`, from a scrape.
    pub fn seeders(&self, info_hash: &str) -> u64 {
        self.scrape_count(info_hash, b"8:completei")
    }

    /// How many leechers (`incomplete`) opentracker counts for `info_hash`, from a scrape.
    pub fn leechers(&self, info_hash: &str) -> u64 {
        self.scrape_count(info_hash, b"10:incompletei")
    }

    fn scrape_count(&self, info_hash: &str, key: &[u8]) -> u64 {
        let path = format!("/scrape?info_hash={}", percent_encode_hex(info_hash));
        let Ok((200, body)) = http_get(self.addr(), &path) else {
            return 0;
        };
        let Some(at) = body.windows(key.len()).position(|w| w == key) else {
            return 0;
        };
        let digits: String = body[at + key.len()..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| char::from(b))
            .collect();
        digits.parse().unwrap_or(0)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// An HTTP server on 127.0.0.1 that answers every request with `200 OK` and a body that is not
/// bencode, counting the requests. Stopped and joined on `Drop`.
pub struct FakeTracker {
    pub port: u16,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeTracker {
    pub fn garbage() -> FakeTracker {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind fake tracker");
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (Arc::clone(&requests), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("fake tracker".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            if answer_garbage(conn) {
                                r.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .expect("spawn fake tracker");
        FakeTracker {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// How many complete HTTP requests it has answered.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Reads one request header and answers it with garbage; true if a request came.
fn answer_garbage(mut conn: TcpStream) -> bool {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !contains(&req, b"\r\n\r\n") && req.len() < 64 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let body = b"<html>this is no tracker d8:intervali";
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(body);
    true
}

impl Drop for FakeTracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One announce as a [`RecordingTracker`] received it, its query decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    /// 40 lowercase hex digits.
    pub info_hash: String,
    /// The 20 bytes of `peer_id`, lossily as text.
    pub peer_id: String,
    /// `started`, `completed`, `stopped`, or `None` for a regular announce.
    pub event: Option<String>,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub port: u16,
    pub numwant: Option<u32>,
    /// The request target as sent (path and query).
    pub target: String,
    /// When the tracker read it.
    pub at: Instant,
}

impl Announce {
    /// True when the announce carries `event` (`None`: a regular announce).
    pub fn is(&self, event: Option<&str>) -> bool {
        self.event.as_deref() == event
    }
}

/// What a [`RecordingTracker`] received.
#[derive(Default)]
struct Record {
    announces: Vec<Announce>,
    /// Why a request to `/announce` could not be decoded.
    malformed: Vec<String>,
}

/// What a [`RecordingTracker`] answers every announce with.
#[derive(Clone, Debug)]
pub struct TrackerReply {
    /// `interval` in seconds.
    pub interval: u32,
    /// `min interval` in seconds, when set.
    pub min_interval: Option<u32>,
    /// `warning message`, when set.
    pub warning: Option<String>,
    /// The compact `peers` (IPv4 only).
    pub peers: Vec<SocketAddr>,
    /// `failure reason`, when set: the whole reply is `d14:failure reason...e`, a refusal.
    pub failure: Option<String>,
}

impl Default for TrackerReply {
    fn default() -> Self {
        Self {
            interval: 1800,
            min_interval: None,
            warning: None,
            peers: Vec::new(),
            failure: None,
        }
    }
}

impl TrackerReply {
    /// The bencoded reply (keys in order).
    fn bencode(&self) -> Vec<u8> {
        if let Some(reason) = &self.failure {
            return format!("d14:failure reason{}:{reason}e", reason.len()).into_bytes();
        }
        let mut compact = Vec::new();
        for p in &self.peers {
            let SocketAddr::V4(v4) = p else {
                panic!("a compact peer list holds IPv4 addresses only, not {p}");
            };
            compact.extend_from_slice(&v4.ip().octets());
            compact.extend_from_slice(&v4.port().to_be_bytes());
        }
        let min = self
            .min_interval
            .map(|m| format!("12:min intervali{m}e"))
            .unwrap_or_default();
        let mut out = format!(
            "d8:intervali{}e{min}5:peers{}:",
            self.interval,
            compact.len()
        )
        .into_bytes();
        out.extend_from_slice(&compact);
        if let Some(w) = &self.warning {
            out.extend_from_slice(format!("15:warning message{}:{w}", w.len()).as_bytes());
        }
        out.push(b'e');
        out
    }
}

/// An HTTP tracker on 127.0.0.1 (a free port) that answers every `GET /announce` with a valid
/// bencoded reply ([`TrackerReply`]: interval 1800, no peers, unless told otherwise) and records
/// every announce's decoded query, in the order they came. Other paths get 404. After
/// [`go_silent`](Self::go_silent) it still records announces but answers none (each connection
/// is held open). One connection at a time, each read within 2 s. Stopped and joined on `Drop`.
pub struct RecordingTracker {
    pub port: u16,
    record: Arc<Mutex<Record>>,
    reply: Arc<Mutex<TrackerReply>>,
    /// Set: announces are read and recorded, then held open without an answer.
    silent: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RecordingTracker {
    /// A tracker answering with the default reply.
    pub fn start() -> RecordingTracker {
        Self::with_reply(TrackerReply::default())
    }

    pub fn with_reply(reply: TrackerReply) -> RecordingTracker {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind recording tracker");
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let record = Arc::new(Mutex::new(Record::default()));
        let reply = Arc::new(Mutex::new(reply));
        let silent = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, r, q, s) = (
            Arc::clone(&record),
            Arc::clone(&reply),
            Arc::clone(&silent),
            Arc::clone(&stop),
        );
        let thread = std::thread::Builder::new()
            .name("recording tracker".into())
            .spawn(move || {
                let mut held = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            if let Some(conn) = answer_announce(conn, &a, &r, &q) {
                                held.push(conn);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .expect("spawn recording tracker");
        RecordingTracker {
            port,
            record,
            reply,
            silent,
            stop,
            thread: Some(thread),
        }
    }

    pub fn announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// From now on, announces are still recorded but never answered: each connection is held
    /// open until `Drop`.
    pub fn go_silent(&self) {
        self.silent.store(true, Ordering::Relaxed);
    }

    /// Changes what later announces are answered with.
    pub fn set_reply(&self, reply: TrackerReply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// Every announce so far, in order. Panics if an announce could not be decoded.
    pub fn announces(&self) -> Vec<Announce> {
        let record = self.record.lock().unwrap();
        assert!(
            record.malformed.is_empty(),
            "the tracker got announces it could not decode:\n{}",
            record.malformed.join("\n")
        );
        record.announces.clone()
    }

    /// Every announce so far for `info_hash` (hex), in order.
    pub fn announces_for(&self, info_hash: &str) -> Vec<Announce> {
        self.announces()
            .into_iter()
            .filter(|a| a.info_hash == info_hash)
            .collect()
    }

    /// Waits up to `timeout` until `f` accepts the announces for `info_hash`; returns them.
    /// Panics naming `what` and listing the announces when time runs out.
    pub fn wait_for(
        &self,
        info_hash: &str,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&[Announce]) -> bool,
    ) -> Vec<Announce> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.announces_for(info_hash);
            if f(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the tracker did not receive {what} within {timeout:?}; announces for {info_hash}:\n{}",
                describe_announces(&got)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the `n`th (from 1) announce for `info_hash` with `event`; returns it.
    pub fn wait_event(
        &self,
        info_hash: &str,
        event: Option<&str>,
        n: usize,
        timeout: Duration,
    ) -> Announce {
        let what = format!("announce number {n} with event {event:?}");
        let got = self.wait_for(info_hash, timeout, &what, |a| {
            a.iter().filter(|a| a.is(event)).count() >= n
        });
        got.into_iter()
            .filter(|a| a.is(event))
            .nth(n - 1)
            .expect("just counted")
    }
}

/// One line per announce: event, uploaded, downloaded, left.
pub fn describe_announces(announces: &[Announce]) -> String {
    announces
        .iter()
        .map(|a| {
            format!(
                "  event={} uploaded={} downloaded={} left={} port={} numwant={:?}\n",
                a.event.as_deref().unwrap_or("-"),
                a.uploaded,
                a.downloaded,
                a.left,
                a.port,
                a.numwant
            )
        })
        .collect()
}

impl Drop for RecordingTracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request head (bounded: 2 s, 64 KiB) and returns its target (`/announce?...`).
fn read_target(conn: &mut TcpStream) -> Option<String> {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !contains(&req, b"\r\n\r\n") && req.len() < 64 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&req);
    let mut words = head.lines().next()?.split_whitespace();
    (words.next()? == "GET").then_some(())?;
    words.next().map(str::to_owned)
}

/// Records and answers one request; returns the connection instead of answering when `silent`.
fn answer_announce(
    mut conn: TcpStream,
    record: &Mutex<Record>,
    reply: &Mutex<TrackerReply>,
    silent: &AtomicBool,
) -> Option<TcpStream> {
    let target = read_target(&mut conn)?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if path != "/announce" {
        let _ = write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return None;
    }
    let body = reply.lock().unwrap().bencode();
    // Recorded before the reply goes out: whoever got the reply finds the announce recorded.
    match parse_announce(&target, query) {
        Ok(announce) => record.lock().unwrap().announces.push(announce),
        Err(e) => record.lock().unwrap().malformed.push(e),
    }
    if silent.load(Ordering::Relaxed) {
        return Some(conn);
    }
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(&body);
    None
}

/// Decodes an announce query; `Err` names a field that is missing or not a number.
fn parse_announce(target: &str, query: &str) -> Result<Announce, String> {
    let mut fields = std::collections::HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        fields.insert(k.to_owned(), percent_decode(v));
    }
    let text = |k: &str| {
        fields
            .get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let number = |k: &str| -> Result<u64, String> {
        text(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("announce without a numeric {k}: {target}"))
    };
    let info_hash = fields
        .get("info_hash")
        .filter(|h| h.len() == 20)
        .map(|h| super::hex(h))
        .ok_or_else(|| format!("announce without a 20-byte info_hash: {target}"))?;
    Ok(Announce {
        info_hash,
        peer_id: text("peer_id").unwrap_or_default(),
        event: text("event").filter(|e| !e.is_empty()),
        uploaded: number("uploaded")?,
        downloaded: number("downloaded")?,
        left: number("left")?,
        port: u16::try_from(number("port")?).map_err(|_| format!("port out of range: {target}"))?,
        numwant: text("numwant").and_then(|v| v.parse().ok()),
        target: target.to_owned(),
        at: Instant::now(),
    })
}

/// `%XX` escapes decoded, `+` as a space.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// A tracker that accepts TCP connections on 127.0.0.1 and never answers: each connection is
/// held open, unread, until `Drop` (which stops and joins the thread and closes them). Every
/// announce to it waits for the announcer's own timeout.
pub struct SilentTracker {
    pub port: u16,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentTracker {
    pub fn start() -> SilentTracker {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind silent tracker");
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (Arc::clone(&connections), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("silent tracker".into())
            .spawn(move || {
                let mut held = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            held.push(conn);
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .expect("spawn silent tracker");
        SilentTracker {
            port,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    pub fn announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// How many connections it has accepted (and holds).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` until it has accepted at least `n` connections.
    pub fn wait_connections(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.connections() < n {
            assert!(
                Instant::now() < deadline,
                "the silent tracker got {} connections within {timeout:?}, not {n}",
                self.connections()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SilentTracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{RecordingTracker, TrackerReply, http_get};
    use std::net::{Ipv4Addr, SocketAddr};

    #[test]
    fn recording_tracker_decodes_the_query_and_answers_with_bencode() {
        let peer: SocketAddr = "127.0.0.9:6881".parse().expect("an address");
        let tracker = RecordingTracker::with_reply(TrackerReply {
            interval: 60,
            min_interval: Some(30),
            warning: Some("slow down".into()),
            peers: vec![peer],
            failure: None,
        });
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, tracker.port));
        // `a` and `-` stand for themselves, the other bytes are escaped.
        let query = "/announce?info_hash=%01%02a-%05%06%07%08%09%0A%0B%0C%0D%0E%0F%10%11%12%13%14\
                     &peer_id=-BT0001-abcdefghijkl&port=6881&uploaded=1&downloaded=2&left=3\
                     &compact=1&numwant=50&event=started";
        let (code, body) = http_get(addr, query).expect("announce");
        assert_eq!(code, 200);
        assert_eq!(
            body,
            b"d8:intervali60e12:min intervali30e5:peers6:\x7f\x00\x00\x09\x1a\xe1\
              15:warning message9:slow downe"
        );
        let (code, _) = http_get(addr, "/scrape?info_hash=x").expect("scrape");
        assert_eq!(code, 404);
        let got = tracker.announces();
        assert_eq!(got.len(), 1, "{got:?}");
        let a = &got[0];
        assert_eq!(a.info_hash, "0102612d05060708090a0b0c0d0e0f1011121314");
        assert_eq!(a.peer_id, "-BT0001-abcdefghijkl");
        assert_eq!(a.event.as_deref(), Some("started"));
        assert_eq!((a.uploaded, a.downloaded, a.left), (1, 2, 3));
        assert_eq!((a.port, a.numwant), (6881, Some(50)));
        assert_eq!(tracker.announces_for(&a.info_hash).len(), 1);
    }
}
