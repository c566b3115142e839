//! The process's one HTTP/1 server: accept, a bounded queue, a fixed set of workers, bounded
//! request heads and bodies, timeouts, and stopping. What a request means is the [`Handler`]'s
//! business; the embedded tracker (`tracker_server`) and the RPC (`rpc`) are its two handlers.
//!
//! Threads: `NAME accept` accepts connections and hands them to a bounded queue
//! ([`ServerConfig::queue`]; beyond it connections are closed unanswered); [`ServerConfig::workers`]
//! `NAME http N` threads each serve one connection at a time: one request, one reply, then close
//! (`Connection: close`, so a client that keeps its connection open holds no worker);
//! `NAME refuse` answers the peers the handler refuses by address.
//!
//! It answers strangers, so everything is bounded: the head (request line and headers,
//! [`ServerConfig::max_head_bytes`], 431 beyond) and the time to send it
//! ([`ServerConfig::head_timeout`], counted from accept, waiting in the queue included); the body, read only by `Content-Length`
//! ([`ServerConfig::max_body_bytes`], 413 beyond; `Transfer-Encoding` gets 411) and only after the
//! handler's [`Handler::check_head`] let it through, within [`ServerConfig::body_timeout`]; the
//! connections in service (the workers) and waiting (the queue). A handler may refuse peers by
//! address at accept ([`Handler::check_peer`]): those go to one `NAME refuse` thread with its
//! own queue (the same size; beyond it they are closed), which answers each within
//! [`REFUSE_WAIT`] twice, so strangers can neither hold the workers nor fill their queue. A
//! request line that is not
//! HTTP/1.x gets 400. Replies that refuse a request before its body was read shut the write side
//! and drain what the client still sends for a moment, so the client reads the reply instead of
//! a reset.
//!
//! [`HttpServer::stop`] wakes the blocked accept the way tiny-http does: a connection to the
//! listener after raising the stop flag; workers notice the flag within [`STOP_POLL`].

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::profile::{Role, run_as};

/// Reads wake up this often to notice that the server is stopping.
pub const STOP_POLL: Duration = Duration::from_millis(200);
/// A peer that [`Handler::check_peer`] refuses gets this long to send its head (so that its
/// client reads the refusal rather than a reset) and this long again to read the reply.
pub const REFUSE_WAIT: Duration = Duration::from_millis(200);
/// After a refusal, what the client still sends is drained for at most this long.
const DRAIN_TIME: Duration = Duration::from_millis(500);

/// The bounds and names of one server.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// Names the threads (`NAME accept`, `NAME http N`) and starts the log lines.
    pub name: &'static str,
    /// Whose CPU time the threads count as (`profile`).
    pub role: Role,
    /// Threads serving connections: at most this many requests are in service at once.
    pub workers: usize,
    /// Accepted connections waiting for a worker; more are closed at once.
    pub queue: usize,
    /// A request head (request line and headers) longer than this gets 431.
    pub max_head_bytes: usize,
    /// A `Content-Length` over this gets 413 (before any of the body is read).
    pub max_body_bytes: usize,
    /// A client has this long to send its head; each write of the reply this long to progress.
    pub head_timeout: Duration,
    /// A client has this long, from the end of its head, to send its body.
    pub body_timeout: Duration,
    /// Whether the handler refuses peers by address ([`Handler::check_peer`]): only then is
    /// there a `NAME refuse` thread.
    pub refuses_peers: bool,
}

/// One request: what the head says, the body, and who sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// As sent (`GET`, `POST`); not checked against a list.
    pub method: String,
    /// The request target as sent, path and query (`/announce?info_hash=...`), raw bytes.
    pub target: Vec<u8>,
    /// Names and values as sent (values trimmed), in order; see [`Request::header`].
    pub headers: Vec<(String, String)>,
    /// Exactly `Content-Length` bytes; empty while [`Handler::check_head`] runs.
    pub body: Vec<u8>,
    /// The connection's source address.
    pub peer: SocketAddr,
}

