//! Peer connections: one OS thread per peer, each owning its socket. This module holds what
//! crosses the channels between a peer thread and its torrent's coordinator, the one error type
//! of a peer connection ([`PeerError`], the torrent's and the metadata fetch's), and the
//! functions that spawn peer threads for outgoing and incoming connections. The stream is made
//! in `conn.rs`, the connection it carries runs in `connection.rs`, and the torrent session's
//! handler of its messages is `session.rs`. A peer thread never touches picker state; it
//! reports facts ([`PeerEvent`]) and obeys orders ([`PeerCommand`]).

pub mod conn;
pub mod connection;
pub mod events;
pub mod mse;
mod session;
pub mod web_seed;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::metainfo::{Geometry, InfoHash};
use crate::profile::{self, Role};
use crate::ratelimit::{Limits, RateChain, RateLimiter};
use crate::storage::Storage;
use crate::torrent::TorrentStats;
use crate::torrent::picker::PeerKey;
use crate::torrent::piece_buffer::BlockData;
use crate::wire::extension::{PexMessage, PexPeer};
use crate::wire::{Bitfield, BlockRef, WireError};

pub use session::{MAX_UPLOAD_QUEUE, PEER_STACK_BYTES, run_incoming};

/// Facts a peer thread reports, in the past tense. The coordinator decides what they mean.
#[derive(Debug)]
pub enum PeerEvent {
    /// The handshake succeeded. The coordinator answers with `Start` (or `Shutdown`).
    Connected {
        peer: PeerKey,
        addr: SocketAddr,
        peer_id: [u8; 20],
        incoming: bool,
        /// Both sides set the fast-extension bit (BEP 6): the peer rejects what it will not
        /// serve, so its choke does not void our requests.
        fast: bool,
        /// The connection went through an MSE handshake (RC4 or header-only): the peer speaks
        /// encryption, which our PEX messages tell others (flag 0x01).
        encrypted: bool,
        commands: Sender<PeerCommand>,
        /// A handle on the stream, so the coordinator can unblock the thread by closing it.
        handle: conn::StreamHandle,
        stats: Arc<PeerStats>,
    },
    /// An outgoing connection or its handshake failed before `Connected`.
    ConnectFailed {
        peer: PeerKey,
        addr: SocketAddr,
        reason: PeerError,
    },
    /// The peer's full piece set (a bitfield; later ones replace the earlier).
    Bitfield {
        peer: PeerKey,
        pieces: Bitfield,
    },
    /// Pieces the peer announced with `have`, in the order it sent them, gathered for up to
    /// `session::HAVE_GATHER`: a leecher sends one per piece it finishes (a thousand a second
    /// from a fast one), and each event wakes the coordinator.
    Haves {
        peer: PeerKey,
        pieces: Vec<u32>,
    },
    /// The peer will not serve this request (BEP 6 reject).
    RequestRejected {
        peer: PeerKey,
        block: BlockRef,
    },
    /// The peer's extended handshake (BEP 10).
    ExtendedHandshake {
        peer: PeerKey,
        /// Its request queue limit, if it said.
        reqq: Option<u32>,
        /// Its listen port, if it said.
        listen_port: Option<u16>,
        client: Option<String>,
        /// It takes peer exchange (BEP 11) messages.
        pex: bool,
        /// It prefers encrypted connections (`e=1`).
        prefers_encryption: bool,
        /// It only uploads (BEP 21 `upload_only`).
        upload_only: bool,
    },
    /// Peers the peer told us about (BEP 11 `added`).
    PexReceived {
        peer: PeerKey,
        added: Vec<PexPeer>,
    },
    Choked {
        peer: PeerKey,
    },
    Unchoked {
        peer: PeerKey,
    },
    Interested {
        peer: PeerKey,
    },
    NotInterested {
        peer: PeerKey,
    },
    /// Blocks' data, moved, never shared: each copied once from the read buffer, they go on
    /// into their pieces and to the disk as they are. A session sends the blocks of one read
    /// together, at most [`MAX_BLOCKS_PER_EVENT`], in the order they came; each block counts
    /// against the event budget ([`PeerEvent::weight`]).
    BlocksReceived {
        peer: PeerKey,
        blocks: Vec<(BlockRef, BlockData)>,
    },
    /// The thread is ending; sent exactly once after `Connected`, also when the thread panics.
    Disconnected {
        peer: PeerKey,
        reason: PeerError,
    },
}

