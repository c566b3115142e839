//! One peer connection once its stream is made (`conn.rs` dials and accepts), the one both the
//! torrent session (`session.rs`) and the magnet metadata fetch (`metadata_fetch.rs`) run on:
//! the end of the BitTorrent handshake they share ([`finish_handshake`]), the extended
//! handshake's common fields ([`our_extended_handshake`]), framed reads (length-prefixed
//! messages, bounded by `Message::decode` before anything is allocated; a piece message's block
//! handed to the handler borrowed from the read buffer, so it is copied once), buffered writes
//! (bounded in time by the stream's write timeout), the keep-alive and idle timers, and the
//! exactly-once report of how the connection ended ([`EndGuard`]).
//!
//! [`Connection::run`] turns the loop; what each message means belongs to a [`Handler`], one
//! per purpose: the session's (bitfields, requests, blocks, PEX, serving metadata) and the
//! metadata fetch's (`ut_metadata` requests and answers). Runs on the connection's own thread;
//! knows nothing of torrents or channels, and nothing behind [`PeerStream`].

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::PeerError;
use super::conn::{IDLE_TIMEOUT, KEEPALIVE_INTERVAL, PeerStream};
use crate::wire::extension::EXTENDED_ID;
use crate::wire::{ExtendedHandshake, Handshake, Message, message};

/// How the next read goes: how long it may block, and how many bytes it may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    pub timeout: Duration,
    pub max_bytes: usize,
}

/// What one purpose does with a connection. [`Connection::run`] calls, each turn:
/// [`Handler::before_read`], then writes what is queued ([`Handler::on_flushed`] once it is
/// written), then reads as [`Handler::plan_read`] says, hands every whole message to
/// [`Handler::on_message`], and runs the timers. An error from any of them ends the connection.
pub trait Handler {
    /// First in each turn: take orders and queue messages (`conn.out()`).
    ///
    /// # Errors
    /// Ends the connection with this reason.
    fn before_read(&mut self, conn: &mut Connection) -> Result<(), PeerError>;

    /// How the next read goes, `space` bytes being free in the read buffer; `None` skips this
    /// turn's read (the handler has waited itself, e.g. for a rate limit).
    fn plan_read(&mut self, space: usize) -> Option<ReadPlan>;

    /// The planned read took `got` of the `allowed` bytes (0 when it timed out or failed).
    fn after_read(&mut self, allowed: usize, got: usize) {
        let _ = (allowed, got);
    }

    /// One whole message from the peer.
    ///
    /// # Errors
    /// Ends the connection with this reason.
    fn on_message(&mut self, conn: &mut Connection, msg: Message) -> Result<(), PeerError>;

    /// A piece message's block, borrowed from the read buffer (so the handler copies it once,
    /// into the buffer it stays in); the default ignores it, as a handler that requests no
    /// blocks does.
    ///
    /// # Errors
    /// Ends the connection with this reason.
    fn on_piece(&mut self, piece: u32, offset: u32, data: &[u8]) -> Result<(), PeerError> {
        let _ = (piece, offset, data);
        Ok(())
    }

    /// Every whole message of this turn's read was handed over (a place to pass on what the
    /// handler gathered from them at once).
    ///
    /// # Errors
    /// Ends the connection with this reason.
    fn on_decoded(&mut self) -> Result<(), PeerError> {
        Ok(())
    }

    /// Everything queued so far was written to the stream.
    fn on_flushed(&mut self) {}
}

/// A peer connection after the handshakes: its stream, its read buffer of undecoded bytes, its
/// write buffer of encoded messages, and when it last received and sent.
pub struct Connection {
    stream: PeerStream,
    addr: SocketAddr,
    buf: Vec<u8>,
    /// Undecoded bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    out: Vec<u8>,
    /// The read timeout set on the stream (set again only when it changes).
    read_timeout: Option<Duration>,
    last_received: Instant,
    last_sent: Instant,
}