impl Request {
    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The target's path: without the query and fragment.
    pub fn path(&self) -> &[u8] {
        let end = self
            .target
            .iter()
            .position(|&b| b == b'?' || b == b'#')
            .unwrap_or(self.target.len());
        &self.target[..end]
    }
}

/// A reply: status, headers (besides `Content-Length` and `Connection`, which the server
/// writes) and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A reply with this status, `Content-Type` and body.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// A `text/plain` reply.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "text/plain", body)
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The value of the first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The reason phrase of the statuses btd sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A request the server refuses before any handler sees it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not an HTTP/1.x request line, or a malformed `Content-Length`: 400.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A head over the server's limit: 431.
    #[error("request head over {0} bytes")]
    HeadTooLarge(usize),
    /// A `Content-Length` over the server's limit: 413.
    #[error("request body of {length} bytes is over the limit of {limit}")]
    BodyTooLarge { length: u64, limit: usize },
    /// `Transfer-Encoding` (chunked bodies): 411, send `Content-Length`.
    #[error("send the body with Content-Length, not Transfer-Encoding")]
    LengthRequired,
}

impl HeadError {
    /// The status the refusal gets.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::BadRequest(_) => 400,
            HeadError::HeadTooLarge(_) => 431,
            HeadError::BodyTooLarge { .. } => 413,
            HeadError::LengthRequired => 411,
        }
    }
}

/// What a server does with requests. Runs on the worker threads, several at once.
pub trait Handler: Send + Sync + 'static {
    /// Called by the accept thread for each connection: `Some` refuses the peer with that reply,
    /// which the `NAME refuse` thread sends (after waiting at most [`REFUSE_WAIT`] for the head);
    /// the workers never see it. Must be quick.
    fn check_peer(&self, peer: SocketAddr) -> Option<Response> {
        let _ = peer;
        None
    }

    /// Called when the head is in, before any of the body is read: `Some` answers at once (a
    /// refusal that costs no body), `None` lets the server read the body and call
    /// [`handle`](Self::handle). `request.body` is empty here.
    fn check_head(&self, request: &Request) -> Option<Response> {
        let _ = request;
        None
    }

    /// Answers a whole request.
    fn handle(&self, request: Request) -> Response;

    /// The reply to a request the server refuses itself (see [`HeadError`]).
    fn refused(&self, error: &HeadError) -> Response {
        Response::text(error.status(), format!("{error}\n"))
    }
}

/// Where the head ends: the index just past its blank line (`\r\n\r\n` or `\n\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The parts of a head: method, target, headers.
pub type Head = (String, Vec<u8>, Vec<(String, String)>);

/// Parses a request head (request line, headers, up to the blank line). Header lines without a
/// colon are skipped, as the tracker always ignored them.
///
/// # Errors
/// [`HeadError::BadRequest`] for a request line that is not `METHOD TARGET HTTP/1.x`.
pub fn parse_head(head: &[u8]) -> Result<Head, HeadError> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::BadRequest("not an HTTP request line"));
    };
    if !version.starts_with(b"HTTP/1.") {
        return Err(HeadError::BadRequest("not HTTP/1.x"));
    }
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_owned();
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_owned();
        headers.push((name, value));
    }
    Ok((
        String::from_utf8_lossy(method).into_owned(),
        target.to_vec(),
        headers,
    ))
}

/// The body length the head announces: 0 without `Content-Length`.
///
/// # Errors
/// 400 for a `Content-Length` that is not a number or differs between copies; 411 for
/// `Transfer-Encoding`.
pub fn content_length(headers: &[(String, String)]) -> Result<u64, HeadError> {
    if headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Err(HeadError::LengthRequired);
    }
    let mut length = None;
    for (_, value) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let n: u64 = value
            .parse()
            .ok()
            .filter(|_| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(HeadError::BadRequest("Content-Length is not a number"))?;
        if length.is_some_and(|l| l != n) {
            return Err(HeadError::BadRequest("Content-Length given twice"));
        }
        length = Some(n);
    }
    Ok(length.unwrap_or(0))
}

