//! The UDP tracker protocol (BEP 15): connect, announce and scrape, run on the announce pool's threads.
//!
//! A [`UdpClient`] keeps each tracker's connection id (with the socket it was obtained on) for its
//! minute, so the announces and scrapes of that minute skip the connect. Every request carries a
//! random transaction id; a datagram that does not echo it, is too short, or carries another action
//! is ignored and the wait goes on. A request unanswered after `base * 2^n` (n = 0, 1, ... 8) is sent
//! again, and the whole exchange ends at the caller's deadline, so a silent tracker holds the
//! announcer no longer than the caller allows. Name resolution (`ToSocketAddrs`) is the one wait
//! the deadline does not bound; it is done once per connection id.
//!
//! Replies come from strangers: nothing here panics on them or allocates by their say-so.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use log::debug;

use super::{
    AnnounceEvent, AnnounceRequest, AnnounceResponse, ScrapeCounts, TrackerError, retain_dialable,
};
use crate::wire::compact::{self, Family};

/// The magic constant that opens a connect request.
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;
/// How long a connection id may be used after the tracker gave it.
pub const CONNECTION_ID_LIFETIME: Duration = Duration::from_secs(60);
/// The highest `n` in the retransmission wait `base * 2^n`: a request goes out at most 9 times.
pub const MAX_RETRANSMIT_EXPONENT: u32 = 8;

/// The `action` field of every BEP 15 datagram, both ways (the embedded tracker's too).
pub const ACTION_CONNECT: u32 = 0;
pub const ACTION_ANNOUNCE: u32 = 1;
pub const ACTION_SCRAPE: u32 = 2;
pub const ACTION_ERROR: u32 = 3;

/// The largest datagram we read; longer ones are truncated by the kernel (a reply with 200 IPv6
/// peers is 3.6 KiB).
const MAX_DATAGRAM: usize = 16 * 1024;

/// Whether `url` is one this module can talk to (`udp://`, any case).
pub fn is_supported(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("udp"))
}

/// A connection id and the socket it was obtained on (a tracker may tie the id to our address).
struct Connection {
    socket: UdpSocket,
    family: Family,
    id: u64,
    obtained: Instant,
}

/// A UDP tracker client: the connection ids of the trackers it talked to in the last minute, and
/// the retransmission base.
pub struct UdpClient {
    retransmit_base: Duration,
    /// The local address to send from (our listen address), so the tracker, which takes our
    /// address from the datagram, lists the address peers can reach us on.
    bind: Option<IpAddr>,
    connections: HashMap<String, Connection>,
}

/// What one wait for a reply ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// The reply's bytes after the action and transaction id.
    Reply(Vec<u8>),
    /// An error reply's message.
    Error(String),
    /// Nothing usable before the wait's end.
    TimedOut,
}

impl UdpClient {
    /// A client that waits `retransmit_base * 2^n` before the n-th retransmission (at least 1 ms).
    pub fn new(retransmit_base: Duration) -> Self {
        UdpClient {
            retransmit_base: retransmit_base.max(Duration::from_millis(1)),
            bind: None,
            connections: HashMap::new(),
        }
    }

    /// Sends from `ip` to trackers of its family (others, and an unspecified `ip`, from any).
    #[must_use]
    pub fn bound_to(mut self, ip: Option<IpAddr>) -> Self {
        self.bind = ip.filter(|ip| !ip.is_unspecified());
        self
    }

    /// Announces `req` to the UDP tracker at `url` and returns its reply, by `deadline`.
    ///
    /// The request carries the event, the byte counts, `key`, `numwant` (capped at `i32::MAX`)
    /// and `port`; the tracker takes our address from the datagram. The reply's peers are 6-byte
    /// entries when we talk to the tracker over IPv4 and 18-byte ones over IPv6; seeders and
    /// leechers become `complete` and `incomplete`. `trackerid` and `min interval` do not exist
    /// in this protocol.
    ///
    /// # Errors
    /// [`TrackerError::UnsupportedScheme`] for anything but `udp://` (no I/O is done);
    /// [`TrackerError::Request`] when the URL has no host and port, the host does not resolve,
    /// the socket fails (including an ICMP "port unreachable", reported on a later read) or no
    /// answer comes by `deadline` or after the last retransmission; [`TrackerError::Failure`] for
    /// an error reply, with its message. Every error carries `url`, and every error but the first
    /// kind forgets the tracker's connection id.
    pub fn announce(
        &mut self,
        url: &str,
        req: &AnnounceRequest,
        deadline: Instant,
    ) -> Result<AnnounceResponse, TrackerError> {
        let mut body = Vec::with_capacity(82);
        body.extend_from_slice(&req.info_hash);
        body.extend_from_slice(&req.peer_id);
        body.extend_from_slice(&req.downloaded.to_be_bytes());
        body.extend_from_slice(&req.left.to_be_bytes());
        body.extend_from_slice(&req.uploaded.to_be_bytes());
        let event: u32 = match req.event {
            None => 0,
            Some(AnnounceEvent::Completed) => 1,
            Some(AnnounceEvent::Started) => 2,
            Some(AnnounceEvent::Stopped) => 3,
        };
        body.extend_from_slice(&event.to_be_bytes());
        // The IP address: 0 = the datagram's source.
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&req.key.to_be_bytes());
        let numwant = i32::try_from(req.numwant).unwrap_or(i32::MAX);
        body.extend_from_slice(&numwant.to_be_bytes());
        body.extend_from_slice(&req.port.to_be_bytes());