impl Connection {
    /// A connection over `stream` with a read buffer of `read_buf_bytes` (it grows only for one
    /// message larger than it, which the decoder bounds) and room for `write_buf_bytes` queued.
    #[must_use]
    pub fn new(
        stream: PeerStream,
        addr: SocketAddr,
        read_buf_bytes: usize,
        write_buf_bytes: usize,
    ) -> Self {
        let now = Instant::now();
        Self {
            stream,
            addr,
            buf: vec![0; read_buf_bytes.max(1)],
            start: 0,
            end: 0,
            out: Vec::with_capacity(write_buf_bytes),
            read_timeout: None,
            last_received: now,
            last_sent: now,
        }
    }

    /// The peer's address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    #[must_use]
    pub fn stream(&self) -> &PeerStream {
        &self.stream
    }

    /// The write buffer: encode messages into it; the next flush writes them.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Queues `msg`.
    pub fn queue(&mut self, msg: &Message) {
        msg.encode(&mut self.out);
    }

    /// Queues an extended message (BEP 10) whose body is `body`, under the id `id` the peer
    /// asked for it in its extended handshake.
    pub fn queue_extended(&mut self, id: u8, body: &[u8]) {
        encode_extended(id, body, &mut self.out);
    }

    /// Queues our extended handshake.
    pub fn queue_extended_handshake(&mut self, ours: &ExtendedHandshake) {
        self.queue(&Message::Unknown {
            id: EXTENDED_ID,
            payload: ours.encode(),
        });
    }

    /// Writes everything queued; true when there was something.
    ///
    /// # Errors
    /// `Write` when the stream fails or makes no progress within its write timeout.
    pub fn flush(&mut self) -> Result<bool, PeerError> {
        if self.out.is_empty() {
            return Ok(false);
        }
        self.stream.write_all(&self.out).map_err(PeerError::Write)?;
        self.out.clear();
        self.last_sent = Instant::now();
        Ok(true)
    }

    /// Free bytes at the end of the read buffer, after moving undecoded bytes to its front when
    /// less than an eighth of it is left (doubling it when one message fills it whole).
    fn make_room(&mut self) -> usize {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < self.buf.len() / 8 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                // One message larger than the buffer (a big bitfield): the decoder has already
                // bounded its length, so growing is bounded too.
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        self.buf.len() - self.end
    }

    /// One read as `handler` plans it (none when it says so); returns the bytes read.
    fn fill(&mut self, handler: &mut impl Handler) -> Result<usize, PeerError> {
        let space = self.make_room();
        let Some(plan) = handler.plan_read(space) else {
            return Ok(0);
        };
        let allowed = plan.max_bytes.min(space);
        if allowed == 0 {
            return Ok(0);
        }
        if self.read_timeout != Some(plan.timeout) {
            if let Err(e) = self.stream.set_read_timeout(Some(plan.timeout)) {
                handler.after_read(allowed, 0);
                return Err(PeerError::Read(e));
            }
            self.read_timeout = Some(plan.timeout);
        }
        let result = self
            .stream
            .read(&mut self.buf[self.end..self.end + allowed]);
        handler.after_read(allowed, *result.as_ref().unwrap_or(&0));
        match result {
            Ok(0) => Err(PeerError::Closed),
            Ok(n) => {
                self.end += n;
                self.last_received = Instant::now();
                Ok(n)
            }
            // A read that timed out says WouldBlock on Unix.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(e) => Err(PeerError::Read(e)),
        }
    }

    /// The next whole message already read, if any.
    ///
    /// # Errors
    /// `Wire` for a message the decoder refuses (too long for its id, wrong length, ...).
    pub fn next_message(&mut self) -> Result<Option<Message>, PeerError> {
        match Message::decode(&self.buf[self.start..self.end])? {
            Some((msg, used)) => {
                self.start += used;
                Ok(Some(msg))
            }
            None => Ok(None),
        }
    }

    /// The timers at `now`: a peer silent for [`IDLE_TIMEOUT`] is gone; after
    /// [`KEEPALIVE_INTERVAL`] without sending, and nothing queued, a keep-alive is queued.
    ///
    /// # Errors
    /// `Idle` when the peer has been silent too long.
    pub fn timers(&mut self, now: Instant) -> Result<(), PeerError> {
        if now.saturating_duration_since(self.last_received) > IDLE_TIMEOUT {
            return Err(PeerError::Idle(IDLE_TIMEOUT));
        }
        if now.saturating_duration_since(self.last_sent) > KEEPALIVE_INTERVAL && self.out.is_empty()
        {
            self.queue(&Message::KeepAlive);
        }
        Ok(())
    }

