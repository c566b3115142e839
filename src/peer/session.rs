//! The loop of one peer thread: it owns the socket, reads and decodes messages, reports them to
//! the coordinator, carries out the coordinator's commands, and serves the peer's requests from
//! disk for pieces we announced. Runs on thread "peer ADDR"; never touches picker state.
//!
//! Each turn: drain commands, serve a batch of queued requests, write what is buffered, read
//! (briefly blocking), decode every complete message, run the keep-alive and idle timers.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use log::{debug, trace};

use super::conn::{self, IDLE_TIMEOUT, KEEPALIVE_INTERVAL, PeerStream};
use super::mse::Encryption;
use super::{PeerCommand, PeerError, PeerEvent, PeerStats, TorrentContext};
use crate::torrent::picker::PeerKey;
use crate::torrent::piece_buffer::BlockData;
use crate::wire::extension::{
    EXTENDED_ID, EXTENSION_BIT, HANDSHAKE_EXT_ID, METADATA_PIECE_LEN, MetadataMessage,
    OUR_UT_METADATA_ID, OUR_UT_PEX_ID, PexMessage, UT_METADATA, UT_PEX,
};
use crate::wire::{
    BLOCK_LEN, Bitfield, BlockRef, ExtendedHandshake, Handshake, Message, PIECE_HEADER_LEN,
    encode_piece_header, message,
};

/// The request queue we advertise (`reqq`): deep, since transmission's download rate follows it.
pub const ADVERTISED_REQQ: u32 = 2048;
/// Peer threads do little recursion and keep their buffers on the heap.
pub const PEER_STACK_BYTES: usize = 256 * 1024;
/// Requests we queue for one peer before we call it a flood and drop it.
pub const MAX_UPLOAD_QUEUE: usize = 4096;
/// How long a read may block while either side is interested: bounds the delay before a
/// command from the coordinator goes out.
const ACTIVE_READ_TIMEOUT: Duration = Duration::from_millis(5);
/// Same, while neither side wants anything.
const IDLE_READ_TIMEOUT: Duration = Duration::from_millis(200);
const READ_BUF_BYTES: usize = 512 * 1024;
/// Upload bytes we put in the send buffer before writing it out.
const UPLOAD_BATCH_BYTES: usize = 512 * 1024;
const SOCKET_BUF_BYTES: usize = 4 * 1024 * 1024;

/// Set in `reserved[7]` by clients that speak the fast extension (BEP 6).
const FAST_BIT: u8 = 0x04;

/// Set in `reserved[7]` by clients that run a DHT node (BEP 5).
const DHT_BIT: u8 = 0x01;

/// Our handshake: with the extension-protocol bit (BEP 10), the fast-extension bit (BEP 6) and,
/// when our DHT runs and the torrent is public, the DHT bit (BEP 5).
fn our_handshake(ctx: &TorrentContext) -> Handshake {
    let mut ours = Handshake::new(ctx.info_hash.0, ctx.our_id);
    ours.reserved[5] |= EXTENSION_BIT;
    ours.reserved[7] |= FAST_BIT;
    if ctx.dht.is_some() {
        ours.reserved[7] |= DHT_BIT;
    }
    ours
}

fn tune_socket(stream: &TcpStream) {
    let sock = socket2::SockRef::from(stream);
    // Best effort: the kernel caps these at its own limits.
    let _ = sock.set_recv_buffer_size(SOCKET_BUF_BYTES);
    let _ = sock.set_send_buffer_size(SOCKET_BUF_BYTES);
    let _ = stream.set_nodelay(true);
}

/// Body of an outgoing peer thread.
pub(super) fn run_outgoing(
    ctx: &Arc<TorrentContext>,
    peer: PeerKey,
    addr: SocketAddr,
    socket: socket2::Socket,
    bind: Option<IpAddr>,
    connect_timeout: Duration,
) {
    let ours = our_handshake(ctx);
    let stopping = || ctx.peer_threads.lock().is_none();
    let dial = conn::Dial {
        bind,
        connect_timeout,
        ours: &ours,
        mode: ctx.limits.encryption.get(),
        stopping: &stopping,
    };
    match conn::dial(socket, addr, &dial) {
        Ok((stream, theirs)) => run_connected(ctx, peer, stream, addr, theirs, false),
        Err(reason) => {
            debug!("peer {addr}: {reason}");
            let _ = ctx
                .events
                .send(PeerEvent::ConnectFailed { peer, addr, reason });
        }
    }
}