/// A running server. Dropping it stops it too, like [`HttpServer::stop`].
pub struct HttpServer {
    name: &'static str,
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `listener` (already bound) with `handler`.
    ///
    /// # Errors
    /// The listener's address cannot be read, or a thread cannot be spawned (the threads
    /// already started are stopped).
    pub fn start(
        listener: TcpListener,
        config: ServerConfig,
        handler: Arc<dyn Handler>,
    ) -> io::Result<HttpServer> {
        let mut server = HttpServer {
            name: config.name,
            local_addr: listener.local_addr()?,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        if let Err(e) = server.spawn_threads(listener, config, handler) {
            server.shutdown();
            return Err(e);
        }
        Ok(server)
    }

    fn spawn_threads(
        &mut self,
        listener: TcpListener,
        config: ServerConfig,
        handler: Arc<dyn Handler>,
    ) -> io::Result<()> {
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(config.queue);
        let (refuse_tx, refuse_rx) = crossbeam_channel::bounded(config.queue);
        if config.refuses_peers {
            let stop = Arc::clone(&self.stop);
            self.threads.push(
                std::thread::Builder::new()
                    .name(format!("{} refuse", config.name))
                    .spawn(move || run_as(config.role, || refuser(&refuse_rx, &stop, &config)))?,
            );
        } else {
            drop(refuse_rx);
        }
        for n in 0..config.workers {
            let (jobs, stop, handler) = (
                jobs_rx.clone(),
                Arc::clone(&self.stop),
                Arc::clone(&handler),
            );
            self.threads.push(
                std::thread::Builder::new()
                    .name(format!("{} http {n}", config.name))
                    .spawn(move || {
                        run_as(config.role, || worker(&jobs, &stop, &*handler, &config));
                    })?,
            );
        }
        drop(jobs_rx);
        let stop = Arc::clone(&self.stop);
        let queues = Queues {
            jobs: jobs_tx,
            refusals: refuse_tx,
        };
        self.threads.push(
            std::thread::Builder::new()
                .name(format!("{} accept", config.name))
                .spawn(move || {
                    run_as(config.role, || {
                        accept_loop(&listener, &queues, &stop, &*handler, &config);
                    });
                })?,
        );
        Ok(())
    }

    /// The address it listens on (the real port when it was bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, wakes and joins every thread. Requests in service are abandoned within
    /// [`STOP_POLL`] (a handler already running finishes first).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.stop.store(true, Ordering::SeqCst);
        for wake in wake_addrs(self.local_addr) {
            if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
                break;
            }
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        log::debug!("{}: HTTP on {} stopped", self.name, self.local_addr);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where to reach our own socket: its address, or loopback when it listens on every address
/// (for `[::]`, which also takes IPv4 unless the system says otherwise, `[::1]` then
/// `127.0.0.1`, in case the host has no IPv6 loopback).
pub fn wake_addrs(local: SocketAddr) -> Vec<SocketAddr> {
    let port = local.port();
    match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]
        }
        IpAddr::V6(ip) if ip.is_unspecified() => vec![
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        ],
        _ => vec![local],
    }
}

/// Where the accept thread puts connections.
struct Queues {
    /// For the workers.
    jobs: Sender<(TcpStream, Instant)>,
    /// Refused peers and their reply, for the `NAME refuse` thread.
    refusals: Sender<(TcpStream, Response)>,
}