    /// One turn of the loop (see [`Handler`]).
    fn turn(&mut self, handler: &mut impl Handler) -> Result<(), PeerError> {
        handler.before_read(self)?;
        if self.flush()? {
            handler.on_flushed();
        }
        self.fill(handler)?;
        loop {
            if let Some((view, used)) = message::decode_piece(&self.buf[self.start..self.end]) {
                handler.on_piece(view.piece, view.offset, view.data)?;
                self.start += used;
            } else if let Some(msg) = self.next_message()? {
                handler.on_message(self, msg)?;
            } else {
                break;
            }
        }
        handler.on_decoded()?;
        self.timers(Instant::now())
    }

    /// Runs the connection with `handler` until something ends it; returns why.
    pub fn run(&mut self, handler: &mut impl Handler) -> PeerError {
        loop {
            if let Err(e) = self.turn(handler) {
                return e;
            }
        }
    }

    /// Shuts the stream down both ways (the peer sees the connection close).
    pub fn shutdown(&self) {
        self.stream.shutdown();
    }
}

/// Encodes into `out` an extended message (BEP 10) whose body is `body`, under the id `id` the
/// peer asked for it in its extended handshake.
pub fn encode_extended(id: u8, body: &[u8], out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(1 + body.len());
    payload.push(id);
    payload.extend_from_slice(body);
    Message::Unknown {
        id: EXTENDED_ID,
        payload,
    }
    .encode(out);
}

/// The end of the BitTorrent handshake every purpose shares, once the stream is made: an
/// accepted peer (whose handshake the listener read) gets ours first, then theirs is checked.
///
/// # Errors
/// `Write` when ours cannot be written; `WrongInfoHash` when theirs names another torrent;
/// `SelfConnection` when it carries our peer id (checked after ours is written, so our other
/// end of a connection to ourselves sees our id too, and knows the address for ours).
pub fn finish_handshake(
    stream: &mut PeerStream,
    ours: &Handshake,
    theirs: &Handshake,
    accepted: bool,
) -> Result<(), PeerError> {
    if accepted {
        stream.write_all(&ours.encode()).map_err(PeerError::Write)?;
    }
    if theirs.info_hash != ours.info_hash {
        return Err(PeerError::WrongInfoHash);
    }
    if theirs.peer_id == ours.peer_id {
        return Err(PeerError::SelfConnection);
    }
    Ok(())
}

/// The fields of our extended handshake (BEP 10) every purpose sends to the peer at `addr`: our
/// client name, our listen port (when we have one) and the address we see the peer at. The
/// caller adds its extensions (`m`) and the rest.
#[must_use]
pub fn our_extended_handshake(addr: SocketAddr, listen_port: u16) -> ExtendedHandshake {
    ExtendedHandshake {
        p: Some(listen_port).filter(|p| *p != 0),
        v: Some(format!("btd {}", env!("CARGO_PKG_VERSION"))),
        yourip: Some(addr.ip()),
        ..ExtendedHandshake::default()
    }
}

/// Reports how a connection ended exactly once, however it ends: with the reason given to
/// [`EndGuard::end`], or `Panicked` when the thread unwinds before that.
pub struct EndGuard<F: FnOnce(PeerError)> {
    report: Option<F>,
    reason: Option<PeerError>,
}

impl<F: FnOnce(PeerError)> EndGuard<F> {
    /// A guard that calls `report` once, when it ends or is dropped.
    pub fn new(report: F) -> Self {
        Self {
            report: Some(report),
            reason: None,
        }
    }

    /// The connection ended for `reason`: report it now.
    pub fn end(mut self, reason: PeerError) {
        self.reason = Some(reason);
    }
}

