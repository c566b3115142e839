//! The torrent session: the [`Handler`] of one peer connection of a torrent. It reports the
//! peer's messages to the coordinator, carries out the coordinator's commands, and serves the
//! peer's requests from disk for pieces we announced (and our metadata, BEP 9). Runs on thread
//! "peer ADDR" over a [`Connection`]; never touches picker state.
//!
//! Each turn ([`Connection::run`]): drain commands and serve a batch of queued requests
//! ([`Handler::before_read`]), write what is buffered, read (briefly blocking, within the
//! download limits), handle every complete message, run the keep-alive and idle timers.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use log::{debug, trace};

use super::conn::{self, PeerStream};
use super::connection::{self, Connection, EndGuard, Handler, ReadPlan};
use super::mse::Encryption;
use super::{MAX_BLOCKS_PER_EVENT, PeerCommand, PeerError, PeerEvent, PeerStats, TorrentContext};
use crate::torrent::picker::PeerKey;
use crate::torrent::piece_buffer::BlockData;
use crate::wire::extension::{
    EXTENDED_ID, EXTENSION_BIT, HANDSHAKE_EXT_ID, METADATA_PIECE_LEN, MetadataMessage,
    OUR_UT_METADATA_ID, OUR_UT_PEX_ID, PexMessage, UT_METADATA, UT_PEX,
};
use crate::wire::{
    BLOCK_LEN, Bitfield, BlockRef, ExtendedHandshake, Handshake, Message, PIECE_HEADER_LEN,
    encode_piece_header,
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
/// How long a peer's `have`s may wait to go to the coordinator together: a leecher sends one per
/// piece it finishes, and an event for each woke our coordinator a thousand times a second for
/// one fast leecher of a seed (each wake-up taking a core from the peer thread serving it).
pub const HAVE_GATHER: Duration = Duration::from_millis(100);
/// The most `have`s one event carries.
const MAX_HAVES_PER_EVENT: usize = 1024;

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

/// Body of an outgoing peer thread.
pub(super) fn run_outgoing(
    ctx: &Arc<TorrentContext>,
    peer: PeerKey,
    addr: SocketAddr,
    socket: socket2::Socket,
    bind: Option<IpAddr>,
    connect_timeout: Duration,
    prefers_encryption: bool,
) {
    let ours = our_handshake(ctx);
    let stopping = || ctx.peer_threads.lock().is_none();
    let configured = ctx.limits.encryption.get();
    let mode = configured.for_peer(prefers_encryption);
    if mode != configured {
        debug!("peer {addr}: it prefers encryption: dialling encrypted first");
    }
    let dial = conn::Dial {
        bind,
        connect_timeout,
        ours: &ours,
        mode,
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
    stream: PeerStream,
    addr: SocketAddr,
    theirs: Handshake,
) {
    let Some(_alive) = ctx.peer_thread_token() else {
        debug!("peer {addr}: the torrent is stopping");
        return;
    };
    run_connected(ctx, super::next_peer_key(), stream, addr, theirs, true);
}

/// Sends `Disconnected` for `peer` exactly once when its thread ends, however it ends (panics
/// included).
pub(super) fn disconnect_guard(
    ctx: &TorrentContext,
    peer: PeerKey,
) -> EndGuard<impl FnOnce(PeerError) + '_> {
    EndGuard::new(move |reason| {
        let _ = ctx.events.send(PeerEvent::Disconnected { peer, reason });
    })
}

fn run_connected(
    ctx: &Arc<TorrentContext>,
    peer: PeerKey,
    mut stream: PeerStream,
    addr: SocketAddr,
    theirs: Handshake,
    incoming: bool,
) {
    match connection::finish_handshake(&mut stream, &our_handshake(ctx), &theirs, incoming) {
        Ok(()) => {}
        Err(reason @ PeerError::SelfConnection) => {
            debug!("peer {addr}: connected to ourselves");
            let _ = ctx
                .events
                .send(PeerEvent::ConnectFailed { peer, addr, reason });
            return;
        }
        // The coordinator has not heard of an incoming peer yet: nothing to tell it.
        Err(e) if incoming => {
            debug!("peer {addr}: {e}");
            return;
        }
        Err(reason) => {
            debug!("peer {addr}: {reason}");
            let _ = ctx
                .events
                .send(PeerEvent::ConnectFailed { peer, addr, reason });
            return;
        }
    }
    stream.tune(SOCKET_BUF_BYTES);
    let (handle, commands) = match stream.handle() {
        // Unbounded, so an idle peer holds no slots (a bounded crossbeam channel allocates
        // them all up front); the coordinator, its only sender, keeps it within
        // `PEER_COMMANDS_CAPACITY`.
        Ok(handle) => (handle, crossbeam_channel::unbounded()),
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
        encrypted: stream.encryption().is_some(),
        commands: commands.0,
        handle,
        stats: Arc::clone(&stats),
    };
    if ctx.events.send(connected).is_err() {
        return;
    }
    let guard = disconnect_guard(ctx, peer);
    let mut conn = Connection::new(stream, addr, READ_BUF_BYTES, UPLOAD_BATCH_BYTES + 64 * 1024);
    let mut session = Session::new(ctx, peer, addr, commands.1, stats);
    session.extended = theirs.supports_extension_protocol();
    session.fast = theirs.supports_fast();
    session.dht = theirs.supports_dht() && ctx.dht.is_some();
    let reason = match session.start(&mut conn) {
        Ok(()) => conn.run(&mut session),
        Err(e) => e,
    };
    // Blocks received before the end still reach their pieces (they were counted).
    let _ = session.send_received();
    // Blocks read for the peer but never written: not sent, so not counted.
    session.release_unflushed();
    debug!("peer {addr}: disconnected: {reason}");
    conn.shutdown();
    guard.end(reason);
}

/// The torrent session's state of one connection: what the coordinator told it, what the peer
/// said, and the peer's requests waiting to be served.
struct Session<'a> {
    ctx: &'a TorrentContext,
    peer: PeerKey,
    addr: SocketAddr,
    commands: Receiver<PeerCommand>,
    stats: Arc<PeerStats>,
    /// Payload bytes of the `piece` messages in the connection's send buffer: counted as uploaded once written,
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
    /// The upload limit stopped us serving this turn: wait a little instead of spinning.
    upload_throttled: bool,
    /// Blocks of this turn's read not yet reported: they go to the coordinator in one event at
    /// the end of the read, when [`MAX_BLOCKS_PER_EVENT`] have gathered, or before any other
    /// event (so the coordinator sees everything in the order the peer sent it).
    received: Vec<(BlockRef, BlockData)>,
    /// Pieces the peer announced and we have not reported yet: they go in one event when
    /// [`HAVE_GATHER`] has passed since the first of them, when [`MAX_HAVES_PER_EVENT`] have
    /// gathered, or before any other event but blocks.
    haves: Vec<u32>,
    /// When `haves` must be reported (set by the first of them; meaningless while none wait).
    haves_due: Instant,
}