/// Accepts connections until the server stops, queueing them for the workers (or, for peers the
/// handler refuses, the refuser); when the queue is full the connection is closed unanswered.
fn accept_loop(
    listener: &TcpListener,
    queues: &Queues,
    stop: &AtomicBool,
    handler: &dyn Handler,
    c: &ServerConfig,
) {
    let name = c.name;
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, addr)) => {
                let refusal = c.refuses_peers.then(|| handler.check_peer(addr)).flatten();
                let queued = match refusal {
                    None => queues
                        .jobs
                        .try_send((stream, Instant::now()))
                        .map_err(|e| e.is_full()),
                    Some(reply) => queues
                        .refusals
                        .try_send((stream, reply))
                        .map_err(|e| e.is_full()),
                };
                match queued {
                    Ok(()) => {}
                    Err(true) => log::debug!("{name}: {addr}: queue full; connection closed"),
                    Err(false) => return,
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: wait for it to pass, do not spin.
                log::debug!("{name}: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Answers refused peers, one at a time: waits at most [`REFUSE_WAIT`] for the head (so the
/// client reads the reply rather than a reset), writes the reply, drains for as long again.
fn refuser(refusals: &Receiver<(TcpStream, Response)>, stop: &AtomicBool, c: &ServerConfig) {
    while let Ok((mut stream, reply)) = refusals.recv() {
        if stop.load(Ordering::SeqCst) {
            continue;
        }
        let mut buf = Vec::new();
        let deadline = Instant::now() + REFUSE_WAIT;
        let _ = read_until(
            &mut stream,
            &mut buf,
            c.max_head_bytes + 1,
            deadline,
            stop,
            |b| head_end(b).is_some(),
        );
        write_response(&mut stream, &reply, c);
        let _ = stream.shutdown(Shutdown::Write);
        drain(&mut stream, REFUSE_WAIT);
    }
}

/// Serves queued connections one at a time until the acceptor is gone.
fn worker(
    jobs: &Receiver<(TcpStream, Instant)>,
    stop: &AtomicBool,
    handler: &dyn Handler,
    c: &ServerConfig,
) {
    while let Ok((stream, accepted)) = jobs.recv() {
        if stop.load(Ordering::SeqCst) {
            continue;
        }
        serve(stream, accepted, stop, handler, c);
    }
}

#[derive(Debug)]
enum ReadError {
    TooLarge,
    Closed,
    TimedOut,
    Stopping,
}

/// Reads into `buf` until `done(buf)` or `buf` holds `limit` bytes, by `deadline`, waking every
/// [`STOP_POLL`] to look at `stop`.
fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: usize,
    deadline: Instant,
    stop: &AtomicBool,
    done: impl Fn(&[u8]) -> bool,
) -> Result<(), ReadError> {
    let mut chunk = [0u8; 8192];
    while !done(buf) {
        if buf.len() >= limit {
            return Err(ReadError::TooLarge);
        }
        if stop.load(Ordering::SeqCst) {
            return Err(ReadError::Stopping);
        }
        // Past the deadline, what has already arrived in bulk is still read (a request that
        // waited in the queue), but nothing is waited for and a trickle ends it.
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), STOP_POLL);
        stream
            .set_read_timeout(Some(wait))
            .map_err(|_| ReadError::Closed)?;
        let want = chunk.len().min(limit - buf.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if n < want && !done(buf) && Instant::now() >= deadline {
                    return Err(ReadError::TimedOut);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if Instant::now() >= deadline {
                    return Err(ReadError::TimedOut);
                }
            }
            Err(_) => return Err(ReadError::Closed),
        }
    }
    Ok(())
}