/// Body of an incoming peer thread, after the listener read the peer's handshake and found
/// our torrent by its info hash: answer with ours and run the session.
pub fn run_incoming(
    ctx: &Arc<TorrentContext>,
    mut stream: PeerStream,
    addr: SocketAddr,
    theirs: Handshake,
) {
    let Some(_alive) = ctx.peer_thread_token() else {
        debug!("peer {addr}: the torrent is stopping");
        return;
    };
    let ours = our_handshake(ctx);
    if let Err(e) = stream.write_all(&ours.encode()) {
        debug!("peer {addr}: write handshake: {e}");
        return;
    }
    run_connected(ctx, next_key(), stream, addr, theirs, true);
}

fn next_key() -> PeerKey {
    super::next_peer_key()
}

/// Sends `Disconnected` exactly once when the session ends, however it ends (panics included).
pub(super) struct DisconnectGuard<'a> {
    pub(super) ctx: &'a TorrentContext,
    pub(super) peer: PeerKey,
    pub(super) reason: Option<PeerError>,
}

impl Drop for DisconnectGuard<'_> {
    fn drop(&mut self) {
        let reason = self.reason.take().unwrap_or(PeerError::Panicked);
        let _ = self.ctx.events.send(PeerEvent::Disconnected {
            peer: self.peer,
            reason,
        });
    }
}

fn run_connected(
    ctx: &Arc<TorrentContext>,
    peer: PeerKey,
    stream: PeerStream,
    addr: SocketAddr,
    theirs: Handshake,
    incoming: bool,
) {
    if theirs.peer_id == ctx.our_id {
        debug!("peer {addr}: connected to ourselves");
        let _ = ctx.events.send(PeerEvent::ConnectFailed {
            peer,
            addr,
            reason: PeerError::SelfConnection,
        });
        return;
    }
    tune_socket(stream.socket());
    let (socket, commands) = match stream.socket().try_clone() {
        // Unbounded, so an idle peer holds no slots (a bounded crossbeam channel allocates
        // them all up front); the coordinator, its only sender, keeps it within
        // `PEER_COMMANDS_CAPACITY`.
        Ok(clone) => (clone, crossbeam_channel::unbounded()),
        Err(e) => {
            let _ = ctx.events.send(PeerEvent::ConnectFailed {
                peer,
                addr,
                reason: PeerError::Connect(e),
            });
            return;
        }
    };
    let stats = Arc::new(PeerStats::default());
    let connected = PeerEvent::Connected {
        peer,
        addr,
        peer_id: theirs.peer_id,
        incoming,
        fast: theirs.supports_fast(),
        commands: commands.0,
        socket,
        stats: Arc::clone(&stats),
    };
    if ctx.events.send(connected).is_err() {
        return;
    }
    let mut guard = DisconnectGuard {
        ctx,
        peer,
        reason: None,
    };
    let mut session = Session::new(ctx, peer, stream, addr, commands.1, stats);
    session.extended = theirs.supports_extension_protocol();
    session.fast = theirs.supports_fast();
    session.dht = theirs.supports_dht() && ctx.dht.is_some();
    let reason = session.run();
    // Blocks read for the peer but never written: not sent, so not counted.
    session.release_unflushed();
    debug!("peer {addr}: disconnected: {reason}");
    session.stream.shutdown();
    guard.reason = Some(reason);
}

