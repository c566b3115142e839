//! Trackers for tests: a real opentracker on 127.0.0.1, a fake one that answers garbage, and a
//! port where nothing listens.

use super::process::Proc;
use super::{SHORT, TempDir, require_program};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
