//! Opening a peer connection, the one way both the torrent session and the magnet metadata
//! fetch do it: the byte stream every connection runs on ([`PeerStream`]: plain TCP, or TCP
//! under message stream encryption), dialling (bind, timeout), the encryption handshake as
//! `[network] encryption` says (with the retry the other way that libtorrent does when a peer
//! refuses the first), the BitTorrent handshake, and on the accepting side telling an MSE
//! handshake from a plaintext one by its first bytes ([`accept`]).
//!
//! Nothing above this module looks behind [`PeerStream`]: connections (`connection.rs`) read,
//! write, set timeouts and socket options, and shut it down through it; the coordinator ends
//! one through a [`StreamHandle`]. Only this module reaches the TCP socket underneath.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use log::debug;

use super::PeerError;
use super::mse::{self, CryptoStream, Encryption, Method, MseError};
use crate::wire::Handshake;
use crate::wire::handshake::HANDSHAKE_LEN;

/// How long the handshakes of one connection (encryption and BitTorrent) may take in all.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection we sent nothing on for this long gets a keep-alive.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(120);
/// A peer silent this long (not even keep-alives) is gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(240);

/// The byte stream of one peer connection.
pub enum PeerStream {
    Plain(TcpStream),
    /// After an MSE handshake: RC4 for the whole connection, or plaintext after an encrypted
    /// handshake ("header only"); either way reads and writes are plaintext here.
    Encrypted(Box<CryptoStream<TcpStream>>),
}

impl PeerStream {
    /// The TCP socket underneath (this module alone looks at it).
    fn socket(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(s) => s,
            PeerStream::Encrypted(s) => s.get_ref(),
        }
    }

    /// The negotiated encryption, `None` for a plaintext handshake.
    pub fn encryption(&self) -> Option<Method> {
        match self {
            PeerStream::Plain(_) => None,
            PeerStream::Encrypted(s) => Some(s.method()),
        }
    }

    /// Whether the payload travels encrypted (RC4 for the whole connection).
    pub fn is_rc4(&self) -> bool {
        self.encryption() == Some(Method::Rc4)
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket().set_read_timeout(timeout)
    }

    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        self.socket().read_timeout()
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket().set_write_timeout(timeout)
    }

    pub fn shutdown(&self) {
        let _ = self.socket().shutdown(Shutdown::Both);
    }

    /// Sends small writes at once (no Nagle delay); best effort.
    pub fn set_nodelay(&self) {
        let _ = self.socket().set_nodelay(true);
    }

    /// Asks for kernel buffers of `bytes` each way (the kernel caps them at its own limits) and
    /// no Nagle delay; best effort.
    pub fn tune(&self, bytes: usize) {
        let sock = socket2::SockRef::from(self.socket());
        let _ = sock.set_recv_buffer_size(bytes);
        let _ = sock.set_send_buffer_size(bytes);
        self.set_nodelay();
    }

    /// A handle another thread keeps to end this connection.
    ///
    /// # Errors
    /// When the socket cannot be duplicated (out of file descriptors).
    pub fn handle(&self) -> io::Result<StreamHandle> {
        self.socket().try_clone().map(StreamHandle)
    }
}

/// A handle on a connection's stream that another thread (the coordinator) keeps to end it:
/// [`StreamHandle::close`] unblocks the connection's thread in a read or a write.
#[derive(Debug)]
pub struct StreamHandle(TcpStream);

impl StreamHandle {
    /// Shuts the connection down both ways; its thread sees it end.
    pub fn close(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }

    /// Our end's address.
    #[must_use]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.0.local_addr().ok()
    }
}

impl Read for PeerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(s) => s.read(buf),
            PeerStream::Encrypted(s) => s.read(buf),
        }
    }
}

impl Write for PeerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(s) => s.write(buf),
            PeerStream::Encrypted(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            PeerStream::Plain(s) => s.flush(),
            PeerStream::Encrypted(s) => s.flush(),
        }
    }
}

/// The process's encryption mode, shared by the listener and every dialling thread; a reload
/// (SIGHUP, RPC) changes it for connections opened afterwards. The default is `preferred`.
#[derive(Debug, Default)]
pub struct EncryptionMode(AtomicU8);

impl EncryptionMode {
    pub fn new(mode: Encryption) -> Self {
        let this = Self::default();
        this.set(mode);
        this
    }