impl<'a> Session<'a> {
    fn new(
        ctx: &'a TorrentContext,
        peer: PeerKey,
        addr: SocketAddr,
        commands: Receiver<PeerCommand>,
        stats: Arc<PeerStats>,
    ) -> Self {
        Self {
            ctx,
            peer,
            addr,
            commands,
            stats,
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
            received: Vec::new(),
            haves: Vec::new(),
            haves_due: Instant::now(),
            upload_queue: VecDeque::new(),
            upload_throttled: false,
        }
    }

    /// Waits for the coordinator's `Start` (our bitfield), which must be our first message.
    fn start(&mut self, conn: &mut Connection) -> Result<(), PeerError> {
        // A write that makes no progress this long means the peer stopped reading: without it
        // a peer that never reads would hold this thread in `write` forever.
        let _ = conn
            .stream()
            .set_write_timeout(Some(self.ctx.write_timeout()));
        match self.commands.recv_timeout(Duration::from_secs(30)) {
            Ok(PeerCommand::Start {
                pieces,
                upload_only,
            }) => {
                if self.fast && pieces.is_full() {
                    debug!("peer {}: -> have all", self.addr);
                    conn.queue(&Message::HaveAll);
                } else if self.fast && pieces.count_ones() == 0 {
                    debug!("peer {}: -> have none", self.addr);
                    conn.queue(&Message::HaveNone);
                } else if pieces.count_ones() > 0 {
                    conn.queue(&Message::Bitfield(pieces.as_bytes().to_vec()));
                }
                self.our_pieces = pieces;
                if self.dht
                    && let Some(dht) = &self.ctx.dht
                {
                    conn.queue(&Message::Port(dht.port()));
                }
                if self.extended {
                    let ours = ExtendedHandshake {
                        m: self.our_extensions(),
                        metadata_size: Some(self.ctx.info_bytes.len() as u64),
                        reqq: Some(ADVERTISED_REQQ),
                        e: Some(self.ctx.limits.encryption.get() != Encryption::Tolerated),
                        upload_only: Some(upload_only),
                        ..connection::our_extended_handshake(self.addr, self.ctx.listen_port)
                    };
                    conn.queue_extended_handshake(&ours);
                }
                Ok(())
            }
            Ok(PeerCommand::Shutdown) => Err(PeerError::Dropped),
            Ok(_) => Err(PeerError::CommandOutOfOrder("a command before Start")),
            Err(_) => Err(PeerError::CoordinatorGone),
        }
    }