struct Session<'a> {
    ctx: &'a TorrentContext,
    peer: PeerKey,
    stream: PeerStream,
    addr: SocketAddr,
    commands: Receiver<PeerCommand>,
    stats: Arc<PeerStats>,
    read_buf: Vec<u8>,
    read_start: usize,
    read_end: usize,
    write_buf: Vec<u8>,
    /// Payload bytes of the `piece` messages in `write_buf`: counted as uploaded once written,
    /// returned to the torrent's upload allowance if they never are.
    unflushed_payload: u64,
    /// Pieces we announced (bitfield + have): the only ones we serve.
    our_pieces: Bitfield,
    am_choking: bool,
    am_interested: bool,
    peer_interested: bool,
    received_any: bool,
    /// The peer set the BEP 10 bit: we exchange extended handshakes.
    extended: bool,
    /// The peer set the BEP 6 bit: have all/none, and rejects instead of silence.
    fast: bool,
    /// The peer set the DHT bit and our DHT runs: we send our `port`, and take theirs.
    dht: bool,
    /// The id the peer wants `ut_metadata` messages under, once its extended handshake said.
    peer_ut_metadata: Option<u8>,
    /// Same for `ut_pex`.
    peer_ut_pex: Option<u8>,
    upload_queue: VecDeque<BlockRef>,
    read_timeout: Duration,
    /// The upload limit stopped us serving this turn: wait a little instead of spinning.
    upload_throttled: bool,
    last_received: Instant,
    last_sent: Instant,
}

impl<'a> Session<'a> {
    fn new(
        ctx: &'a TorrentContext,
        peer: PeerKey,
        stream: PeerStream,
        addr: SocketAddr,
        commands: Receiver<PeerCommand>,
        stats: Arc<PeerStats>,
    ) -> Self {
        let now = Instant::now();
        Self {
            ctx,
            peer,
            stream,
            addr,
            commands,
            stats,
            read_buf: vec![0; READ_BUF_BYTES],
            read_start: 0,
            read_end: 0,
            write_buf: Vec::with_capacity(UPLOAD_BATCH_BYTES + 64 * 1024),
            unflushed_payload: 0,
            our_pieces: Bitfield::new(ctx.geometry.num_pieces),
            am_choking: true,
            am_interested: false,
            peer_interested: false,
            received_any: false,
            extended: false,
            fast: false,
            dht: false,
            peer_ut_metadata: None,
            peer_ut_pex: None,
            upload_queue: VecDeque::new(),
            read_timeout: Duration::ZERO,
            upload_throttled: false,
            last_received: now,
            last_sent: now,
        }
    }

    fn run(&mut self) -> PeerError {
        if let Err(e) = self.start() {
            return e;
        }
        loop {
            if let Err(e) = self.turn() {
                return e;
            }
        }
    }

    /// Waits for the coordinator's `Start` (our bitfield), which must be our first message.
    fn start(&mut self) -> Result<(), PeerError> {
        // A write that makes no progress this long means the peer stopped reading: without it
        // a peer that never reads would hold this thread in `write` forever.
        let _ = self
            .stream
            .set_write_timeout(Some(self.ctx.write_timeout()));
        match self.commands.recv_timeout(Duration::from_secs(30)) {
            Ok(PeerCommand::Start {
                pieces,
                upload_only,
            }) => {
                if self.fast && pieces.is_full() {
                    debug!("peer {}: -> have all", self.addr);
                    Message::HaveAll.encode(&mut self.write_buf);
                } else if self.fast && pieces.count_ones() == 0 {
                    debug!("peer {}: -> have none", self.addr);
                    Message::HaveNone.encode(&mut self.write_buf);
                } else if pieces.count_ones() > 0 {
                    Message::Bitfield(pieces.as_bytes().to_vec()).encode(&mut self.write_buf);
                }
                self.our_pieces = pieces;
                if self.dht
                    && let Some(dht) = &self.ctx.dht
                {
                    Message::Port(dht.port()).encode(&mut self.write_buf);
                }
                if self.extended {
                    let ours = ExtendedHandshake {
                        m: self.our_extensions(),
                        metadata_size: Some(self.ctx.info_bytes.len() as u64),
                        p: Some(self.ctx.listen_port).filter(|p| *p != 0),
                        v: Some(format!("btd {}", env!("CARGO_PKG_VERSION"))),
                        reqq: Some(ADVERTISED_REQQ),
                        yourip: Some(self.addr.ip()),
                        e: Some(self.ctx.limits.encryption.get() != Encryption::Tolerated),
                        upload_only: Some(upload_only),
                    };
                    Message::Unknown {
                        id: EXTENDED_ID,
                        payload: ours.encode(),
                    }
                    .encode(&mut self.write_buf);
                }
                Ok(())
            }
            Ok(PeerCommand::Shutdown) => Err(PeerError::Dropped),
            Ok(other) => Err(PeerError::Protocol(format!(
                "coordinator sent {other:?} before Start"
            ))),
            Err(_) => Err(PeerError::CoordinatorGone),
        }
    }