        let (reply, family) = self.exchange(url, ACTION_ANNOUNCE, &body, 12, deadline)?;
        Ok(parse_announce_reply(&reply, family).expect("exchange returns at least 12 bytes"))
    }

    /// Scrapes the UDP tracker at `url` for one torrent, by `deadline`.
    ///
    /// # Errors
    /// As [`UdpClient::announce`].
    pub fn scrape(
        &mut self,
        url: &str,
        info_hash: &[u8; 20],
        deadline: Instant,
    ) -> Result<ScrapeCounts, TrackerError> {
        let (reply, _) = self.exchange(url, ACTION_SCRAPE, info_hash, 12, deadline)?;
        Ok(parse_scrape_reply(&reply).expect("exchange returns at least 12 bytes"))
    }

    /// Whether a connection id for `url` is cached and still within its minute at `now`.
    pub fn has_connection(&self, url: &str, now: Instant) -> bool {
        self.connections
            .get(url)
            .is_some_and(|c| now < c.obtained + CONNECTION_ID_LIFETIME)
    }

    /// Sends `action` with `body` to `url` (connecting first unless a connection id is cached)
    /// and returns the reply after its action and transaction id (at least `min_reply` bytes),
    /// with the address family we talk to the tracker in.
    fn exchange(
        &mut self,
        url: &str,
        action: u32,
        body: &[u8],
        min_reply: usize,
        deadline: Instant,
    ) -> Result<(Vec<u8>, Family), TrackerError> {
        if !is_supported(url) {
            return Err(TrackerError::UnsupportedScheme {
                url: url.to_owned(),
            });
        }
        let now = Instant::now();
        self.connections
            .retain(|_, c| now < c.obtained + CONNECTION_ID_LIFETIME);
        let result = self.exchange_inner(url, action, body, min_reply, deadline);
        if result.is_err() {
            // A refused or silent tracker may have forgotten the id; start over next time.
            self.connections.remove(url);
        }
        result
    }

    fn exchange_inner(
        &mut self,
        url: &str,
        action: u32,
        body: &[u8],
        min_reply: usize,
        deadline: Instant,
    ) -> Result<(Vec<u8>, Family), TrackerError> {
        let request_error = |error: String| TrackerError::Request {
            url: url.to_owned(),
            error,
        };
        let mut buf = vec![0; MAX_DATAGRAM];
        let mut n = 0;
        // The request as last sent: (connection id, transaction id, bytes). A retransmission on
        // the same connection id reuses the transaction id, so a late answer still counts.
        let mut pending: Option<(u64, u32, Vec<u8>)> = None;
        loop {
            let now = Instant::now();
            if !self.has_connection(url, now) {
                self.connections.remove(url);
                let (socket, family) = open(url, self.bind).map_err(request_error)?;
                let id = self.connect(url, &socket, &mut buf, &mut n, deadline)?;
                self.connections.insert(
                    url.to_owned(),
                    Connection {
                        socket,
                        family,
                        id,
                        obtained: Instant::now(),
                    },
                );
            }
            let conn = self.connections.get(url).expect("inserted above");
            let (tid, datagram) = match pending.take() {
                Some((id, tid, datagram)) if id == conn.id => (tid, datagram),
                _ => {
                    let tid: u32 = rand::random();
                    let mut datagram = Vec::with_capacity(16 + body.len());
                    datagram.extend_from_slice(&conn.id.to_be_bytes());
                    datagram.extend_from_slice(&action.to_be_bytes());
                    datagram.extend_from_slice(&tid.to_be_bytes());
                    datagram.extend_from_slice(body);
                    (tid, datagram)
                }
            };
            let until = self.wait_end(n, deadline);
            conn.socket
                .send(&datagram)
                .map_err(|e| request_error(format!("sending: {e}")))?;
            match wait(&conn.socket, &mut buf, action, tid, min_reply, until) {
                Ok(Received::Reply(reply)) => return Ok((reply, conn.family)),
                Ok(Received::Error(message)) => {
                    return Err(TrackerError::Failure {
                        url: url.to_owned(),
                        reason: message,
                    });
                }
                Ok(Received::TimedOut) => {
                    pending = Some((conn.id, tid, datagram));
                    self.next_try(url, &mut n, deadline)?;
                }
                Err(e) => return Err(request_error(format!("receiving: {e}"))),
            }
        }
    }

    /// Obtains a connection id on `socket`, retransmitting as [`UdpClient::exchange`] does.
    fn connect(
        &self,
        url: &str,
        socket: &UdpSocket,
        buf: &mut [u8],
        n: &mut u32,
        deadline: Instant,
    ) -> Result<u64, TrackerError> {
        let request_error = |error: String| TrackerError::Request {
            url: url.to_owned(),
            error,
        };
        let tid: u32 = rand::random();
        let mut datagram = [0; 16];
        datagram[..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
        datagram[8..12].copy_from_slice(&ACTION_CONNECT.to_be_bytes());
        datagram[12..].copy_from_slice(&tid.to_be_bytes());
        loop {
            let until = self.wait_end(*n, deadline);
            socket
                .send(&datagram)
                .map_err(|e| request_error(format!("sending connect: {e}")))?;
            match wait(socket, buf, ACTION_CONNECT, tid, 8, until) {
                Ok(Received::Reply(reply)) => {
                    let id: [u8; 8] = reply[..8].try_into().expect("at least 8 bytes");
                    return Ok(u64::from_be_bytes(id));
                }
                Ok(Received::Error(message)) => {
                    return Err(TrackerError::Failure {
                        url: url.to_owned(),
                        reason: message,
                    });
                }
                Ok(Received::TimedOut) => self.next_try(url, n, deadline)?,
                Err(e) => return Err(request_error(format!("receiving connect reply: {e}"))),
            }
        }
    }

    /// When the wait after the n-th transmission ends: `base * 2^n` from now, or the deadline.
    fn wait_end(&self, n: u32, deadline: Instant) -> Instant {
        let wait = crate::backoff::doubling(
            self.retransmit_base,
            n.min(MAX_RETRANSMIT_EXPONENT),
            Duration::MAX,
        );
        Instant::now()
            .checked_add(wait)
            .map_or(deadline, |end| end.min(deadline))
    }

    /// After an unanswered transmission: counts it, or gives up at the deadline or after the last
    /// retransmission.
    fn next_try(&self, url: &str, n: &mut u32, deadline: Instant) -> Result<(), TrackerError> {
        if Instant::now() >= deadline || *n >= MAX_RETRANSMIT_EXPONENT {
            return Err(TrackerError::Request {
                url: url.to_owned(),
                error: format!("no answer after {} transmissions", *n + 1),
            });
        }
        *n += 1;
        debug!("tracker {url}: no answer; retransmission {n}");
        Ok(())
    }
}