    pub fn get(&self) -> Encryption {
        match self.0.load(Ordering::Relaxed) {
            1 => Encryption::Tolerated,
            2 => Encryption::Required,
            _ => Encryption::Preferred,
        }
    }

    pub fn set(&self, mode: Encryption) {
        let n = match mode {
            Encryption::Preferred => 0,
            Encryption::Tolerated => 1,
            Encryption::Required => 2,
        };
        self.0.store(n, Ordering::Relaxed);
    }
}

/// A socket for dialling `addr`, bound to `bind` when given (nothing here blocks).
pub fn open_socket(addr: SocketAddr, bind: Option<IpAddr>) -> io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if let Some(ip) = bind.filter(|ip| !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    Ok(socket)
}

/// What dialling a peer needs besides the address.
pub struct Dial<'a> {
    pub bind: Option<IpAddr>,
    pub connect_timeout: Duration,
    /// Our BitTorrent handshake.
    pub ours: &'a Handshake,
    pub mode: Encryption,
    /// Checked before a second attempt: the caller is stopping, do not dial again.
    pub stopping: &'a dyn Fn() -> bool,
}

/// Connects `socket` (from [`open_socket`], so the caller may keep a clone that aborts the
/// connect) to `addr`, runs the handshakes and returns the stream and the peer's handshake,
/// whose info hash matched ours. A first attempt the peer refuses (closed, reset, no MSE
/// answer) is retried once on a new connection the other way, unless the mode is `required`:
/// encrypted first in `preferred`, plaintext first in `tolerated`.
///
/// # Errors
/// The first attempt's error when no retry is allowed, else the second's.
pub fn dial(
    socket: socket2::Socket,
    addr: SocketAddr,
    dial: &Dial<'_>,
) -> Result<(PeerStream, Handshake), PeerError> {
    let encrypt_first = dial.mode != Encryption::Tolerated;
    let first = attempt(socket, addr, dial, encrypt_first);
    match first {
        Err(e) if dial.mode != Encryption::Required && refused(&e) && !(dial.stopping)() => {
            debug!(
                "peer {addr}: {} handshake refused ({e}); trying {}",
                if encrypt_first {
                    "encrypted"
                } else {
                    "plaintext"
                },
                if encrypt_first {
                    "plaintext"
                } else {
                    "encrypted"
                },
            );
            let socket = open_socket(addr, dial.bind).map_err(PeerError::Connect)?;
            attempt(socket, addr, dial, !encrypt_first)
        }
        Err(e) if dial.mode == Encryption::Required && refused(&e) => {
            debug!("peer {addr}: {e}; encryption is required, so no plaintext retry");
            Err(e)
        }
        other => other,
    }
}

/// Whether an attempt failed the way a peer that does not want that kind of handshake answers:
/// it closed, reset, or never answered the encryption handshake. A failed connect is not: the
/// peer is not there.
fn refused(e: &PeerError) -> bool {
    match e {
        PeerError::Encryption(MseError::Closed | MseError::NoSync(_)) => true,
        PeerError::Encryption(MseError::Io(e)) | PeerError::Read(e) | PeerError::Write(e) => {
            matches!(
                e.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
                    | ErrorKind::TimedOut
                    | ErrorKind::WouldBlock
            )
        }
        PeerError::Closed => true,
        _ => false,
    }
}

fn attempt(
    socket: socket2::Socket,
    addr: SocketAddr,
    dial: &Dial<'_>,
    encrypted: bool,
) -> Result<(PeerStream, Handshake), PeerError> {
    socket
        .connect_timeout(&addr.into(), dial.connect_timeout)
        .map_err(PeerError::Connect)?;
    let tcp = TcpStream::from(socket);
    tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(PeerError::Connect)?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let ours = dial.ours.encode();
    let mut stream = if encrypted {
        let crypto = mse::initiate(
            Deadline::new(tcp, deadline),
            &dial.ours.info_hash,
            dial.mode.provide(),
            &ours,
        )?;
        PeerStream::Encrypted(Box::new(crypto.map_inner(Deadline::into_inner)))
    } else {
        let mut tcp = tcp;
        tcp.write_all(&ours).map_err(PeerError::Write)?;
        PeerStream::Plain(tcp)
    };
    let theirs = read_handshake(&mut stream, &[], deadline)?;
    if theirs.info_hash != dial.ours.info_hash {
        return Err(PeerError::WrongInfoHash);
    }
    Ok((stream, theirs))
}