/// Blocks a session sends in one [`PeerEvent::BlocksReceived`] at most: the blocks of one read
/// of the 512 KiB buffer, one wake-up of the coordinator instead of one per block.
pub const MAX_BLOCKS_PER_EVENT: usize = 32;

impl PeerEvent {
    /// Room the event takes in the torrent's event budget: a block each for received blocks
    /// (so the budget bounds the block bytes queued, batched or not), 1 for anything else.
    #[must_use]
    pub fn weight(&self) -> usize {
        match self {
            Self::BlocksReceived { blocks, .. } => blocks.len().max(1),
            _ => 1,
        }
    }
}

/// Orders for one peer thread, in the imperative.
#[derive(Debug)]
pub enum PeerCommand {
    /// First command after `Connected`: send our bitfield (if not empty) and start;
    /// `upload_only`: we have every piece we want, and say so (BEP 21).
    Start {
        pieces: Bitfield,
        upload_only: bool,
    },
    Request(Vec<BlockRef>),
    Cancel(Vec<BlockRef>),
    /// Announce a piece we verified and wrote; from now on it may be served.
    Have(u32),
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    /// Send a peer-exchange message (if the peer takes them).
    Pex(PexMessage),
    Shutdown,
}

/// How the coordinator hangs up on a peer thread, which may be blocked in a read: a peer's
/// stream is shut down; a web seed (which has no socket of its own while idle, and whose HTTP
/// connections live inside attohttpc) has a flag it looks at between requests and while idle.
/// An enum rather than an `Option<StreamHandle>`, so every hang-up is one call that cannot
/// forget the web seed.
#[derive(Debug)]
pub enum PeerLink {
    Stream(conn::StreamHandle),
    Web(Arc<std::sync::atomic::AtomicBool>),
}

impl PeerLink {
    /// Makes the peer thread end soon: it sends `Disconnected` as it does.
    pub fn close(&self) {
        match self {
            Self::Stream(handle) => handle.close(),
            Self::Web(closed) => closed.store(true, Ordering::Relaxed),
        }
    }

    /// Our end's address (a peer connection's only).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Stream(handle) => handle.local_addr(),
            Self::Web(_) => None,
        }
    }
}

/// Byte counters of one connection, which its thread updates and the coordinator samples for
/// rates. The torrent's totals are counted separately, at the same moments, in
/// [`TorrentContext::stats`], so they stay whole after the peer leaves.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Payload bytes received in piece messages.
    pub downloaded: AtomicU64,
    /// Payload bytes of piece messages written to the socket.
    pub uploaded: AtomicU64,
}