impl<F: FnOnce(PeerError)> Drop for EndGuard<F> {
    fn drop(&mut self) {
        if let Some(report) = self.report.take() {
            report(self.reason.take().unwrap_or(PeerError::Panicked));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::net::{TcpListener, TcpStream};
    use std::thread;

    use super::*;
    use crate::wire::WireError;

    /// Both ends of a loopback TCP connection: ours as a [`Connection`], the peer's raw.
    fn pair() -> (Connection, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, addr) = l.accept().unwrap();
        peer.set_nodelay(true).unwrap();
        let conn = Connection::new(PeerStream::Plain(ours), addr, 64, 64);
        (conn, peer)
    }

    /// Collects messages; ends the connection (`Dropped`) once it has `want` of them.
    struct Collect {
        want: usize,
        got: Vec<Message>,
        reads: usize,
    }

    impl Handler for Collect {
        fn before_read(&mut self, _: &mut Connection) -> Result<(), PeerError> {
            Ok(())
        }
        fn plan_read(&mut self, space: usize) -> Option<ReadPlan> {
            Some(ReadPlan {
                timeout: Duration::from_millis(20),
                max_bytes: space,
            })
        }
        fn after_read(&mut self, _: usize, got: usize) {
            self.reads += usize::from(got > 0);
        }
        fn on_message(&mut self, _: &mut Connection, msg: Message) -> Result<(), PeerError> {
            self.got.push(msg);
            if self.got.len() == self.want {
                return Err(PeerError::Dropped);
            }
            Ok(())
        }
    }

    #[test]
    fn frames_split_across_reads_come_out_whole() {
        let (mut conn, mut peer) = pair();
        let mut wire = Vec::new();
        let sent = [
            Message::Have(7),
            Message::KeepAlive,
            Message::Unknown {
                id: EXTENDED_ID,
                payload: (0..=200).collect(),
            },
            Message::Interested,
        ];
        for msg in &sent {
            msg.encode(&mut wire);
        }
        let writer = thread::spawn(move || {
            // A byte or three at a time, each write its own segment.
            for chunk in wire.chunks(3) {
                peer.write_all(chunk).unwrap();
                thread::sleep(Duration::from_millis(2));
            }
            peer
        });
        let mut handler = Collect {
            want: sent.len(),
            got: Vec::new(),
            reads: 0,
        };
        let end = conn.run(&mut handler);
        assert!(matches!(end, PeerError::Dropped), "{end}");
        assert_eq!(handler.got, sent);
        assert!(handler.reads > sent.len(), "{} reads", handler.reads);
        drop(writer.join().unwrap());
    }

    #[test]
    fn a_frame_longer_than_the_read_buffer_grows_it() {
        let (mut conn, mut peer) = pair();
        let big = Message::Unknown {
            id: EXTENDED_ID,
            payload: vec![5; 1000],
        };
        let mut wire = Vec::new();
        big.encode(&mut wire);
        peer.write_all(&wire).unwrap();
        let mut handler = Collect {
            want: 1,
            got: Vec::new(),
            reads: 0,
        };
        assert!(matches!(conn.run(&mut handler), PeerError::Dropped));
        assert_eq!(handler.got, vec![big]);
    }

    #[test]
    fn a_too_long_frame_ends_the_connection_before_its_body_arrives() {
        let (mut conn, mut peer) = pair();
        // A have (id 4) must be 5 bytes; this one claims 4 GiB.
        peer.write_all(&[0xff, 0xff, 0xff, 0xff, 4]).unwrap();
        let mut handler = Collect {
            want: 1,
            got: Vec::new(),
            reads: 0,
        };
        let end = conn.run(&mut handler);
        assert!(
            matches!(
                end,
                PeerError::Wire(WireError::TooLong { .. } | WireError::BadLength { .. })
            ),
            "{end}"
        );
        assert!(handler.got.is_empty());
    }

    #[test]
    fn extended_messages_go_under_the_peers_id() {
        let (mut conn, _peer) = pair();
        conn.queue_extended(4, b"d8:msg_typei0e5:piecei12ee");
        let mut want = vec![0, 0, 0, 28, 20, 4];
        want.extend_from_slice(b"d8:msg_typei0e5:piecei12ee");
        assert_eq!(conn.out(), &want);
    }

    #[test]
    fn a_closed_stream_ends_the_connection_as_closed() {
        let (mut conn, peer) = pair();
        drop(peer);
        let mut handler = Collect {
            want: 1,
            got: Vec::new(),
            reads: 0,
        };
        assert!(matches!(conn.run(&mut handler), PeerError::Closed));
    }

    #[test]
    fn a_keep_alive_is_queued_when_due_and_sent_by_the_next_flush() {
        let (mut conn, mut peer) = pair();
        let since = conn.last_sent;
        conn.timers(since + KEEPALIVE_INTERVAL).unwrap();
        assert!(conn.out().is_empty(), "nothing due yet");
        let due = since + KEEPALIVE_INTERVAL + Duration::from_millis(1);
        conn.queue(&Message::Interested);
        conn.timers(due).unwrap();
        assert_eq!(
            conn.out(),
            &[0, 0, 0, 1, 2],
            "not while a message is queued"
        );
        assert!(conn.flush().unwrap());
        let since = conn.last_sent;
        conn.timers(since + KEEPALIVE_INTERVAL).unwrap();
        assert!(conn.out().is_empty(), "the flush counts as sending");
        conn.timers(since + KEEPALIVE_INTERVAL + Duration::from_millis(1))
            .unwrap();
        assert_eq!(conn.out(), &[0, 0, 0, 0]);
        assert!(conn.flush().unwrap());
        let mut got = [0u8; 9];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, [0, 0, 0, 1, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn a_peer_silent_past_the_idle_timeout_is_gone() {
        let (mut conn, mut peer) = pair();
        let since = conn.last_received;
        conn.timers(since + IDLE_TIMEOUT).unwrap();
        let end = conn.timers(since + IDLE_TIMEOUT + Duration::from_millis(1));
        assert!(matches!(end, Err(PeerError::Idle(t)) if t == IDLE_TIMEOUT));
        // Any bytes, a keep-alive too, count as hearing from the peer.
        thread::sleep(Duration::from_millis(20));
        peer.write_all(&[0, 0, 0, 0]).unwrap();
        let mut handler = Collect {
            want: 1,
            got: Vec::new(),
            reads: 0,
        };
        assert!(matches!(conn.run(&mut handler), PeerError::Dropped));
        assert_eq!(handler.got, vec![Message::KeepAlive]);
        assert!(conn.last_received > since);
        conn.timers(since + IDLE_TIMEOUT + Duration::from_millis(1))
            .unwrap();
    }

    #[test]
    fn the_end_guard_reports_once_with_the_reason_given() {
        let reports = RefCell::new(Vec::new());
        let guard = EndGuard::new(|e: PeerError| reports.borrow_mut().push(e.to_string()));
        guard.end(PeerError::Closed);
        assert_eq!(*reports.borrow(), vec![PeerError::Closed.to_string()]);
    }

    #[test]
    fn the_end_guard_reports_a_panic_once() {
        let reports = std::sync::Mutex::new(Vec::new());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = EndGuard::new(|e: PeerError| reports.lock().unwrap().push(e.to_string()));
            panic!("the session broke");
        }));
        assert!(result.is_err());
        assert_eq!(
            *reports.lock().unwrap(),
            vec![PeerError::Panicked.to_string()]
        );
    }

    #[test]
    fn an_accepted_peer_gets_our_handshake_before_it_is_found_to_be_us() {
        let (conn, mut peer) = pair();
        let Connection { mut stream, .. } = conn;
        let ours = Handshake::new([3; 20], [1; 20]);
        let end = finish_handshake(&mut stream, &ours, &ours, true);
        assert!(matches!(end, Err(PeerError::SelfConnection)));
        let mut got = [0u8; 68];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got.to_vec(), ours.encode());
        let other = Handshake::new([4; 20], [2; 20]);
        assert!(matches!(
            finish_handshake(&mut stream, &ours, &other, false),
            Err(PeerError::WrongInfoHash)
        ));
        let fine = Handshake::new([3; 20], [2; 20]);
        finish_handshake(&mut stream, &ours, &fine, false).unwrap();
    }
}