/// Reads the rest of a 68-byte handshake whose first bytes are `prefix`, by `deadline`: a peer
/// that trickles a byte at a time must not hold the thread (and one of the listener's handshake
/// slots) for long. The stream's read timeout is left as it was.
///
/// # Errors
/// `Read` on socket errors and timeouts, `Handshake` when the bytes are not a handshake.
pub fn read_handshake(
    stream: &mut PeerStream,
    prefix: &[u8],
    deadline: Instant,
) -> Result<Handshake, PeerError> {
    let before = stream.read_timeout().map_err(PeerError::Read)?;
    let mut buf = [0u8; HANDSHAKE_LEN];
    buf[..prefix.len()].copy_from_slice(prefix);
    read_by(stream, &mut buf[prefix.len()..], deadline)?;
    stream.set_read_timeout(before).map_err(PeerError::Read)?;
    Handshake::decode(&buf).map_err(PeerError::Handshake)
}

/// Fills `buf` from `stream` by `deadline`.
fn read_by(stream: &mut PeerStream, buf: &mut [u8], deadline: Instant) -> Result<(), PeerError> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PeerError::Read(ErrorKind::TimedOut.into()));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(PeerError::Read)?;
        match stream.read(&mut buf[got..]) {
            Ok(0) => return Err(PeerError::Read(ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A read that timed out says WouldBlock on Unix: the handshake timed out either way.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(PeerError::Read(ErrorKind::TimedOut.into()));
            }
            Err(e) => return Err(PeerError::Read(e)),
        }
    }
    Ok(())
}

/// The accepting side: reads the first bytes of `tcp`, runs the MSE handshake when they are not
/// a plaintext BitTorrent handshake (`find_torrent` maps `HASH("req2", info_hash)` to a torrent
/// btd serves), and reads the peer's handshake. Plaintext is refused in `required` mode.
///
/// # Errors
/// `PlaintextRefused`, `Encryption` for a failed MSE handshake, `Read`/`Handshake` as
/// [`read_handshake`].
pub fn accept(
    tcp: TcpStream,
    mode: Encryption,
    find_torrent: impl Fn(&[u8; 20]) -> Option<[u8; 20]>,
) -> Result<(PeerStream, Handshake), PeerError> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(PeerError::Connect)?;
    let mut stream = PeerStream::Plain(tcp);
    // 20 bytes: the length byte and "BitTorrent protocol"; a public key starts so with a
    // chance of 2^-160.
    let mut prefix = [0u8; 20];
    read_by(&mut stream, &mut prefix, deadline)?;
    let PeerStream::Plain(tcp) = stream else {
        unreachable!("made plain above")
    };
    if mse::is_plaintext_handshake(&prefix) {
        if !mode.allows_plaintext() {
            return Err(PeerError::PlaintextRefused);
        }
        let mut stream = PeerStream::Plain(tcp);
        let theirs = read_handshake(&mut stream, &prefix, deadline)?;
        return Ok((stream, theirs));
    }
    let accepted = mse::respond(Deadline::new(tcp, deadline), &prefix, find_torrent, mode)?;
    let mut stream =
        PeerStream::Encrypted(Box::new(accepted.stream.map_inner(Deadline::into_inner)));
    let theirs = read_handshake(&mut stream, &[], deadline)?;
    if theirs.info_hash != accepted.info_hash {
        return Err(PeerError::WrongInfoHash);
    }
    Ok((stream, theirs))
}

/// A TCP stream whose reads all end by one deadline (each read's timeout is what is left), so
/// a handshake of many small reads is bounded as a whole.
struct Deadline {
    tcp: TcpStream,
    deadline: Instant,
}

impl Deadline {
    fn new(tcp: TcpStream, deadline: Instant) -> Self {
        Self { tcp, deadline }
    }

    fn into_inner(self) -> TcpStream {
        self.tcp
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    const INFO_HASH: [u8; 20] = [3; 20];

    fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        (l, addr)
    }

    fn ours() -> Handshake {
        Handshake::new(INFO_HASH, [1; 20])
    }