/// Serves one connection. The head's deadline counts from `accepted`, so connections that sat
/// idle in the queue while the workers were busy are dropped at once instead of each holding a
/// worker for the whole head timeout: a flood of idle connections delays others by about one
/// head timeout, not one per queued connection.
fn serve(
    mut stream: TcpStream,
    accepted: Instant,
    stop: &AtomicBool,
    handler: &dyn Handler,
    c: &ServerConfig,
) {
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let name = c.name;
    let mut buf = Vec::with_capacity(1024);

    // One byte over the limit tells a head that is too long from one that just fits.
    let read = read_until(
        &mut stream,
        &mut buf,
        c.max_head_bytes + 1,
        accepted + c.head_timeout,
        stop,
        |b| head_end(b).is_some(),
    );
    let end = match (read, head_end(&buf)) {
        (Ok(()), Some(end)) if end <= c.max_head_bytes => end,
        (Ok(()) | Err(ReadError::TooLarge), _) => {
            log::debug!(
                "{name}: {peer}: request head over {} bytes",
                c.max_head_bytes
            );
            refuse_early(
                &mut stream,
                &handler.refused(&HeadError::HeadTooLarge(c.max_head_bytes)),
                c,
            );
            return;
        }
        (Err(e), _) => {
            log::debug!("{name}: {peer}: no request: {e:?}");
            return;
        }
    };
    let refused = |stream: &mut TcpStream, e: HeadError| {
        log::debug!("{name}: {peer}: {e}");
        refuse_early(stream, &handler.refused(&e), c);
    };
    let (method, target, headers) = match parse_head(&buf[..end]) {
        Ok(head) => head,
        Err(e) => return refused(&mut stream, e),
    };
    let length = match content_length(&headers) {
        Ok(n) => n,
        Err(e) => return refused(&mut stream, e),
    };
    let mut request = Request {
        method,
        target,
        headers,
        body: Vec::new(),
        peer,
    };
    if let Some(response) = handler.check_head(&request) {
        return refuse_early(&mut stream, &response, c);
    }
    let length = match usize::try_from(length) {
        Ok(n) if n <= c.max_body_bytes => n,
        _ => {
            let limit = c.max_body_bytes;
            return refused(&mut stream, HeadError::BodyTooLarge { length, limit });
        }
    };
    let mut body = buf.split_off(end);
    body.truncate(length);
    if body.len() < length
        && request
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        let _ = stream.set_write_timeout(Some(c.head_timeout));
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let read = read_until(
        &mut stream,
        &mut body,
        length,
        Instant::now() + c.body_timeout,
        stop,
        |b| b.len() >= length,
    );
    if let Err(e) = read {
        log::debug!("{name}: {peer}: body of {length} bytes not received: {e:?}");
        return;
    }
    request.body = body;
    let response = handler.handle(request);
    write_response(&mut stream, &response, c);
}

/// Answers before the body was read: the reply, then (so the client reads it instead of a
/// reset) the write side shut and what the client still sends drained for a moment.
fn refuse_early(stream: &mut TcpStream, response: &Response, c: &ServerConfig) {
    write_response(stream, response, c);
    let _ = stream.shutdown(Shutdown::Write);
    drain(stream, DRAIN_TIME);
}

fn write_response(stream: &mut TcpStream, response: &Response, c: &ServerConfig) {
    let mut reply = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason_phrase(response.status)
    );
    for (name, value) in &response.headers {
        reply.push_str(&format!("{name}: {value}\r\n"));
    }
    reply.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        response.body.len()
    ));
    let mut reply = reply.into_bytes();
    reply.extend_from_slice(&response.body);
    let _ = stream.set_write_timeout(Some(c.head_timeout));
    let _ = stream.write_all(&reply);
}