/// Resolves the URL's host and opens a socket on an ephemeral port of the family of the first
/// address we can reach, connected to it (so the kernel drops datagrams from anyone else); from
/// `bind` when that is of the address's family.
fn open(url: &str, bind: Option<IpAddr>) -> Result<(UdpSocket, Family), String> {
    let (host, port) = host_port(url)?;
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?;
    let mut last_error = format!("{host} has no address");
    for addr in addrs {
        let (any, family): (IpAddr, _) = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED.into(), Family::V4),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED.into(), Family::V6),
        };
        let ip = bind
            .filter(|ip| ip.is_ipv4() == addr.is_ipv4())
            .unwrap_or(any);
        let local = SocketAddr::new(ip, 0);
        match UdpSocket::bind(local).and_then(|socket| socket.connect(addr).map(|()| socket)) {
            Ok(socket) => return Ok((socket, family)),
            Err(e) => last_error = format!("{addr}: {e}"),
        }
    }
    Err(last_error)
}

/// The host and port of a `udp://host:port[/path]` URL; an IPv6 host is in brackets.
fn host_port(url: &str) -> Result<(&str, u16), String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "unclosed [ in the host".to_owned())?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    let port = port.ok_or_else(|| "no port".to_owned())?;
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok((host, port)),
        _ => Err(format!("bad port {port:?}")),
    }
}