    fn dial_with(addr: SocketAddr, mode: Encryption) -> Result<(PeerStream, Handshake), PeerError> {
        let ours = ours();
        let how = Dial {
            bind: None,
            connect_timeout: Duration::from_secs(5),
            ours: &ours,
            mode,
            stopping: &|| false,
        };
        dial(open_socket(addr, None).unwrap(), addr, &how)
    }

    /// A peer that speaks plaintext only: it closes any connection that does not start with a
    /// BitTorrent handshake, and answers one that does with its own.
    fn plaintext_only_peer(l: TcpListener, connections: usize) -> thread::JoinHandle<usize> {
        thread::spawn(move || {
            let mut refused = 0;
            for _ in 0..connections {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; HANDSHAKE_LEN];
                if s.read_exact(&mut buf).is_err() || !mse::is_plaintext_handshake(&buf) {
                    refused += 1;
                    continue;
                }
                s.write_all(&Handshake::new(INFO_HASH, [2; 20]).encode())
                    .unwrap();
            }
            refused
        })
    }

    #[test]
    fn preferred_falls_back_to_plaintext_when_the_encrypted_attempt_is_closed() {
        let (l, addr) = listener();
        let peer = plaintext_only_peer(l, 2);
        let (stream, theirs) = dial_with(addr, Encryption::Preferred).unwrap();
        assert!(stream.encryption().is_none());
        assert_eq!(theirs.peer_id, [2; 20]);
        assert_eq!(peer.join().unwrap(), 1, "one encrypted attempt, refused");
    }

    #[test]
    fn required_never_falls_back() {
        let (l, addr) = listener();
        let peer = plaintext_only_peer(l, 1);
        let res = dial_with(addr, Encryption::Required);
        assert!(
            matches!(res, Err(PeerError::Encryption(_))),
            "{:?}",
            res.err()
        );
        assert_eq!(peer.join().unwrap(), 1);
    }

    #[test]
    fn accept_tells_plaintext_from_mse_and_refuses_plaintext_when_required() {
        for (mode, encrypted) in [
            (Encryption::Tolerated, false),
            (Encryption::Tolerated, true),
            (Encryption::Required, true),
            (Encryption::Required, false),
        ] {
            let (l, addr) = listener();
            let dialer = thread::spawn(move || {
                let dial_mode = if encrypted {
                    Encryption::Required
                } else {
                    Encryption::Tolerated
                };
                let ours = ours();
                let how = Dial {
                    bind: None,
                    connect_timeout: Duration::from_secs(5),
                    ours: &ours,
                    mode: dial_mode,
                    stopping: &|| true, // no retry: one attempt, as asked
                };
                dial(open_socket(addr, None).unwrap(), addr, &how).map(|(s, _)| s.is_rc4())
            });
            let (tcp, _) = l.accept().unwrap();
            let accepted = accept(tcp, mode, |req2| {
                (*req2 == mse::obfuscated_hash(&INFO_HASH)).then_some(INFO_HASH)
            });
            match (mode, encrypted) {
                (Encryption::Required, false) => {
                    assert!(matches!(accepted, Err(PeerError::PlaintextRefused)));
                    drop(accepted);
                    assert!(dialer.join().unwrap().is_err());
                }
                _ => {
                    let (mut stream, theirs) = accepted.unwrap();
                    assert_eq!(theirs.info_hash, INFO_HASH);
                    assert_eq!(stream.is_rc4(), encrypted);
                    stream
                        .write_all(&Handshake::new(INFO_HASH, [9; 20]).encode())
                        .unwrap();
                    assert_eq!(dialer.join().unwrap().unwrap(), encrypted);
                }
            }
        }
    }

    #[test]
    fn a_handshake_trickled_a_byte_at_a_time_times_out_as_a_whole() {
        let (l, addr) = listener();
        let trickler = thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            // Each byte well within any per-read timeout; all 68 would take 3.4 s.
            for _ in 0..HANDSHAKE_LEN {
                if s.write_all(&[19]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let (tcp, _) = l.accept().unwrap();
        let mut stream = PeerStream::Plain(tcp);
        let started = Instant::now();
        let result = read_handshake(&mut stream, &[], started + Duration::from_millis(400));
        let took = started.elapsed();
        assert!(
            matches!(&result, Err(PeerError::Read(e)) if e.kind() == ErrorKind::TimedOut),
            "{result:?}"
        );
        assert!(took < Duration::from_secs(1), "took {took:?}");
        drop(stream);
        trickler.join().unwrap();
    }
}