/// Reads and discards what the client still sends, for at most `time` and 1 MiB.
fn drain(stream: &mut TcpStream, time: Duration) {
    let deadline = Instant::now() + time;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    while Instant::now() < deadline && total < 1 << 20 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServerConfig {
        ServerConfig {
            name: "test",
            role: Role::Tracker,
            workers: 2,
            queue: 4,
            max_head_bytes: 1024,
            max_body_bytes: 100,
            head_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(2),
            refuses_peers: false,
        }
    }

    /// Echoes method, path, a header and the body; refuses `/secret` before its body.
    struct Echo;

    impl Handler for Echo {
        fn check_head(&self, request: &Request) -> Option<Response> {
            (request.path() == b"/secret").then(|| Response::text(403, "no\n"))
        }

        fn handle(&self, request: Request) -> Response {
            let mut body = format!(
                "{} {} {:?} ",
                request.method,
                String::from_utf8_lossy(request.path()),
                request.header("x-thing")
            )
            .into_bytes();
            body.extend_from_slice(&request.body);
            Response::text(200, body).with_header("X-Echo", "1")
        }
    }

    fn start() -> HttpServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        HttpServer::start(listener, config(), Arc::new(Echo)).unwrap()
    }

    /// One raw exchange: the whole reply as text.
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(request); // the server may close before taking it all
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply).into_owned()
    }

    #[test]
    fn parses_heads_and_skips_header_lines_without_a_colon() {
        let (method, target, headers) =
            parse_head(b"POST /a?b=c HTTP/1.0\r\nHost: x\r\nnonsense\r\nX-Y:  z \r\n\r\n").unwrap();
        assert_eq!(
            (method.as_str(), target.as_slice()),
            ("POST", &b"/a?b=c"[..])
        );
        assert_eq!(
            headers,
            vec![("Host".into(), "x".into()), ("X-Y".into(), "z".into())]
        );
        for (head, why) in [
            (&b"GET /\r\n\r\n"[..], "not an HTTP request line"),
            (b"GET / HTTP/2\r\n\r\n", "not HTTP/1.x"),
            (b"", "not an HTTP request line"),
            (b"\x16\x03\x01\x02\x00\x01", "not an HTTP request line"),
        ] {
            assert_eq!(parse_head(head), Err(HeadError::BadRequest(why)));
        }
    }

    #[test]
    fn content_length_must_be_one_number_and_chunked_bodies_are_refused() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect()
        };
        assert_eq!(content_length(&h(&[])), Ok(0));
        assert_eq!(content_length(&h(&[("content-LENGTH", "12")])), Ok(12));
        assert_eq!(
            content_length(&h(&[("Content-Length", "12"), ("Content-Length", "12")])),
            Ok(12)
        );
        for bad in [
            h(&[("Content-Length", "-1")]),
            h(&[("Content-Length", "+5")]),
            h(&[("Content-Length", "")]),
            h(&[("Content-Length", "99999999999999999999999")]),
            h(&[("Content-Length", "1"), ("Content-Length", "2")]),
        ] {
            assert_eq!(content_length(&bad).unwrap_err().status(), 400, "{bad:?}");
        }
        assert_eq!(
            content_length(&h(&[("Transfer-Encoding", "chunked")])),
            Err(HeadError::LengthRequired)
        );
    }

    #[test]
    fn serves_a_body_read_by_content_length_and_refuses_what_is_over_the_limits() {
        let server = start();
        let addr = server.local_addr();
        let reply = exchange(
            addr,
            b"POST /x HTTP/1.1\r\nX-Thing: 7\r\nContent-Length: 5\r\n\r\nhello and more",
        );
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("\r\nX-Echo: 1\r\n"), "{reply}");
        assert!(reply.contains("Connection: close\r\n"), "{reply}");
        assert!(reply.ends_with("POST /x Some(\"7\") hello"), "{reply}");
        // The body arriving after the head, in pieces.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /y HTTP/1.1\r\nContent-Length: 6\r\n\r\nab")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(b"cdef").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.ends_with("POST /y None abcdef"), "{reply}");

        let over = exchange(addr, b"POST /x HTTP/1.1\r\nContent-Length: 101\r\n\r\n");
        assert!(over.starts_with("HTTP/1.1 413 "), "{over}");
        let chunked = exchange(
            addr,
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(chunked.starts_with("HTTP/1.1 411 "), "{chunked}");
        let head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert!(exchange(addr, head.as_bytes()).starts_with("HTTP/1.1 431 "));
        assert!(exchange(addr, b"hello\r\n\r\n").starts_with("HTTP/1.1 400 "));
        // Refused by the handler before the body: the body is never read, the reply still
        // arrives whole.
        let big = format!(
            "POST /secret HTTP/1.1\r\nContent-Length: 100\r\n\r\n{}",
            "b".repeat(100)
        );
        let secret = exchange(addr, big.as_bytes());
        assert!(secret.starts_with("HTTP/1.1 403 "), "{secret}");
        assert!(secret.ends_with("no\n"), "{secret}");
        // Still serving.
        assert!(exchange(addr, b"GET /z HTTP/1.0\r\n\r\n").ends_with("GET /z None "));
        server.stop();
    }

    #[test]
    fn expect_100_continue_gets_an_interim_reply_before_the_body_is_sent() {
        let server = start();
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST /c HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
            .unwrap();
        let mut interim = [0u8; 25];
        s.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(b"abc").unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.ends_with("POST /c None abc"), "{reply}");
        server.stop();
    }

    #[test]
    fn a_head_sent_a_byte_at_a_time_is_cut_off_at_the_head_timeout() {
        let server = start();
        let mut s = TcpStream::connect(server.local_addr()).unwrap();
        let started = Instant::now();
        // 2 s head timeout; a byte every 5 ms takes over 3 s for the whole head (under the
        // 1 KiB head limit).
        let head = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(600));
        for b in head.bytes() {
            if s.write_all(&[b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        let ended = started.elapsed();
        assert!(reply.is_empty(), "{:?}", String::from_utf8_lossy(&reply));
        assert!(ended < Duration::from_secs(8), "{ended:?}");
        server.stop();
    }

    #[test]
    fn a_body_that_stops_coming_times_out_and_frees_the_worker() {
        let server = start();
        let addr = server.local_addr();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /x HTTP/1.1\r\nContent-Length: 50\r\n\r\nhalf")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty(), "{rest:?}");
        let waited = started.elapsed();
        assert!(
            waited > Duration::from_millis(1500) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
        server.stop();
    }

    #[test]
    fn five_hundred_idle_connections_delay_a_request_by_about_one_head_timeout() {
        let server = start();
        let addr = server.local_addr();
        // Silent and held open: the workers each take one, the queue fills, the rest are closed
        // at accept.
        let held: Vec<TcpStream> = (0..500)
            .filter_map(|_| TcpStream::connect(addr).ok())
            .collect();
        assert!(held.len() > 400, "{} connected", held.len());
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let reply = exchange(addr, b"GET /after HTTP/1.1\r\n\r\n");
            if reply.ends_with("GET /after None ") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{reply:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        // The queued idle connections' head time ran out while they waited, so once the
        // workers' first ones time out, the queue empties at once.
        let waited = started.elapsed();
        eprintln!("500 idle connections: answered after {waited:?}, {tries} tries");
        assert!(waited < config().head_timeout * 2, "{waited:?}");
        drop(held);
        let started = Instant::now();
        server.stop();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(TcpListener::bind(addr).is_ok(), "the port is free again");
    }

    #[test]
    fn a_request_that_waited_in_the_queue_past_its_head_time_is_still_served() {
        let server = start();
        let addr = server.local_addr();
        // Both workers busy: heads sent just before their 2 s run out, then bodies that never
        // come (2 s more) ...
        let mut busy: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        // ... while a whole request waits behind them in the queue, past its own 2 s.
        let mut queued = TcpStream::connect(addr).unwrap();
        queued.write_all(b"GET /queued HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(1600));
        for s in &mut busy {
            s.write_all(b"POST /slow HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
                .unwrap();
        }
        let started = Instant::now();
        queued
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reply = String::new();
        queued.read_to_string(&mut reply).unwrap();
        assert!(
            started.elapsed() > Duration::from_secs(1),
            "the workers were busy"
        );
        assert!(reply.ends_with("GET /queued None "), "{reply:?}");
        drop(busy);
        server.stop();
    }
}
