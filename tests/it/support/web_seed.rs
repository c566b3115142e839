//! A small HTTP/1.1 file server on 127.0.0.1 for web-seed tests (BEP 19): GET of files under a
//! root directory, with single `Range: bytes=A-B` requests answered `206` (Python's
//! `http.server` does not do ranges, and a server of our own can also serve corrupt bytes and
//! count what it was asked). Keep-alive connections, one thread each, every read bounded by a
//! timeout; the listener stops on `Drop`. [`Options`] make it misbehave as real servers do:
//! corrupt bytes, a delay, `Range` ignored (200 with the whole file), a trickle, or a redirect.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How long a connection may stay silent before its thread ends.
const IDLE: Duration = Duration::from_secs(10);
/// Longest request head we read.
const MAX_HEAD: usize = 16 * 1024;

/// How the server behaves; `Options::default()` is a correct, prompt, range-capable server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Every byte served is inverted.
    pub corrupt: bool,
    /// Waited before each reply.
    pub delay: Duration,
    /// `Range` is ignored: every GET is answered `200` with the whole file (as servers without
    /// range support do).
    pub ignore_ranges: bool,
    /// The body is sent one byte per this interval (a server that trickles: never silent for
    /// long, never done).
    pub trickle: Option<Duration>,
}

/// Requests under this path are answered `302 Found` with a `Location` of the same path
/// without it (an absolute URL), as archive.org redirects to its data servers.
pub const REDIRECT_PREFIX: &str = "/moved";

pub struct WebSeedServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Ranged GETs answered with data (206).
    ranges_served: Arc<AtomicUsize>,
    /// Every request path, as received.
    paths: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl WebSeedServer {
    /// Serves the files under `root`; with `corrupt`, every byte served is inverted.
    pub fn start(root: &Path, corrupt: bool) -> WebSeedServer {
        Self::start_with_delay(root, corrupt, Duration::ZERO)
    }

    /// As [`WebSeedServer::start`], waiting `delay` before each reply (a slow server).
    pub fn start_with_delay(root: &Path, corrupt: bool, delay: Duration) -> WebSeedServer {
        Self::start_with(
            root,
            Options {
                corrupt,
                delay,
                ..Options::default()
            },
        )
    }

    /// Serves the files under `root`, behaving as `options` say.
    pub fn start_with(root: &Path, options: Options) -> WebSeedServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the web seed server");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let ranges_served = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let root = root.to_path_buf();
        {
            let (stop, ranges_served, paths) = (
                Arc::clone(&stop),
                Arc::clone(&ranges_served),
                Arc::clone(&paths),
            );
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (root, ranges_served, paths) =
                        (root.clone(), Arc::clone(&ranges_served), Arc::clone(&paths));
                    std::thread::spawn(move || {
                        let _ = serve(conn, &root, addr, options, &ranges_served, &paths);
                    });
                }
            });
        }
        WebSeedServer {
            addr,
            stop,
            ranges_served,
            paths,
        }
    }

    /// `http://127.0.0.1:PORT/` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    pub fn ranges_served(&self) -> usize {
        self.ranges_served.load(Ordering::Relaxed)
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().clone()
    }
}

impl Drop for WebSeedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve(
    conn: TcpStream,
    root: &Path,
    addr: SocketAddr,
    options: Options,
    ranges_served: &AtomicUsize,
    paths: &parking_lot::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IDLE))?;
    conn.set_write_timeout(Some(IDLE))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = (&mut reader)
                .take((MAX_HEAD - head.len()) as u64)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(()); // closed, or a head too long
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = head.lines();
        let request = lines.next().unwrap_or_default();
        let mut parts = request.split(' ');
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let mut range = None;
        let mut close = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
        paths.lock().push(target.to_owned());
        std::thread::sleep(options.delay);
        if method != "GET" {
            reply(&mut out, "405 Method Not Allowed", &[], b"")?;
            return Ok(());
        }
        if let Some(rest) = target.strip_prefix(REDIRECT_PREFIX) {
            let extra = [format!("Location: http://{addr}{rest}")];
            reply(&mut out, "302 Found", &extra, b"")?;
            continue;
        }
        if options.ignore_ranges {
            range = None;
        }
        let Some(path) = local_path(root, target) else {
            reply(&mut out, "404 Not Found", &[], b"")?;
            continue;
        };
        let Ok(mut file) = File::open(&path) else {
            reply(&mut out, "404 Not Found", &[], b"")?;
            continue;
        };
        let len = file.metadata()?.len();
        let (start, end, status) = match range.as_deref().map(|r| parse_range(r, len)) {
            None => (0, len, "200 OK"),
            Some(Some((a, b))) => (a, b, "206 Partial Content"),
            Some(None) => {
                let extra = [format!("Content-Range: bytes */{len}")];
                reply(&mut out, "416 Range Not Satisfiable", &extra, b"")?;
                continue;
            }
        };
        let mut body = vec![0; usize::try_from(end - start).expect("test files are small")];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut body)?;
        if options.corrupt {
            body.iter_mut().for_each(|b| *b = !*b);
        }
        let mut extra = Vec::new();
        if !options.ignore_ranges {
            extra.push("Accept-Ranges: bytes".to_owned());
        }
        if range.is_some() {
            extra.push(format!("Content-Range: bytes {start}-{}/{len}", end - 1));
            ranges_served.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(every) = options.trickle {
            trickle(&mut out, status, &extra, &body, every)?;
            return Ok(());
        }
        reply(&mut out, status, &extra, &body)?;
        if close {
            return Ok(());
        }
    }
}

fn reply(out: &mut TcpStream, status: &str, extra: &[String], body: &[u8]) -> std::io::Result<()> {
    write_head(out, status, extra, body.len())?;
    out.write_all(body)
}

/// The status line and headers of a reply with a body of `len` bytes.
fn write_head(
    out: &mut TcpStream,
    status: &str,
    extra: &[String],
    len: usize,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}

/// `reply`, with the body one byte per `every`.
fn trickle(
    out: &mut TcpStream,
    status: &str,
    extra: &[String],
    body: &[u8],
    every: Duration,
) -> std::io::Result<()> {
    write_head(out, status, extra, body.len())?;
    for byte in body {
        std::thread::sleep(every);
        out.write_all(std::slice::from_ref(byte))?;
    }
    Ok(())
}

/// `bytes=A-B`, `bytes=A-` or `bytes=-N` inside a file of `len` bytes, as `A..B+1`.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => (len.checked_sub(n.parse().ok()?)?, len),
        (a, "") => (a.parse().ok()?, len),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.checked_add(1)?.min(len),
        ),
    };
    (start < end && end <= len).then_some((start, end))
}

/// The file under `root` that request target `target` names (percent-decoded, no `..`).
fn local_path(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split('?').next()?;
    let decoded = btd::percent::decode(path.as_bytes(), false)?;
    let decoded = String::from_utf8(decoded).ok()?;
    let rel = Path::new(decoded.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(rel))
}