/// Reads datagrams until one echoes `tid` with `action` (and has at least `min_reply` bytes after
/// the 8-byte header) or with an error, or until `until`.
///
/// # Errors
/// A socket error other than a timeout, such as the refusal an ICMP "port unreachable" leaves.
fn wait(
    socket: &UdpSocket,
    buf: &mut [u8],
    action: u32,
    tid: u32,
    min_reply: usize,
    until: Instant,
) -> std::io::Result<Received> {
    loop {
        let now = Instant::now();
        if now >= until {
            return Ok(Received::TimedOut);
        }
        socket.set_read_timeout(Some(until - now))?;
        let len = match socket.recv(buf) {
            Ok(len) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(received) = parse_datagram(&buf[..len], action, tid, min_reply) {
            return Ok(received);
        }
    }
}

/// What a datagram from the tracker says to our request with `action` and `tid`: a reply (at
/// least `min_reply` bytes after the 8-byte header) or an error reply, or `None` when it is to be
/// ignored (too short, another transaction, another action). Pure.
pub fn parse_datagram(
    datagram: &[u8],
    action: u32,
    tid: u32,
    min_reply: usize,
) -> Option<Received> {
    let (header, payload) = datagram.split_first_chunk::<8>()?;
    let got_action = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let got_tid = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if got_tid != tid {
        return None;
    }
    if got_action == action && payload.len() >= min_reply {
        return Some(Received::Reply(payload.to_vec()));
    }
    if got_action == ACTION_ERROR {
        let message = String::from_utf8_lossy(payload);
        let message = message.trim_end_matches(['\0', ' ', '\n', '\r']);
        return Some(Received::Error(if message.is_empty() {
            "error reply without a message".to_owned()
        } else {
            message.to_owned()
        }));
    }
    None
}

/// An announce reply after its action and transaction id: interval, leechers, seeders, then
/// compact peers of `family` (a trailing partial entry and undialable peers are skipped). `None`
/// when shorter than the 12 bytes of counts. Pure.
pub fn parse_announce_reply(payload: &[u8], family: Family) -> Option<AnnounceResponse> {
    let (counts, rest) = payload.split_first_chunk::<12>()?;
    let word =
        |i: usize| u32::from_be_bytes([counts[i], counts[i + 1], counts[i + 2], counts[i + 3]]);
    let mut peers: Vec<SocketAddr> = compact::whole_peers(family, rest).collect();
    retain_dialable(&mut peers);
    Some(AnnounceResponse {
        interval: Duration::from_secs(u64::from(word(0))),
        min_interval: None,
        tracker_id: None,
        complete: Some(word(8)),
        incomplete: Some(word(4)),
        warning: None,
        peers,
        requires_encryption: Vec::new(),
    })
}

/// A scrape reply for one torrent after its action and transaction id: seeders, completed,
/// leechers. `None` when shorter than 12 bytes. Pure.
pub fn parse_scrape_reply(payload: &[u8]) -> Option<ScrapeCounts> {
    let (counts, _) = payload.split_first_chunk::<12>()?;
    let word =
        |i: usize| u32::from_be_bytes([counts[i], counts[i + 1], counts[i + 2], counts[i + 3]]);
    Some(ScrapeCounts {
        seeders: word(0),
        completed: Some(word(4)),
        leechers: word(8),
    })
}

/// A scripted UDP tracker on loopback for the tests of this module and of the announcer.
#[cfg(test)]
pub(crate) mod fake {
    use std::net::UdpSocket;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::{self, JoinHandle};
    use std::time::{Duration, Instant};

    use crossbeam_channel::{Receiver, Sender};

    /// How long a test waits for the fake to see a datagram, and the longest the fake lives.
    pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

    /// Decides the answers to one datagram (none: it is dropped).
    pub(crate) type Script = Box<dyn FnMut(&[u8]) -> Vec<Vec<u8>> + Send>;

    /// A UDP server thread that answers each datagram as its script says, and hands every datagram
    /// it receives to the test. Stopped and joined on `Drop`.
    pub(crate) struct FakeUdpTracker {
        /// `udp://ADDR/announce`.
        pub(crate) url: String,
        pub(crate) datagrams: Receiver<Vec<u8>>,
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    }

    impl FakeUdpTracker {
        /// Binds `bind` (`127.0.0.1:0`, `[::1]:0`) and starts the thread.
        pub(crate) fn serve(bind: &str, script: Script) -> std::io::Result<FakeUdpTracker> {
            let socket = UdpSocket::bind(bind)?;
            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
            let addr = socket.local_addr()?;
            let (tx, datagrams) = crossbeam_channel::unbounded();
            let stop = Arc::new(AtomicBool::new(false));
            let stop_flag = Arc::clone(&stop);
            let handle = thread::Builder::new()
                .name("fake udp tracker".to_owned())
                .spawn(move || run(&socket, script, &tx, &stop_flag))?;
            Ok(FakeUdpTracker {
                url: format!("udp://{addr}/announce"),
                datagrams,
                stop,
                handle: Some(handle),
            })
        }

        /// Waits (bounded) for the next datagram the fake received.
        pub(crate) fn next_datagram(&self) -> Vec<u8> {
            self.datagrams
                .recv_timeout(PATIENCE)
                .expect("the fake UDP tracker got no datagram in time")
        }

        /// Every datagram received so far, without waiting.
        pub(crate) fn received(&self) -> Vec<Vec<u8>> {
            self.datagrams.try_iter().collect()
        }
    }

    impl Drop for FakeUdpTracker {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(handle) = self.handle.take() {
                let joined = handle.join();
                if !thread::panicking() {
                    joined.expect("the fake UDP tracker panicked");
                }
            }
        }
    }

    fn run(socket: &UdpSocket, mut script: Script, tx: &Sender<Vec<u8>>, stop: &AtomicBool) {
        let end = Instant::now() + PATIENCE * 3;
        let mut buf = [0; 2048];
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            let Ok((len, from)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let datagram = buf[..len].to_vec();
            let replies = script(&datagram);
            // Handed over before answering: once the client has the answer, the test sees the
            // datagram.
            let _ = tx.send(datagram);
            for reply in replies {
                let _ = socket.send_to(&reply, from);
            }
        }
    }

    /// The action of a request (bytes 8..12).
    pub(crate) fn action(datagram: &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(datagram.get(8..12)?.try_into().ok()?))
    }

    /// The transaction id of a request (bytes 12..16).
    pub(crate) fn tid(datagram: &[u8]) -> [u8; 4] {
        datagram
            .get(12..16)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_default()
    }

    /// `action`, the request's transaction id, then `payload`.
    pub(crate) fn reply(action: u32, request: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut out = action.to_be_bytes().to_vec();
        out.extend_from_slice(&tid(request));
        out.extend_from_slice(payload);
        out
    }

    /// A well-behaved tracker: connection id `0x0102_0304_0506_0708`, announce replies with
    /// interval 1800, 2 leechers, 4 seeders and `peers` (compact, as given), scrape replies 4
    /// seeders, 9 completed, 2 leechers. The first `drop_first` datagrams go unanswered.
    pub(crate) fn well_behaved(drop_first: usize, peers: Vec<u8>) -> Script {
        let mut seen = 0;
        Box::new(move |request| {
            seen += 1;
            if seen <= drop_first {
                return vec![];
            }
            match action(request) {
                Some(0) => vec![reply(0, request, &0x0102_0304_0506_0708u64.to_be_bytes())],
                Some(1) => {
                    let mut payload = vec![0, 0, 0x07, 0x08, 0, 0, 0, 2, 0, 0, 0, 4];
                    payload.extend_from_slice(&peers);
                    vec![reply(1, request, &payload)]
                }
                Some(2) => vec![reply(2, request, &[0, 0, 0, 4, 0, 0, 0, 9, 0, 0, 0, 2])],
                _ => vec![],
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeUdpTracker, PATIENCE, action, reply, well_behaved};
    use super::*;
    use crate::peer::mse::Encryption;

    const CONNECT: [u8; 12] = [0, 0, 0x04, 0x17, 0x27, 0x10, 0x19, 0x80, 0, 0, 0, 0];
    const CONNECTION_ID: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    fn request() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: [0xAB; 20],
            peer_id: *b"-BT0001-012345678901",
            port: 51413,
            uploaded: 10,
            downloaded: 20,
            left: 30,
            event: Some(AnnounceEvent::Started),
            numwant: 80,
            tracker_id: None,
            key: 0x1234_5678,
            addrs: crate::tracker::OurAddrs::default(),
            encryption: Encryption::Preferred,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn serve(script: super::fake::Script) -> FakeUdpTracker {
        FakeUdpTracker::serve("127.0.0.1:0", script).unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + PATIENCE
    }

    /// The request without its transaction id (bytes 12..16), which is random.
    fn without_tid(datagram: &[u8]) -> Vec<u8> {
        assert!(datagram.len() >= 16, "{datagram:?}");
        [&datagram[..12], &datagram[16..]].concat()
    }

    #[test]
    fn connects_then_announces_with_the_bytes_of_bep_15() {
        let tracker = serve(Box::new(|request| match action(request) {
            Some(0) => vec![reply(0, request, &CONNECTION_ID)],
            Some(1) => vec![reply(
                1,
                request,
                &[
                    0, 0, 0x07, 0x08, // interval 1800
                    0, 0, 0, 3, // leechers
                    0, 0, 0, 5, // seeders
                    127, 0, 0, 2, 0x1A, 0xE1, // 127.0.0.2:6881
                    10, 0, 0, 9, 0xC8, 0xD5, // 10.0.0.9:51413
                ],
            )],
            _ => vec![],
        }));
        let mut client = UdpClient::new(Duration::from_secs(5));
        let got = client.announce(&tracker.url, &request(), soon()).unwrap();
        assert_eq!(
            got,
            AnnounceResponse {
                interval: Duration::from_secs(1800),
                min_interval: None,
                tracker_id: None,
                complete: Some(5),
                incomplete: Some(3),
                warning: None,
                peers: vec![addr("127.0.0.2:6881"), addr("10.0.0.9:51413")],
                requires_encryption: Vec::new(),
            }
        );

        let connect = tracker.next_datagram();
        assert_eq!(connect.len(), 16);
        assert_eq!(without_tid(&connect), CONNECT);
        let announce = tracker.next_datagram();
        assert_eq!(announce.len(), 98);
        let mut expected: Vec<u8> = vec![1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1];
        expected.extend_from_slice(&[0xAB; 20]);
        expected.extend_from_slice(b"-BT0001-012345678901");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 20]); // downloaded
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 30]); // left
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 10]); // uploaded
        expected.extend_from_slice(&[0, 0, 0, 2]); // started
        expected.extend_from_slice(&[0, 0, 0, 0]); // ip: the sender's
        expected.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]); // key
        expected.extend_from_slice(&[0, 0, 0, 80]); // numwant
        expected.extend_from_slice(&[0xC8, 0xD5]); // port 51413
        assert_eq!(without_tid(&announce), expected);
        assert_ne!(
            connect[12..16],
            announce[12..16],
            "each request gets its own transaction id"
        );
    }

    #[test]
    fn encodes_each_event_and_an_oversized_numwant() {
        let tracker = serve(well_behaved(0, vec![]));
        let mut client = UdpClient::new(Duration::from_secs(5));
        let mut req = request();
        req.numwant = u32::MAX;
        for event in [
            None,
            Some(AnnounceEvent::Completed),
            Some(AnnounceEvent::Started),
            Some(AnnounceEvent::Stopped),
        ] {
            req.event = event;
            client.announce(&tracker.url, &req, soon()).unwrap();
        }
        let announces: Vec<Vec<u8>> = (0..5)
            .map(|_| tracker.next_datagram())
            .filter(|d| action(d) == Some(1))
            .collect();
        assert_eq!(announces.len(), 4);
        for (datagram, code) in announces.iter().zip([0u8, 1, 2, 3]) {
            assert_eq!(datagram[80..84], [0, 0, 0, code]);
            assert_eq!(datagram[92..96], [0x7F, 0xFF, 0xFF, 0xFF]);
        }
    }

    #[test]
    fn reuses_the_connection_id_within_its_minute() {
        let tracker = serve(well_behaved(0, vec![]));
        let mut client = UdpClient::new(Duration::from_secs(5));
        client.announce(&tracker.url, &request(), soon()).unwrap();
        client.announce(&tracker.url, &request(), soon()).unwrap();
        client.scrape(&tracker.url, &[0xAB; 20], soon()).unwrap();
        assert!(client.has_connection(&tracker.url, Instant::now()));
        let actions: Vec<_> = (0..4).map(|_| action(&tracker.next_datagram())).collect();
        assert_eq!(actions, [Some(0), Some(1), Some(1), Some(2)]);
        let more = tracker.received();
        assert!(more.is_empty(), "unexpected datagrams {more:?}");
    }

    #[test]
    fn connects_again_once_the_minute_is_over() {
        let tracker = serve(well_behaved(0, vec![]));
        let mut client = UdpClient::new(Duration::from_secs(5));
        client.announce(&tracker.url, &request(), soon()).unwrap();
        assert!(!client.has_connection(&tracker.url, Instant::now() + CONNECTION_ID_LIFETIME));
        // Age the cached id instead of waiting a minute.
        for connection in client.connections.values_mut() {
            connection.obtained = Instant::now().checked_sub(CONNECTION_ID_LIFETIME).unwrap();
        }
        client.announce(&tracker.url, &request(), soon()).unwrap();
        let actions: Vec<_> = (0..4).map(|_| action(&tracker.next_datagram())).collect();
        assert_eq!(actions, [Some(0), Some(1), Some(0), Some(1)]);
    }

    #[test]
    fn retransmits_after_the_base_doubling_until_the_tracker_answers() {
        // Drops the first connect twice and then the first announce once.
        let mut inner = well_behaved(0, vec![127, 0, 0, 7, 0, 80]);
        let mut seen = 0;
        let tracker = serve(Box::new(move |request| {
            seen += 1;
            if matches!(seen, 1 | 2 | 4) {
                vec![]
            } else {
                inner(request)
            }
        }));
        let base = Duration::from_millis(50);
        let mut client = UdpClient::new(base);
        let start = Instant::now();
        let got = client.announce(&tracker.url, &request(), soon()).unwrap();
        let took = start.elapsed();
        assert_eq!(got.peers, vec![addr("127.0.0.7:80")]);
        // Waits of 50, 100 (connect) and 200 ms (announce) went unanswered.
        assert!(took >= base * 7, "took {took:?}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        let datagrams: Vec<_> = (0..5).map(|_| tracker.next_datagram()).collect();
        let actions: Vec<_> = datagrams.iter().map(|d| action(d)).collect();
        assert_eq!(actions, [Some(0), Some(0), Some(0), Some(1), Some(1)]);
        assert_eq!(
            datagrams[0], datagrams[2],
            "a retransmission is the same datagram"
        );
        assert_eq!(datagrams[3], datagrams[4]);
    }

    #[test]
    fn gives_up_on_a_silent_tracker_at_the_deadline() {
        let tracker = serve(Box::new(|_| vec![]));
        let mut client = UdpClient::new(Duration::from_millis(50));
        let start = Instant::now();
        let limit = Duration::from_millis(600);
        let err = client
            .announce(&tracker.url, &request(), start + limit)
            .unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(&err, TrackerError::Request { url, error } if *url == tracker.url && error.contains("no answer")),
            "{err:?}"
        );
        assert!(took >= limit, "gave up after {took:?}");
        assert!(took < limit + Duration::from_millis(500), "took {took:?}");
        // Sent at 0, 50, 150 and 350 ms; the next wait (400 ms) was cut by the deadline.
        let connects = tracker.received();
        assert_eq!(connects.len(), 4, "{connects:?}");
        assert!(!client.has_connection(&tracker.url, Instant::now()));
    }

    #[test]
    fn a_bound_client_sends_from_its_listen_address() {
        let tracker = UdpSocket::bind("127.0.0.1:0").unwrap();
        tracker
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let url = format!("udp://{}", tracker.local_addr().unwrap());
        let ip: IpAddr = "127.0.0.7".parse().unwrap();
        let client = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_millis(300);
            UdpClient::new(Duration::from_secs(5))
                .bound_to(Some(ip))
                .announce(&url, &request(), deadline)
        });
        let mut buf = [0; 64];
        let (_, from) = tracker.recv_from(&mut buf).unwrap();
        assert_eq!(from.ip(), ip);
        assert!(client.join().unwrap().is_err(), "nobody answered");
        // An unspecified address binds nothing in particular.
        let any =
            UdpClient::new(Duration::from_secs(1)).bound_to(Some(Ipv4Addr::UNSPECIFIED.into()));
        assert_eq!(any.bind, None);
    }

    #[test]
    fn gives_up_after_the_ninth_transmission() {
        let tracker = serve(Box::new(|_| vec![]));
        let mut client = UdpClient::new(Duration::from_millis(1));
        let start = Instant::now();
        let err = client
            .announce(&tracker.url, &request(), start + PATIENCE)
            .unwrap_err();
        // 1 + 2 + ... + 256 ms.
        assert!(start.elapsed() >= Duration::from_millis(511));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("after 9 transmissions"), "{err}");
        thread_sleep_briefly();
        assert_eq!(tracker.received().len(), 9);
    }

    fn thread_sleep_briefly() {
        std::thread::sleep(Duration::from_millis(50));
    }

    #[test]
    fn reports_an_error_reply_with_its_message_and_forgets_the_connection() {
        let tracker = serve(Box::new(|request| match action(request) {
            Some(0) => vec![reply(0, request, &CONNECTION_ID)],
            Some(1) => vec![reply(3, request, b"torrent not registered\0")],
            _ => vec![],
        }));
        let mut client = UdpClient::new(Duration::from_secs(5));
        let err = client
            .announce(&tracker.url, &request(), soon())
            .unwrap_err();
        match &err {
            TrackerError::Failure { url, reason } => {
                assert_eq!(*url, tracker.url);
                assert_eq!(reason, "torrent not registered");
            }
            other => panic!("expected Failure, got {other:?}"),
        }
        assert!(!client.has_connection(&tracker.url, Instant::now()));
        // An error reply to the connect is reported the same way.
        let refusing = serve(Box::new(|request| vec![reply(3, request, b"go away")]));
        let err = client.scrape(&refusing.url, &[1; 20], soon()).unwrap_err();
        assert!(
            matches!(&err, TrackerError::Failure { reason, .. } if reason == "go away"),
            "{err:?}"
        );
    }

    #[test]
    fn ignores_mismatched_short_and_unexpected_datagrams_while_waiting() {
        let tracker = serve(Box::new(|request| {
            // Decoys carry other values than the good reply, so taking one would show.
            let (good, decoy) = match action(request) {
                Some(0) => (
                    reply(0, request, &CONNECTION_ID),
                    reply(0, request, &[0xDE, 0xAD, 0, 0, 0, 0, 0, 0]),
                ),
                _ => (
                    reply(
                        1,
                        request,
                        &[0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 0, 9],
                    ),
                    reply(
                        1,
                        request,
                        &[0, 0, 0, 99, 0, 0, 0, 0, 0, 0, 0, 1, 6, 6, 6, 6, 0, 6],
                    ),
                ),
            };
            let short = if action(request) == Some(0) {
                8 + 7
            } else {
                8 + 11
            };
            let mut wrong_tid = decoy.clone();
            wrong_tid[4] ^= 0xFF;
            let mut wrong_action = decoy.clone();
            wrong_action[3] = 2; // a scrape reply
            let mut error_wrong_tid = reply(3, request, b"not you");
            error_wrong_tid[7] ^= 0xFF;
            vec![
                wrong_tid,
                decoy[..7].to_vec(),
                // One byte short of the least a reply to this action needs.
                decoy[..short].to_vec(),
                wrong_action,
                error_wrong_tid,
                vec![],
                good,
            ]
        }));
        let mut client = UdpClient::new(Duration::from_secs(5));
        let start = Instant::now();
        let got = client.announce(&tracker.url, &request(), soon()).unwrap();
        assert_eq!(got.interval, Duration::from_secs(60));
        assert_eq!(got.peers, vec![addr("1.2.3.4:9")]);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the good reply came in the first wait"
        );
        let datagrams = tracker.received();
        assert_eq!(datagrams.len(), 2, "no retransmission was needed");
        assert_eq!(
            datagrams[1][..8],
            CONNECTION_ID,
            "the decoy connection id was taken"
        );
    }

    #[test]
    fn reads_ipv6_peers_when_talking_over_ipv6() {
        let peers = vec![
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1A,
            0xE1, // [2001:db8::1]:6881
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, // port 0: skipped
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0xc3,
            0x50, // [fe80::abcd]:50000
            1, 2, 3, 4, 5, 6, // a trailing partial entry
        ];
        let tracker = match FakeUdpTracker::serve("[::1]:0", well_behaved(0, peers)) {
            Ok(tracker) => tracker,
            Err(e) => {
                let has_loopback6 = std::fs::read_to_string("/proc/net/if_inet6")
                    .is_ok_and(|s| s.contains("00000000000000000000000000000001"));
                assert!(
                    !has_loopback6,
                    "::1 is configured on this machine but cannot be bound: {e}"
                );
                eprintln!("skipped: this machine has no ::1 ({e})");
                return;
            }
        };
        assert!(tracker.url.starts_with("udp://[::1]:"), "{}", tracker.url);
        let mut client = UdpClient::new(Duration::from_secs(5));
        let got = client.announce(&tracker.url, &request(), soon()).unwrap();
        assert_eq!(
            got.peers,
            vec![addr("[2001:db8::1]:6881"), addr("[fe80::abcd]:50000")]
        );
        assert_eq!((got.complete, got.incomplete), (Some(4), Some(2)));
    }

    #[test]
    fn reads_ipv4_peers_over_ipv4_skipping_unusable_ones() {
        let tracker = serve(well_behaved(
            0,
            vec![
                1, 2, 3, 4, 0x1A, 0xE1, // 1.2.3.4:6881
                0, 0, 0, 0, 0x1A, 0xE1, // unspecified: skipped
                1, 2, 3, 4, 0x1A, 0xE1, // a repeat: skipped
                5, 6, 7, 8, 0, 0, // port 0: skipped
                9, 9, 9, // partial
            ],
        ));
        let mut client = UdpClient::new(Duration::from_secs(5));
        let got = client.announce(&tracker.url, &request(), soon()).unwrap();
        assert_eq!(got.peers, vec![addr("1.2.3.4:6881")]);
    }

    #[test]
    fn scrapes_with_the_bytes_of_bep_15() {
        let tracker = serve(Box::new(|request| match action(request) {
            Some(0) => vec![reply(0, request, &CONNECTION_ID)],
            Some(2) => vec![reply(
                2,
                request,
                &[
                    0, 0, 0x01, 0x00, // seeders 256
                    0, 0, 0, 42, // completed
                    0, 0, 0, 7, // leechers
                ],
            )],
            _ => vec![],
        }));
        let mut client = UdpClient::new(Duration::from_secs(5));
        let info_hash =
            *b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13";
        let got = client.scrape(&tracker.url, &info_hash, soon()).unwrap();
        assert_eq!(
            got,
            ScrapeCounts {
                seeders: 256,
                leechers: 7,
                completed: Some(42),
            }
        );
        assert_eq!(without_tid(&tracker.next_datagram()), CONNECT);
        let scrape = tracker.next_datagram();
        assert_eq!(
            without_tid(&scrape),
            [
                1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 2, // connection id, action 2
                0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
            ]
        );
    }

    #[test]
    fn a_closed_port_fails_at_once() {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("udp://127.0.0.1:{port}/announce");
        let mut client = UdpClient::new(Duration::from_secs(5));
        let start = Instant::now();
        let err = client.announce(&url, &request(), soon()).unwrap_err();
        assert!(
            matches!(&err, TrackerError::Request { url: u, .. } if *u == url),
            "{err:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "ICMP refusal not seen"
        );
    }

    #[test]
    fn refuses_other_schemes_and_urls_without_host_or_port() {
        let mut client = UdpClient::new(Duration::from_secs(5));
        let err = client
            .announce("http://t/announce", &request(), soon())
            .unwrap_err();
        assert!(
            matches!(err, TrackerError::UnsupportedScheme { .. }),
            "{err:?}"
        );
        for url in [
            "udp://tracker.example/announce",
            "udp://:80",
            "udp://[::1/a",
            "udp://h:0",
            "udp://h:99999",
        ] {
            let err = client.announce(url, &request(), soon()).unwrap_err();
            assert!(
                matches!(err, TrackerError::Request { .. }),
                "{url}: {err:?}"
            );
        }
        assert!(is_supported("UDP://t:1") && !is_supported("udpx://t:1") && !is_supported("t:1"));
    }

    #[test]
    fn splits_host_and_port() {
        assert_eq!(
            host_port("udp://t.example:6969/announce"),
            Ok(("t.example", 6969))
        );
        assert_eq!(host_port("udp://[2001:db8::1]:80"), Ok(("2001:db8::1", 80)));
        assert_eq!(host_port("udp://user@10.0.0.1:1?x=/y"), Ok(("10.0.0.1", 1)));
        assert!(host_port("udp://t.example").is_err());
    }

    #[test]
    fn reads_datagrams_without_io_and_never_trusts_their_length() {
        let tid = 0x0102_0304;
        let datagram = |action: u32, tid: u32, payload: &[u8]| {
            let mut d = action.to_be_bytes().to_vec();
            d.extend_from_slice(&u32::to_be_bytes(tid));
            d.extend_from_slice(payload);
            d
        };
        let mut reply = [0, 0, 7, 8, 0, 0, 0, 2, 0, 0, 0, 9].to_vec();
        reply.extend_from_slice(&[10, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0]);
        let got = parse_datagram(&datagram(1, tid, &reply), 1, tid, 12);
        assert_eq!(got, Some(Received::Reply(reply.clone())));
        let announce = parse_announce_reply(&reply, Family::V4).unwrap();
        assert_eq!(announce.interval, Duration::from_secs(0x708));
        assert_eq!((announce.incomplete, announce.complete), (Some(2), Some(9)));
        assert_eq!(announce.peers, vec![addr("10.0.0.1:6881")]);
        for cut in 0..12 {
            assert_eq!(parse_announce_reply(&reply[..cut], Family::V6), None);
            assert_eq!(parse_scrape_reply(&reply[..cut]), None);
            assert_eq!(
                parse_datagram(&datagram(1, tid, &reply[..cut]), 1, tid, 12),
                None
            );
        }
        assert_eq!(
            parse_datagram(&datagram(1, tid, &reply)[..7], 1, tid, 0),
            None
        );
        assert_eq!(
            parse_datagram(&datagram(1, tid + 1, &reply), 1, tid, 12),
            None
        );
        assert_eq!(parse_datagram(&datagram(2, tid, &reply), 1, tid, 12), None);
        assert_eq!(
            parse_datagram(&datagram(3, tid, b"\0\0"), 1, tid, 12),
            Some(Received::Error("error reply without a message".into()))
        );
    }
}