impl PeerStats {
    pub(crate) fn add_downloaded(&self, n: u64) {
        self.downloaded.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_uploaded(&self, n: u64) {
        self.uploaded.fetch_add(n, Ordering::Relaxed);
    }
}

/// Why a peer connection ended, for the torrent session and the metadata fetch alike.
/// Recoverable: the torrent (or the fetch) goes on without this peer. Callers decide on the
/// variant, never on the text.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// The peer's 68 bytes are not a BitTorrent handshake.
    #[error("handshake: {0}")]
    Handshake(WireError),
    /// The handshake carried our own peer id: we dialled ourselves (an address of ours, or one
    /// a tracker or peer handed back to us).
    #[error("handshake: our own peer id")]
    SelfConnection,
    /// The peer's handshake named another torrent than the one we dialled it for.
    #[error("handshake: wrong info hash")]
    WrongInfoHash,
    /// The encryption handshake (MSE) failed.
    #[error("encryption handshake: {0}")]
    Encryption(#[from] mse::MseError),
    /// A plaintext handshake while `[network] encryption` is `required`.
    #[error("plaintext handshake refused: encryption is required")]
    PlaintextRefused,
    #[error("read failed: {0}")]
    Read(std::io::Error),
    #[error("write failed: {0}")]
    Write(std::io::Error),
    #[error("connection closed by peer")]
    Closed,
    #[error("bad message: {0}")]
    Wire(#[from] WireError),
    /// A `have` for a piece the torrent does not have.
    #[error("protocol violation: have for piece {piece} out of range")]
    PieceOutOfRange { piece: u32 },
    /// `have all`, `have none` or `reject` from a peer that did not set the fast bit (BEP 6).
    #[error("protocol violation: fast-extension message from a peer without the fast bit")]
    FastWithoutBit,
    /// An extended message (BEP 10) we offered that does not decode: `extension` names it.
    #[error("protocol violation: {extension}: {reason}")]
    BadExtended {
        extension: &'static str,
        reason: String,
    },
    /// A request for more than a block (16 KiB).
    #[error("protocol violation: request of {len} bytes")]
    OversizedRequest { len: u32 },
    /// More requests queued than we serve at once.
    #[error("protocol violation: request flood")]
    RequestFlood,
    /// Our side's orders came out of order (a bug of ours, not the peer's fault).
    #[error("coordinator sent {0} out of order")]
    CommandOutOfOrder(&'static str),
    /// The peer did not set the extension-protocol bit (BEP 10), which the metadata fetch needs.
    #[error("does not speak the extension protocol (BEP 10)")]
    NoExtensions,
    /// The peer's extended handshake did not come in time.
    #[error("no extended handshake within {0:?}")]
    NoExtendedHandshake(Duration),
    /// The peer's extended handshake does not offer `ut_metadata` (BEP 9).
    #[error("does not offer ut_metadata")]
    NoUtMetadata,
    /// The peer's extended handshake has no `metadata_size`: it has no metadata to share.
    #[error("has no metadata to share (no metadata_size)")]
    NoMetadataSize,
    /// A `metadata_size` outside what we fetch: nothing was allocated for it.
    #[error("metadata_size {size} is outside 1..={max}")]
    BadMetadataSize { size: u64, max: u32 },
    #[error("no data for {0:?}")]
    Idle(Duration),
    /// Our side ended the connection: the coordinator dropped the peer, or the metadata fetch
    /// stopped asking it.
    #[error("dropped by us")]
    Dropped,
    #[error("coordinator gone")]
    CoordinatorGone,
    #[error("peer thread panicked")]
    Panicked,
    /// We could not read a piece we announced (a file deleted, truncated or unreadable): the
    /// peer is dropped before any of it is sent, and the torrent rechecks its data.
    #[error("cannot serve piece {piece}: {error}")]
    ServeFailed { piece: u32, error: String },
}

impl PeerError {
    /// The peer broke the rules (bad messages, a protocol violation, an absurd
    /// `metadata_size`): an address not to dial again. Everything else (refused, closed, timed
    /// out, not offering what we need) may be tried again later.
    #[must_use]
    pub fn is_misbehaviour(&self) -> bool {
        matches!(
            self,
            Self::Wire(_)
                | Self::PieceOutOfRange { .. }
                | Self::FastWithoutBit
                | Self::BadExtended { .. }
                | Self::OversizedRequest { .. }
                | Self::RequestFlood
                | Self::BadMetadataSize { .. }
        )
    }
}

/// What every peer thread of one torrent shares.
pub struct TorrentContext {
    pub info_hash: InfoHash,
    pub our_id: [u8; 20],
    pub geometry: Geometry,
    pub storage: Arc<Storage>,
    pub events: events::EventSender,
    /// The process-wide rate limits and peer budget.
    pub limits: Arc<Limits>,
    /// Our listen port, told to peers in the extended handshake.
    pub listen_port: u16,
    /// The raw info dictionary, served to peers that ask (BEP 9).
    pub info_bytes: Arc<[u8]>,
    /// A private torrent (BEP 27): no peer exchange.
    pub private: bool,
    /// The torrent's counters: peer threads add every payload byte they move and reserve
    /// uploads from its allowance.
    pub stats: Arc<TorrentStats>,
    /// The torrent's own download and upload rates (0: none), inside the process's.
    pub download_rate: RateLimiter,
    pub upload_rate: RateLimiter,
    /// Milliseconds a socket write may make no progress before the peer is dropped (it stopped
    /// reading). Atomic so a config reload reaches sessions started afterwards.
    pub write_timeout_ms: AtomicU64,
    /// Every peer thread of the torrent holds a clone of this sender while it runs; the
    /// coordinator holds the receiver and, at its stop, takes this one away and waits for the
    /// channel to disconnect (the last peer thread ended), within its stop budget (as
    /// `watched.rs` does for one thread). `None` once the torrent stops: no new peer thread.
    pub peer_threads: parking_lot::Mutex<Option<Sender<()>>>,
    /// The process's DHT, for a public torrent: our handshakes set the DHT bit, peers that set
    /// it get our `port` message, and theirs adds their node (BEP 5). `None` for a private one.
    pub dht: Option<crate::dht::DhtHandle>,
}

impl TorrentContext {
    /// The buckets a download must pass: the torrent's, then the process's.
    pub fn download_limits(&self) -> RateChain<'_> {
        RateChain {
            inner: &self.download_rate,
            outer: &self.limits.download,
        }
    }

    /// The buckets an upload must pass: the torrent's, then the process's.
    pub fn upload_limits(&self) -> RateChain<'_> {
        RateChain {
            inner: &self.upload_rate,
            outer: &self.limits.upload,
        }
    }

    /// A token for a new peer thread to hold while it runs; `None` once the torrent stops.
    pub fn peer_thread_token(&self) -> Option<Sender<()>> {
        self.peer_threads.lock().clone()
    }

    /// No new peer thread from now on; the coordinator's receiver disconnects when the last
    /// running one ends.
    pub fn close_peer_threads(&self) {
        self.peer_threads.lock().take();
    }

    /// How long a peer socket write may make no progress.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms.load(Ordering::Relaxed).max(1))
    }