    fn turn(&mut self) -> Result<(), PeerError> {
        self.drain_commands()?;
        self.serve_uploads()?;
        self.flush()?;
        self.read_some()?;
        self.decode_all()?;
        self.timers()
    }

    fn drain_commands(&mut self) -> Result<(), PeerError> {
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.obey(cmd)?,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(PeerError::CoordinatorGone),
            }
        }
    }

    fn obey(&mut self, cmd: PeerCommand) -> Result<(), PeerError> {
        let out = &mut self.write_buf;
        match cmd {
            PeerCommand::Request(blocks) => {
                for block in blocks {
                    trace!(
                        "peer {}: -> request {}+{}",
                        self.addr, block.piece, block.offset
                    );
                    Message::Request(block).encode(out);
                }
            }
            PeerCommand::Cancel(blocks) => {
                for block in blocks {
                    Message::Cancel(block).encode(out);
                }
            }
            PeerCommand::Have(piece) => {
                self.our_pieces.set(piece);
                Message::Have(piece).encode(out);
            }
            PeerCommand::Choke => {
                if !self.am_choking {
                    self.am_choking = true;
                    Message::Choke.encode(out);
                    // Choking voids every request the peer sent us (BEP 3); a fast peer is told
                    // so, one reject per request (BEP 6).
                    for block in self.upload_queue.drain(..) {
                        if self.fast {
                            Message::Reject(block).encode(out);
                        }
                    }
                }
            }
            PeerCommand::Unchoke => {
                if self.am_choking {
                    self.am_choking = false;
                    Message::Unchoke.encode(out);
                }
            }
            PeerCommand::Interested => {
                if !self.am_interested {
                    self.am_interested = true;
                    Message::Interested.encode(out);
                }
            }
            PeerCommand::NotInterested => {
                if self.am_interested {
                    self.am_interested = false;
                    Message::NotInterested.encode(out);
                }
            }
            PeerCommand::Pex(pex) => {
                if let Some(id) = self.peer_ut_pex {
                    let mut payload = vec![id];
                    payload.extend(pex.encode());
                    Message::Unknown {
                        id: EXTENDED_ID,
                        payload,
                    }
                    .encode(out);
                }
            }
            PeerCommand::Shutdown => return Err(PeerError::Dropped),
            PeerCommand::Start { .. } => {
                return Err(PeerError::Protocol("coordinator sent Start twice".into()));
            }
        }
        Ok(())
    }

    /// Reads queued requests from disk straight into the send buffer, up to one batch.
    fn serve_uploads(&mut self) -> Result<(), PeerError> {
        self.upload_throttled = false;
        let now = Instant::now();
        while self.write_buf.len() < UPLOAD_BATCH_BYTES {
            let Some(&block) = self.upload_queue.front() else {
                break;
            };
            if !self.ctx.upload_limits().try_take(block.len as usize, now) {
                self.upload_throttled = true;
                break;
            }
            if !self.ctx.stats.reserve_upload(u64::from(block.len)) {
                // The torrent's seeding limit is reached: the daemon stops it shortly.
                self.ctx.upload_limits().give_back(block.len as usize);
                self.upload_throttled = true;
                break;
            }
            self.upload_queue.pop_front();
            let start = self.write_buf.len();
            encode_piece_header(block.piece, block.offset, block.len, &mut self.write_buf);
            let data_start = start + PIECE_HEADER_LEN;
            self.write_buf.resize(data_start + block.len as usize, 0);
            if let Err(e) =
                self.ctx
                    .storage
                    .read(block.piece, block.offset, &mut self.write_buf[data_start..])
            {
                // Nothing wrong goes to the peer: drop the half-built message and the peer.
                // The coordinator logs it and rechecks the torrent's data.
                self.write_buf.truncate(start);
                self.ctx.stats.release_upload(u64::from(block.len));
                return Err(PeerError::ServeFailed {
                    piece: block.piece,
                    error: e.to_string(),
                });
            }
            self.unflushed_payload += u64::from(block.len);
        }
        Ok(())
    }

    /// Gives the payload still in the send buffer back to the upload allowance (the session
    /// ended before writing it).
    fn release_unflushed(&mut self) {
        let payload = std::mem::take(&mut self.unflushed_payload);
        if payload > 0 {
            self.ctx.stats.release_upload(payload);
        }
    }

    fn flush(&mut self) -> Result<(), PeerError> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(&self.write_buf)
            .map_err(PeerError::Write)?;
        self.write_buf.clear();
        let payload = std::mem::take(&mut self.unflushed_payload);
        if payload > 0 {
            self.stats.add_uploaded(payload);
            self.ctx
                .stats
                .uploaded
                .fetch_add(payload, Ordering::Relaxed);
        }
        self.last_sent = Instant::now();
        Ok(())
    }

    fn read_some(&mut self) -> Result<(), PeerError> {
        if self.read_start == self.read_end {
            self.read_start = 0;
            self.read_end = 0;
        } else if self.read_buf.len() - self.read_end < 64 * 1024 {
            self.read_buf.copy_within(self.read_start..self.read_end, 0);
            self.read_end -= self.read_start;
            self.read_start = 0;
            if self.read_end == self.read_buf.len() {
                // One message larger than the buffer (a big bitfield): the decoder has already
                // bounded its length, so growing is bounded too.
                self.read_buf.resize(self.read_buf.len() * 2, 0);
            }
        }
        // With uploads waiting, only take what is already there: the peer may have nothing
        // more to say while it waits for our data.
        let busy = !self.upload_queue.is_empty() && !self.am_choking;
        let timeout = if self.upload_throttled {
            self.ctx
                .limits
                .upload
                .wait_hint(BLOCK_LEN as usize)
                .max(Duration::from_millis(1))
        } else if busy {
            Duration::from_micros(1)
        } else if self.am_interested || self.peer_interested {
            ACTIVE_READ_TIMEOUT
        } else {
            IDLE_READ_TIMEOUT
        };
        if timeout != self.read_timeout {
            self.stream
                .set_read_timeout(Some(timeout))
                .map_err(PeerError::Read)?;
            self.read_timeout = timeout;
        }
        let space = self.read_buf.len() - self.read_end;
        let allowed = self.ctx.download_limits().take_up_to(space, Instant::now());
        if allowed == 0 {
            // Over the download limit: leave the bytes in the kernel (TCP pushes back on the
            // sender) and look again shortly.
            std::thread::sleep(
                self.ctx
                    .download_limits()
                    .wait_hint(BLOCK_LEN as usize)
                    .min(timeout.max(Duration::from_millis(1))),
            );
            return Ok(());
        }
        let end = self.read_end + allowed;
        let result = self.stream.read(&mut self.read_buf[self.read_end..end]);
        let used = *result.as_ref().unwrap_or(&0);
        self.ctx.download_limits().give_back(allowed - used);
        match result {
            Ok(0) => Err(PeerError::Closed),
            Ok(n) => {
                self.read_end += n;
                self.last_received = Instant::now();
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(PeerError::Read(e)),
        }
    }

    fn decode_all(&mut self) -> Result<(), PeerError> {
        loop {
            let buf = &self.read_buf[self.read_start..self.read_end];
            // A block is copied once, from the read buffer into the buffer it stays in.
            if let Some((view, used)) = message::decode_piece(buf) {
                let data = BlockData::copy_of(view.data);
                let (piece, offset) = (view.piece, view.offset);
                self.read_start += used;
                self.received_any = true;
                self.on_block(piece, offset, data)?;
                continue;
            }
            let Some((msg, used)) = Message::decode(buf)? else {
                return Ok(());
            };
            self.read_start += used;
            self.handle(msg)?;
        }
    }

    /// A piece message's block: counted, then reported to the coordinator.
    fn on_block(&mut self, piece: u32, offset: u32, data: BlockData) -> Result<(), PeerError> {
        let peer = self.peer;
        let len = u32::try_from(data.len()).expect("decoder bounds piece messages");
        self.stats.add_downloaded(data.len() as u64);
        self.ctx
            .stats
            .downloaded
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        trace!("peer {}: <- piece {piece}+{offset} ({len} B)", self.addr);
        let block = BlockRef::new(piece, offset, len);
        self.report(PeerEvent::BlockReceived { peer, block, data })
    }

    fn report(&self, event: PeerEvent) -> Result<(), PeerError> {
        self.ctx
            .events
            .send(event)
            .map_err(|_| PeerError::CoordinatorGone)
    }

    fn handle(&mut self, msg: Message) -> Result<(), PeerError> {
        let peer = self.peer;
        let first = !self.received_any;
        if !matches!(msg, Message::KeepAlive) {
            self.received_any = true;
        }
        match msg {
            Message::KeepAlive => {}
            Message::Choke => self.report(PeerEvent::Choked { peer })?,
            Message::Unchoke => self.report(PeerEvent::Unchoked { peer })?,
            Message::Interested => {
                self.peer_interested = true;
                self.report(PeerEvent::Interested { peer })?;
            }
            Message::NotInterested => {
                self.peer_interested = false;
                self.report(PeerEvent::NotInterested { peer })?;
            }
            Message::Have(piece) => {
                if piece >= self.ctx.geometry.num_pieces {
                    return Err(PeerError::Protocol(format!(
                        "have for piece {piece} out of range"
                    )));
                }
                self.report(PeerEvent::Have { peer, piece })?;
            }
            Message::Bitfield(bytes) => {
                // A later bitfield of the right length is the peer's new state (aria2 sends
                // one mid-connection); a wrong length or spare bits set is a violation.
                let pieces = Bitfield::from_wire(&bytes, self.ctx.geometry.num_pieces)?;
                if !first {
                    debug!(
                        "peer {}: bitfield after other messages; taking it as new state",
                        self.addr
                    );
                }
                self.report(PeerEvent::Bitfield { peer, pieces })?;
            }
            Message::Request(block) => self.on_request(block)?,
            Message::Piece {
                piece,
                offset,
                data,
            } => self.on_block(piece, offset, BlockData::copy_of(&data))?,
            Message::Cancel(block) => self.upload_queue.retain(|b| *b != block),
            Message::Unknown {
                id: EXTENDED_ID,
                payload,
            } if self.extended => self.on_extended(&payload)?,
            Message::HaveAll if self.fast => {
                debug!("peer {}: <- have all", self.addr);
                let pieces = Bitfield::full(self.ctx.geometry.num_pieces);
                self.report(PeerEvent::Bitfield { peer, pieces })?;
            }
            Message::HaveNone if self.fast => {
                debug!("peer {}: <- have none", self.addr);
                let pieces = Bitfield::new(self.ctx.geometry.num_pieces);
                self.report(PeerEvent::Bitfield { peer, pieces })?;
            }
            Message::Reject(block) if self.fast => {
                self.report(PeerEvent::RequestRejected { peer, block })?;
            }
            Message::HaveAll | Message::HaveNone | Message::Reject(_) => {
                return Err(PeerError::Protocol(
                    "fast-extension message from a peer without the fast bit".into(),
                ));
            }
            Message::Suggest(_) | Message::AllowedFast(_) => {}
            Message::Port(port) => {
                if self.dht
                    && port != 0
                    && let Some(dht) = &self.ctx.dht
                {
                    debug!("peer {}: <- port {port}", self.addr);
                    dht.add_node(SocketAddr::new(self.addr.ip(), port));
                }
            }
            Message::Unknown { .. } => {}
        }
        Ok(())
    }

    fn on_extended(&mut self, payload: &[u8]) -> Result<(), PeerError> {
        let Some((&ext_id, dict)) = payload.split_first() else {
            return Err(PeerError::Protocol("empty extended message".into()));
        };
        if ext_id == OUR_UT_METADATA_ID {
            return self.on_metadata_message(dict);
        }
        if ext_id == OUR_UT_PEX_ID && !self.ctx.private {
            return match PexMessage::decode(dict) {
                Ok(pex) => self.report(PeerEvent::PexReceived {
                    peer: self.peer,
                    added: pex.added,
                }),
                Err(e) => Err(PeerError::Protocol(format!("ut_pex: {e}"))),
            };
        }
        if ext_id != HANDSHAKE_EXT_ID {
            // Not an extension we advertised: not for us.
            return Ok(());
        }
        match ExtendedHandshake::decode(dict) {
            Ok(h) => {
                self.peer_ut_metadata = h.m.get(UT_METADATA).copied().filter(|id| *id != 0);
                self.peer_ut_pex =
                    h.m.get(UT_PEX)
                        .copied()
                        .filter(|id| *id != 0 && !self.ctx.private);
                self.report(PeerEvent::ExtendedHandshake {
                    peer: self.peer,
                    reqq: h.reqq,
                    listen_port: h.p,
                    client: h.v,
                    pex: self.peer_ut_pex.is_some(),
                    upload_only: h.upload_only == Some(true),
                })
            }
            Err(e) => {
                debug!("peer {}: ignoring extended handshake: {e}", self.addr);
                Ok(())
            }
        }
    }

    /// The extensions we offer in our extended handshake, with the ids we receive them under.
    fn our_extensions(&self) -> std::collections::BTreeMap<String, u8> {
        let mut m =
            std::collections::BTreeMap::from([(UT_METADATA.to_string(), OUR_UT_METADATA_ID)]);
        if !self.ctx.private {
            m.insert(UT_PEX.to_string(), OUR_UT_PEX_ID);
        }
        m
    }

    /// Serves our metadata (BEP 9): a piece of the info dictionary, or a reject.
    fn on_metadata_message(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        let msg = MetadataMessage::decode(bytes)
            .map_err(|e| PeerError::Protocol(format!("ut_metadata: {e}")))?;
        let MetadataMessage::Request { piece } = msg else {
            return Ok(()); // we never ask, so data and rejects are not for us
        };
        let Some(their_id) = self.peer_ut_metadata else {
            return Ok(());
        };
        let info = &self.ctx.info_bytes;
        let start = piece as usize * METADATA_PIECE_LEN as usize;
        let reply = if start < info.len() {
            let end = (start + METADATA_PIECE_LEN as usize).min(info.len());
            MetadataMessage::Data {
                piece,
                total_size: Some(info.len() as u64),
                data: &info[start..end],
            }
        } else {
            MetadataMessage::Reject { piece }
        };
        let mut payload = vec![their_id];
        payload.extend(reply.encode());
        Message::Unknown {
            id: EXTENDED_ID,
            payload,
        }
        .encode(&mut self.write_buf);
        Ok(())
    }

    /// Tells a fast peer we will not serve `block`; others learn it from silence.
    fn reject(&mut self, block: BlockRef) {
        if self.fast {
            Message::Reject(block).encode(&mut self.write_buf);
        }
    }

    fn on_request(&mut self, block: BlockRef) -> Result<(), PeerError> {
        if block.len > BLOCK_LEN {
            return Err(PeerError::Protocol(format!(
                "request of {} bytes",
                block.len
            )));
        }
        if self.am_choking {
            // Requests while choked are void; a racing request after our choke is normal.
            self.reject(block);
            return Ok(());
        }
        if !self.ctx.geometry.is_servable_request(&block) || !self.our_pieces.get(block.piece) {
            debug!(
                "peer {}: refusing request for {block:?} we do not have",
                self.addr
            );
            self.reject(block);
            return Ok(());
        }
        if self.upload_queue.len() >= MAX_UPLOAD_QUEUE {
            return Err(PeerError::Protocol("request flood".into()));
        }
        self.upload_queue.push_back(block);
        Ok(())
    }

    fn timers(&mut self) -> Result<(), PeerError> {
        let now = Instant::now();
        if now.duration_since(self.last_received) > IDLE_TIMEOUT {
            return Err(PeerError::Idle(IDLE_TIMEOUT));
        }
        if now.duration_since(self.last_sent) > KEEPALIVE_INTERVAL && self.write_buf.is_empty() {
            Message::KeepAlive.encode(&mut self.write_buf);
        }
        Ok(())
    }
}