    fn drain_commands(&mut self, out: &mut Vec<u8>) -> Result<(), PeerError> {
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.obey(cmd, out)?,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(PeerError::CoordinatorGone),
            }
        }
    }

    fn obey(&mut self, cmd: PeerCommand, out: &mut Vec<u8>) -> Result<(), PeerError> {
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
                    connection::encode_extended(id, &pex.encode(), out);
                }
            }
            PeerCommand::Shutdown => return Err(PeerError::Dropped),
            PeerCommand::Start { .. } => {
                return Err(PeerError::CommandOutOfOrder("Start twice"));
            }
        }
        Ok(())
    }

    /// Reads queued requests from disk straight into the send buffer, up to one batch.
    fn serve_uploads(&mut self, out: &mut Vec<u8>) -> Result<(), PeerError> {
        self.upload_throttled = false;
        let now = Instant::now();
        while out.len() < UPLOAD_BATCH_BYTES {
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
            let start = out.len();
            encode_piece_header(block.piece, block.offset, block.len, out);
            let data_start = start + PIECE_HEADER_LEN;
            out.resize(data_start + block.len as usize, 0);
            if let Err(e) = self
                .ctx
                .storage
                .read(block.piece, block.offset, &mut out[data_start..])
            {
                // Nothing wrong goes to the peer: drop the half-built message and the peer.
                // The coordinator logs it and rechecks the torrent's data.
                out.truncate(start);
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

    /// What was in the send buffer is written: its payload counts as uploaded.
    fn count_flushed(&mut self) {
        let payload = std::mem::take(&mut self.unflushed_payload);
        if payload > 0 {
            self.stats.add_uploaded(payload);
            self.ctx
                .stats
                .uploaded
                .fetch_add(payload, Ordering::Relaxed);
        }
    }

    /// How long the next read may block: with uploads waiting, only take what is already there
    /// (the peer may have nothing more to say while it waits for our data); never past the time
    /// gathered `have`s are due.
    fn read_timeout(&self) -> Duration {
        let busy = !self.upload_queue.is_empty() && !self.am_choking;
        let wait = if self.upload_throttled {
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
        if self.haves.is_empty() {
            return wait;
        }
        // A zero timeout would mean none at all.
        wait.min(
            self.haves_due
                .saturating_duration_since(Instant::now())
                .max(Duration::from_micros(1)),
        )
    }

    /// A piece message's block: counted, then gathered for the coordinator.
    fn on_block(&mut self, piece: u32, offset: u32, data: BlockData) -> Result<(), PeerError> {
        let len = u32::try_from(data.len()).expect("decoder bounds piece messages");
        self.stats.add_downloaded(data.len() as u64);
        self.ctx
            .stats
            .downloaded
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        trace!("peer {}: <- piece {piece}+{offset} ({len} B)", self.addr);
        self.received
            .push((BlockRef::new(piece, offset, len), data));
        if self.received.len() >= MAX_BLOCKS_PER_EVENT {
            self.send_received()?;
        }
        Ok(())
    }

    /// Reports the blocks gathered, if any, in one event.
    fn send_received(&mut self) -> Result<(), PeerError> {
        if self.received.is_empty() {
            return Ok(());
        }
        // The next read likely brings as many: room for them, not four regrowths per batch.
        let next = Vec::with_capacity(self.received.len());
        let blocks = std::mem::replace(&mut self.received, next);
        self.send(PeerEvent::BlocksReceived {
            peer: self.peer,
            blocks,
        })
    }

    /// Gathers a piece the peer announced, for [`Self::send_haves`].
    fn gather_have(&mut self, piece: u32) -> Result<(), PeerError> {
        if self.haves.is_empty() {
            self.haves_due = Instant::now() + HAVE_GATHER;
        }
        self.haves.push(piece);
        if self.haves.len() >= MAX_HAVES_PER_EVENT {
            self.send_haves()?;
        }
        Ok(())
    }

    /// Reports the pieces the peer announced since the last report, if any, in one event.
    fn send_haves(&mut self) -> Result<(), PeerError> {
        if self.haves.is_empty() {
            return Ok(());
        }
        let pieces = std::mem::take(&mut self.haves);
        self.send(PeerEvent::Haves {
            peer: self.peer,
            pieces,
        })
    }

    /// Reports `event`, after the blocks and `have`s that came before it.
    fn report(&mut self, event: PeerEvent) -> Result<(), PeerError> {
        self.send_received()?;
        self.send_haves()?;
        self.send(event)
    }

    fn send(&self, event: PeerEvent) -> Result<(), PeerError> {
        self.ctx
            .events
            .send(event)
            .map_err(|_| PeerError::CoordinatorGone)
    }

    fn handle(&mut self, msg: Message, out: &mut Vec<u8>) -> Result<(), PeerError> {
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
                    return Err(PeerError::PieceOutOfRange { piece });
                }
                self.gather_have(piece)?;
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
            Message::Request(block) => self.on_request(block, out)?,
            Message::Piece {
                piece,
                offset,
                data,
            } => self.on_block(piece, offset, BlockData::copy_of(&data))?,
            Message::Cancel(block) => self.upload_queue.retain(|b| *b != block),
            Message::Unknown {
                id: EXTENDED_ID,
                payload,
            } if self.extended => self.on_extended(&payload, out)?,
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
                return Err(PeerError::FastWithoutBit);
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

    fn on_extended(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), PeerError> {
        let Some((&ext_id, dict)) = payload.split_first() else {
            return Err(PeerError::BadExtended {
                extension: "extended message",
                reason: "empty".into(),
            });
        };
        if ext_id == OUR_UT_METADATA_ID {
            return self.on_metadata_message(dict, out);
        }
        if ext_id == OUR_UT_PEX_ID && !self.ctx.private {
            return match PexMessage::decode(dict) {
                Ok(pex) => self.report(PeerEvent::PexReceived {
                    peer: self.peer,
                    added: pex.added,
                }),
                Err(reason) => Err(PeerError::BadExtended {
                    extension: "ut_pex",
                    reason,
                }),
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
                    prefers_encryption: h.e == Some(true),
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
    fn on_metadata_message(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), PeerError> {
        let msg = MetadataMessage::decode(bytes).map_err(|reason| PeerError::BadExtended {
            extension: "ut_metadata",
            reason,
        })?;
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
        connection::encode_extended(their_id, &reply.encode(), out);
        Ok(())
    }

    /// Tells a fast peer we will not serve `block`; others learn it from silence.
    fn reject(&self, block: BlockRef, out: &mut Vec<u8>) {
        if self.fast {
            Message::Reject(block).encode(out);
        }
    }

    fn on_request(&mut self, block: BlockRef, out: &mut Vec<u8>) -> Result<(), PeerError> {
        if block.len > BLOCK_LEN {
            return Err(PeerError::OversizedRequest { len: block.len });
        }
        if self.am_choking {
            // Requests while choked are void; a racing request after our choke is normal.
            self.reject(block, out);
            return Ok(());
        }
        if !self.ctx.geometry.is_servable_request(&block) || !self.our_pieces.get(block.piece) {
            debug!(
                "peer {}: refusing request for {block:?} we do not have",
                self.addr
            );
            self.reject(block, out);
            return Ok(());
        }
        if self.upload_queue.len() >= MAX_UPLOAD_QUEUE {
            return Err(PeerError::RequestFlood);
        }
        self.upload_queue.push_back(block);
        Ok(())
    }
}

impl Handler for Session<'_> {
    fn before_read(&mut self, conn: &mut Connection) -> Result<(), PeerError> {
        if !self.haves.is_empty() && Instant::now() >= self.haves_due {
            self.send_haves()?;
        }
        self.drain_commands(conn.out())?;
        self.serve_uploads(conn.out())
    }

    fn plan_read(&mut self, space: usize) -> Option<ReadPlan> {
        let timeout = self.read_timeout();
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
            return None;
        }
        Some(ReadPlan {
            timeout,
            max_bytes: allowed,
        })
    }

    fn after_read(&mut self, allowed: usize, got: usize) {
        self.ctx.download_limits().give_back(allowed - got);
    }

    fn on_message(&mut self, conn: &mut Connection, msg: Message) -> Result<(), PeerError> {
        self.handle(msg, conn.out())
    }

    fn on_piece(&mut self, piece: u32, offset: u32, data: &[u8]) -> Result<(), PeerError> {
        self.received_any = true;
        self.on_block(piece, offset, BlockData::copy_of(data))
    }

    fn on_decoded(&mut self) -> Result<(), PeerError> {
        self.send_received()
    }

    fn on_flushed(&mut self) {
        self.count_flushed();
    }
}