    /// Sets [`TorrentContext::write_timeout`] for sessions started from now on.
    pub fn set_write_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.write_timeout_ms.store(ms, Ordering::Relaxed);
    }
}

/// Process-wide peer numbering, so keys from the listener and from the coordinator never clash.
static NEXT_PEER_KEY: AtomicU64 = AtomicU64::new(1);

/// A fresh, never reused peer key.
pub fn next_peer_key() -> PeerKey {
    NEXT_PEER_KEY.fetch_add(1, Ordering::Relaxed)
}

/// Spawns thread "peer ADDR" that connects to `addr` (from `bind` when given, within
/// `connect_timeout`), handshakes and runs the session; `prefers_encryption` (the peer is known
/// to prefer encryption) dials it encrypted first even in `tolerated` mode. The socket is made here, on the
/// caller's thread; the returned clone of it lets the caller abort the connect (`shutdown`).
///
/// # Errors
/// When the socket cannot be made, the torrent is stopping, or the thread cannot be spawned.
pub fn spawn_outgoing(
    ctx: Arc<TorrentContext>,
    peer: PeerKey,
    addr: SocketAddr,
    bind: Option<IpAddr>,
    connect_timeout: Duration,
    prefers_encryption: bool,
) -> std::io::Result<TcpStream> {
    let alive = ctx
        .peer_thread_token()
        .ok_or_else(|| std::io::Error::other("the torrent is stopping"))?;
    let socket = conn::open_socket(addr, bind)?;
    let handle = TcpStream::from(socket.try_clone()?);
    std::thread::Builder::new()
        .name(format!("peer {addr}"))
        .stack_size(session::PEER_STACK_BYTES)
        .spawn(move || {
            let _alive = alive;
            profile::run_as(Role::Peer, || {
                session::run_outgoing(
                    &ctx,
                    peer,
                    addr,
                    socket,
                    bind,
                    connect_timeout,
                    prefers_encryption,
                );
            });
        })?;
    Ok(handle)
}
