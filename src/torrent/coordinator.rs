//! The coordinator: thread "torrent NAME", one per torrent. It alone owns the picker, the piece
//! buffers, the peer table and the address book. It reacts to peer events, disk results,
//! tracker peer lists, control messages and a timer; it never blocks on a socket or a disk
//! (it only `try_send`s to peers and hands pieces to the disk threads).
//!
//! A seeding torrent with nothing going on for [`PARK_AFTER`] (or since its run began) parks
//! (`parking.rs`): its thread ends and its state waits behind the torrent's doorbell, which every
//! channel into it rings, so a peer connecting, a control message, tracker peers or a changed
//! file start a thread again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use log::{debug, error, info, warn};

use super::admission;
use super::choker::{self, CHOKE_INTERVAL, Candidate, OPTIMISTIC_INTERVAL};
use super::disk::{self, DiskJob, DiskQueue, DiskResult};
use super::file_check::FileCheckRegistration;
use super::parking::{Doorbell, Resume};
use super::picker::{PeerKey, Picker, Received, saturating_u32};
use super::piece_buffer::{
    Blame, BlockData, CompletePiece, PieceBuffers, PieceData, blame_after_refetch, blame_on_failure,
};
use super::{
    Control, PeerInfo, PeerSource, PeersBySource, ResumeTarget, TorrentEvent, TorrentHandle,
    TorrentParams, TorrentStats,
};
use crate::metainfo::Metainfo;
use crate::peer::conn::StreamHandle;
use crate::peer::web_seed::{self, WEB_SEED_PIPELINE, WebSeedTimeouts};
use crate::peer::{self, PeerCommand, PeerError, PeerEvent, PeerLink, PeerStats, TorrentContext};
use crate::profile::{self, LoopStats, Role};
use crate::ratelimit::{Limits, PeerPermit, RateLimiter};
use crate::selection::{self, Selection};
use crate::storage::Storage;
use crate::tracker::announcer::{self, AnnounceStats, AnnouncerCommand, AnnouncerConfig};
use crate::tracker::{Tiers, TrackerPeers};
use crate::watched;
use crate::wire::extension::{PexFlags, PexMessage, PexPeer};
use crate::wire::{BLOCK_LEN, Bitfield, BlockRef};

const TICK: Duration = Duration::from_millis(500);
/// The tick of a torrent with nothing going on (no peer, nothing being dialled, written or
/// saved): it wakes this seldom, so thousands of idle torrents cost next to no CPU (10,000 of
/// them: 170 wake-ups a second). Any event brings the next tick back within [`TICK`].
const IDLE_TICK: Duration = Duration::from_secs(60);
/// A seeding torrent with nothing going on this long parks: its thread ends until something
/// comes in (see the module documentation).
const PARK_AFTER: Duration = Duration::from_secs(2);
/// Peer events handled per wake-up before the other channels get a look.
const EVENT_BATCH: usize = 256;
/// Capacity of the peer -> coordinator channel: a slow coordinator pushes back on peers' reads.
/// Room is taken as events are sent (`peer::events`), so an idle torrent holds none of it; 512
/// blocks are 8 MiB of data in flight, 20 ms at 400 MB/s.
const EVENTS_CAPACITY: usize = 512;
/// Most commands queued for one peer thread; a peer that lets more pile up is dropped.
const PEER_COMMANDS_CAPACITY: usize = 1024;
/// Most requests we keep outstanding with a peer whose queue limit (`reqq`) we do not know.
const MAX_PIPELINE: usize = 250;
/// Most requests we keep outstanding with any peer, whatever `reqq` it advertises.
const MAX_PIPELINE_KNOWN_REQQ: usize = 1000;
const MIN_PIPELINE: usize = 16;
/// Most requests outstanding with all of a torrent's peers together, in blocks (16 MiB): what
/// is requested ends up in piece buffers, so this bounds the memory of a fast download from
/// many peers. One peer alone still gets its whole pipeline ([`MAX_PIPELINE_KNOWN_REQQ`]).
const MAX_REQUESTED_BLOCKS: usize = 1024;
const INITIAL_PIPELINE: usize = 64;
/// Seconds of a peer's rate we keep requested from it.
const PIPELINE_SECONDS: u64 = 1;
/// A peer that sends no requested block for this long has its requests given to others.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes of verified-pending pieces we let queue for the disk threads before pausing requests.
const MAX_DISK_BACKLOG_BYTES: usize = 16 * 1024 * 1024;
/// Bytes of blocks held (in pieces in flight and with the disk threads) beyond which no new
/// piece is started, only those in flight are finished: memory is bounded by bytes, not by
/// pieces, so big pieces cost no more than small ones. With the requests outstanding
/// ([`MAX_REQUESTED_BLOCKS`]) and one piece, what a torrent's download holds at most.
const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;
/// Hash failures attributed to one address before we ban it.
const BAN_AFTER_STRIKES: u32 = 2;
/// Peers that left whose addresses we remember, so a hash failure found after its sender hung
/// up still counts against the sender's address.
const MAX_DEPARTED: usize = 4096;
/// Below this many connected peers a leeching torrent asks the tracker for more.
const STARVED_PEERS: usize = 5;
const RETRY_BASE: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// The longest an address that failed waits for its next dial while the torrent downloads with
/// fewer than [`STARVED_PEERS`] peers: a seeder that turned us away (still checking its data,
/// or full for a moment) is worth another try soon when it is all there is, not in a minute.
const RETRY_STARVED_MAX: Duration = Duration::from_secs(8);
/// Peer-exchange messages go to each peer at most this often (BEP 11).
const PEX_INTERVAL: Duration = Duration::from_secs(60);
/// Most peers one PEX message describes.
const MAX_PEX_PEERS: usize = 50;
/// Most addresses we remember per torrent (tracker and PEX answers are bounded by it).
const MAX_KNOWN_ADDRS: usize = 2000;
/// Resume data is saved at most this often while pieces complete (and at completion and stop).
const RESUME_SAVE_INTERVAL: Duration = Duration::from_secs(5);
/// Blocks in a row we never asked for before we drop the peer. After a cancel or a choke an
/// honest peer may still send what it had queued, at most a full pipeline.
const MAX_UNREQUESTED_STREAK: usize = MAX_PIPELINE_KNOWN_REQQ + 64;
/// At stop, how long we wait for our pieces still with the disk pool.
const DISK_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn start(params: TorrentParams) -> std::io::Result<TorrentHandle> {
    let doorbell = Arc::new(Doorbell::default());
    let (events_tx, events_rx) =
        crate::peer::events::ringing(EVENTS_CAPACITY, Arc::clone(&doorbell));
    // Unbounded: the daemon sends a few, seldom, and must never wait on a busy coordinator; a
    // bounded channel would hold its slots for every idle torrent.
    let (control_tx, control_rx) = crossbeam_channel::unbounded();
    let (torrent_events_tx, torrent_events_rx) = crossbeam_channel::unbounded();
    let meta = Arc::clone(&params.meta);
    let stats = Arc::new(TorrentStats::default());
    stats
        .total_bytes
        .store(meta.geometry.total_len, Ordering::Relaxed);
    stats.set_upload_allowance(params.upload_allowance);
    let (peer_alive, peer_threads_ended) = crossbeam_channel::bounded::<()>(0);
    let context = Arc::new(TorrentContext {
        info_hash: meta.info_hash,
        our_id: params.peer_id,
        geometry: meta.geometry,
        storage: Arc::clone(&params.storage),
        events: events_tx,
        limits: Arc::clone(&params.global),
        listen_port: params.listen_port,
        info_bytes: Arc::clone(&meta.info_bytes),
        private: meta.private,
        stats: Arc::clone(&stats),
        download_rate: RateLimiter::new(0),
        upload_rate: RateLimiter::new(0),
        write_timeout_ms: Default::default(),
        peer_threads: parking_lot::Mutex::new(Some(peer_alive)),
        dht: params.dht.clone().filter(|_| !meta.private),
    });
    context.set_write_timeout(params.limits.write_timeout);
    let name = meta.name.clone();
    // Built here, on the caller's thread, and moved to the new one boxed: its start-up (the
    // struct, the picker, registrations, the RNG's seed from the OS) would otherwise touch
    // pages of the new thread's stack that stay resident for the torrent's whole run, 8 KiB of
    // 20 per idle torrent, 80 MiB at 10,000 torrents.
    // The run ends when `alive`, which the coordinator carries from thread to thread, drops.
    let (alive, thread) = watched::token();
    let coordinator = Box::new(Coordinator::new(
        params,
        Channels {
            context: Arc::clone(&context),
            stats: Arc::clone(&stats),
            events: events_rx,
            control: control_rx,
            torrent_events: torrent_events_tx,
            peer_threads_ended,
            doorbell: Arc::clone(&doorbell),
            alive,
        },
    ));
    coordinator.log_started();
    if coordinator.parkable() && coordinator.addrs.is_empty() {
        // A seed whose resume data stands, with no peer to dial: nothing to do until something
        // comes in, so no thread either (a restart of 10,000 seeds starts none).
        debug!("torrent {name}: starts parked");
        let doorbell = Arc::clone(&doorbell);
        doorbell
            .begin_park()
            .park(Resume::new(move || resume(coordinator)));
    } else {
        std::thread::Builder::new()
            .name(format!("torrent {name}"))
            .spawn(move || profile::run_as(Role::Coordinator, move || coordinator.run()))?;
    }
    Ok(TorrentHandle {
        context,
        stats,
        events: torrent_events_rx,
        control: super::ControlSender {
            tx: Some(control_tx),
            doorbell: Arc::clone(&doorbell),
        },
        thread,
        doorbell,
    })
}

/// What a coordinator is built with besides its parameters.
struct Channels {
    context: Arc<TorrentContext>,
    stats: Arc<TorrentStats>,
    events: crate::peer::events::EventReceiver,
    control: Receiver<Control>,
    torrent_events: Sender<TorrentEvent>,
    peer_threads_ended: Receiver<()>,
    doorbell: Arc<Doorbell>,
    alive: Sender<()>,
}

/// Starts a thread that serves a parked coordinator again; on failure the coordinator comes
/// back in the `Err`, to be tried again at the next ring.
fn resume(coordinator: Box<Coordinator>) -> Result<(), Resume> {
    let name = format!("torrent {}", coordinator.name());
    let slot = Arc::new(parking_lot::Mutex::new(Some(coordinator)));
    let theirs = Arc::clone(&slot);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let Some(coordinator) = theirs.lock().take() else {
            return;
        };
        profile::run_as(Role::Coordinator, move || coordinator.serve());
    });
    match spawned {
        Ok(_) => Ok(()),
        Err(_) => {
            let coordinator = slot.lock().take().expect("the thread never started");
            Err(Resume::new(move || resume(coordinator)))
        }
    }
}

/// Where we stand with one address we may dial.
struct AddrInfo {
    connected: Option<PeerKey>,
    connecting: bool,
    failures: u32,
    retry_at: Instant,
    /// Last seen with every piece (or flagged a seed by PEX): no use dialling it once we are
    /// complete too.
    seed: bool,
    /// It prefers encryption: flagged so by PEX (0x01), or it said `e=1` or spoke MSE to us
    /// before. Dialled encrypted first whatever the mode (see `Encryption::for_peer`).
    prefers_encryption: bool,
    /// The first source that named it.
    source: PeerSource,
}

struct Peer {
    addr: SocketAddr,
    peer_id: [u8; 20],
    incoming: bool,
    /// Where its address came from.
    source: PeerSource,
    /// BEP 6 on both sides: its choke leaves our requests to its rejects.
    fast: bool,
    /// It takes peer exchange messages (BEP 11).
    pex: bool,
    /// It prefers encryption: it connected over MSE or said `e=1` (our PEX flag 0x01).
    prefers_encryption: bool,
    /// It said it only uploads (BEP 21 `upload_only`).
    upload_only: bool,
    /// Its listen port, from its extended handshake (an incoming peer's source port is not it).
    listen_port: Option<u16>,
    /// Its client's name, from its extended handshake's `v`.
    client: Option<String>,
    /// The addresses our last PEX message to it described as connected.
    pex_sent: HashSet<SocketAddr>,
    last_pex: Option<Instant>,
    commands: Sender<PeerCommand>,
    link: PeerLink,
    /// A web seed's URL (BEP 19): a peer with every piece, no socket, no address (`addr` is
    /// unspecified), kept out of admission, choking, PEX, the peer list and the peer budget.
    web_seed: Option<Arc<str>>,
    stats: Arc<PeerStats>,
    pieces: Bitfield,
    /// Pieces the peer has that we have not verified: we are interested while this is positive.
    wanted: u32,
    am_choking: bool,
    am_interested: bool,
    peer_choking: bool,
    peer_interested: bool,
    outstanding: HashSet<BlockRef>,
    /// Blocks in a row that we did not ask for (or no longer wanted); see
    /// [`MAX_UNREQUESTED_STREAK`].
    unrequested_streak: usize,
    pipeline: usize,
    /// The most requests the peer queues: its `reqq`, or a safe default without one.
    max_pipeline: usize,
    last_block_at: Instant,
    connected_at: Instant,
    /// When payload last moved either way (none yet: `None`).
    last_payload_at: Option<Instant>,
    /// When either side was last interested (the connection's start until one is).
    last_interest_at: Instant,
    /// BEP 40 priority of this connection: the tie-break when room must be made.
    priority: u32,
    /// Dropped to make room: it no longer counts against the limits.
    leaving: bool,
    /// Its slot in the process's peer budget (none for a web seed, or once handed to the
    /// newcomer it made room for).
    permit: Option<PeerPermit>,
    rate_down: u64,
    rate_up: u64,
    last_down: u64,
    last_up: u64,
}

impl Peer {
    /// Where it can be dialled: the address we dialled, or an incoming peer's address with the
    /// listen port of its extended handshake (`None` before that).
    fn dialable_addr(&self) -> Option<SocketAddr> {
        if self.incoming {
            Some(SocketAddr::new(self.addr.ip(), self.listen_port?))
        } else {
            Some(self.addr)
        }
    }

    /// The peer takes nothing from us: it has every piece, or said it only uploads (BEP 21).
    fn wants_nothing(&self) -> bool {
        self.upload_only || self.pieces.is_full()
    }
}

/// One web seed of the torrent (its thread stands in `peers` while `running`).
struct WebSeedState {
    url: String,
    running: bool,
    /// Bad pieces it sent; dropped for good at [`BAN_AFTER_STRIKES`].
    strikes: u32,
}

struct Coordinator {
    meta: Arc<Metainfo>,
    context: Arc<TorrentContext>,
    storage: Arc<Storage>,
    stats: Arc<TorrentStats>,
    params_bind: Option<IpAddr>,
    limits: super::TorrentLimits,
    global: Arc<Limits>,
    /// Outgoing connections not yet `Connected`: a clone of each socket (a `shutdown` aborts
    /// its connect) and its slot of the process's peer budget.
    dialing: HashMap<PeerKey, (TcpStream, PeerPermit)>,
    /// Disconnects when the last peer thread has ended (see `TorrentContext::peer_threads`).
    peer_threads_ended: Receiver<()>,
    resume: Option<ResumeTarget>,
    resume_dirty: bool,
    /// The resume file says what `have` holds and no piece was written this run: a stop then
    /// has nothing to sync or save (thousands of idle seeds stop without thousands of syncs).
    resume_clean: bool,
    /// A piece was written this run.
    wrote_piece: bool,
    last_resume_save: Instant,
    /// A `SaveResume` is on a disk thread. One at a time: two on different disk threads would
    /// share the `.tmp` name, and the older snapshot could land after the newer one.
    resume_saving: bool,
    /// Asked for while one was on a disk thread: sent when that one's result comes back.
    resume_again: bool,
    picker: Picker,
    buffers: PieceBuffers,
    have: Bitfield,
    peers: HashMap<PeerKey, Peer>,
    addrs: HashMap<SocketAddr, AddrInfo>,
    banned: HashSet<IpAddr>,
    /// The web seeds (BEP 19) this run started, by peer key; kept after they end, so a bad
    /// piece found later still counts against its URL.
    web_seeds: HashMap<PeerKey, WebSeedState>,
    /// Strikes by address, not by connection: a liar that reconnects keeps its strikes.
    strikes: HashMap<IpAddr, u32>,
    /// Addresses of the last [`MAX_DEPARTED`] peers that disconnected, oldest first.
    departed: VecDeque<(PeerKey, SocketAddr)>,
    /// Pieces that failed with several contributors: the bad copy, kept to compare.
    suspects: HashMap<u32, CompletePiece>,
    /// Who sent the blocks of each piece now with the disk threads.
    pending_senders: HashMap<u32, Vec<Option<PeerKey>>>,
    disk_backlog_bytes: usize,
    /// Our way into the process's disk pool; `None` once stopping.
    disk: Option<DiskQueue>,
    disk_results: Receiver<DiskResult>,
    /// Jobs queued whose result has not come back.
    disk_in_flight: usize,
    announcer: Option<announcer::Registration>,
    tracker_peers: Receiver<TrackerPeers>,
    /// Peers other discovery found (LSD), with their source.
    found_peers: Receiver<crate::lsd::FoundPeers>,
    /// Our local service discovery registration (public torrents, LSD on).
    _lsd: Option<crate::lsd::LsdRegistration>,
    events: crate::peer::events::EventReceiver,
    control: Receiver<Control>,
    torrent_events: Sender<TorrentEvent>,
    optimistic: Option<PeerKey>,
    last_choke: Instant,
    last_optimistic: Instant,
    last_tick: Instant,
    complete_announced: bool,
    /// When an incoming peer was last refused (it waits for a slot).
    last_refused: Option<Instant>,
    /// The trackers heard `completed` (once per run, and never for a run that started done).
    tracker_told_completed: bool,
    /// Which files are wanted (the picker's levels come from it).
    selection: Selection,
    syncing: bool,
    failed: bool,
    /// Our data changed on disk: the engine is told to recheck; we serve and save nothing.
    rechecking: bool,
    /// Our files in the process's file checker, which reports a change as
    /// `DiskResult::FileChanged`; dropped with the coordinator.
    _file_check: FileCheckRegistration,
    rng: rand::rngs::StdRng,
    /// Rung by every channel into us: resumes us when parked.
    doorbell: Arc<Doorbell>,
    /// Dropped with the coordinator: the end of its run, for the owner's `Watched`.
    _alive: Sender<()>,
    /// Since when we have been [`quiet`](Self::quiet): we park once that is [`PARK_AFTER`] ago
    /// and nothing is left to write.
    idle_since: Option<Instant>,
    /// The event loop's figures over the whole run (every thread it ran on).
    profile: LoopStats,
}

impl Coordinator {
    fn new(params: TorrentParams, channels: Channels) -> Self {
        let Channels {
            context,
            stats,
            events,
            control,
            torrent_events,
            peer_threads_ended,
            doorbell,
            alive,
        } = channels;
        let meta = params.meta;
        let (results_tx, disk_results) = crossbeam_channel::unbounded();
        let results_tx = disk::Results::new(results_tx, Arc::clone(&doorbell));
        let file_check = params
            .file_check
            .register(Arc::clone(&params.storage), results_tx.clone());
        let disk = params.disk.queue(Arc::clone(&params.storage), results_tx);
        let (peers_tx, tracker_peers) = crossbeam_channel::unbounded();
        // What we have, published before the announcer starts: its `started` reads `left`.
        let have = params.have;
        let verified_bytes: u64 = have
            .iter_ones()
            .map(|p| u64::from(meta.geometry.piece_len(p)))
            .sum();
        stats
            .verified_bytes
            .store(verified_bytes, Ordering::Relaxed);
        stats.have.lock().clone_from(&have);
        let mut picker = Picker::new(meta.geometry, &have);
        let levels = params.selection.piece_levels(&meta.geometry, &meta.files);
        stats.wanted_bytes.store(
            selection::wanted_bytes(&meta.geometry, &levels),
            Ordering::Relaxed,
        );
        picker.set_levels(levels);
        stats
            .left_bytes
            .store(picker.left_bytes(), Ordering::Relaxed);
        let tiers = Tiers::new(meta.announce.as_deref(), meta.announce_list.as_deref());
        let announcer = if tiers.is_empty() {
            None
        } else {
            let stats_for_tracker = Arc::clone(&stats);
            let config = AnnouncerConfig {
                name: meta.name.clone(),
                info_hash: meta.info_hash.0,
                peer_id: params.peer_id,
                port: params.listen_port,
                bind: params.bind,
                numwant: params.limits.numwant,
                timeout: params.limits.announce_timeout,
                stop_timeout: params.limits.stop_timeout,
                udp_retransmit_base: params.limits.udp_retransmit_base,
                scrape_interval: Some(announcer::SCRAPE_INTERVAL),
                addrs: params.our_addrs,
                encryption: params.global.encryption.get(),
            };
            let source = Arc::new(move || AnnounceStats {
                uploaded: stats_for_tracker.uploaded.load(Ordering::Relaxed),
                downloaded: stats_for_tracker.downloaded.load(Ordering::Relaxed),
                left: stats_for_tracker.left(),
            });
            let swarm = Arc::clone(&stats.swarm);
            Some(params.announce.register(
                tiers,
                config,
                source,
                swarm,
                peers_tx,
                Arc::clone(&doorbell),
            ))
        };
        let (found_tx, found_peers) = crossbeam_channel::unbounded();
        // BEP 27: a private torrent finds peers through its trackers only.
        let lsd = params.lsd.filter(|_| !meta.private).map(|lsd| {
            let sink = RingingSink {
                inner: crate::lsd::ChannelSink(found_tx),
                doorbell: Arc::clone(&doorbell),
            };
            lsd.register(meta.info_hash, Box::new(sink))
        });
        let now = Instant::now();
        let resume_current = params.resume.as_ref().is_some_and(|r| r.current);
        let mut c = Self {
            picker,
            selection: params.selection,
            buffers: PieceBuffers::new(meta.geometry),
            storage: params.storage,
            meta,
            context,
            stats,
            params_bind: params.bind,
            limits: params.limits,
            global: params.global,
            dialing: HashMap::new(),
            peer_threads_ended,
            resume: params.resume,
            // Record what the start-up check found at the first tick: after a check that
            // hashed (no or stale resume data), a crash before the next save would otherwise
            // mean hashing everything again, at every start until a clean stop.
            // (unless that is what the resume data it started from says).
            resume_dirty: !resume_current,
            resume_clean: resume_current,
            wrote_piece: false,
            last_resume_save: now.checked_sub(RESUME_SAVE_INTERVAL).unwrap_or(now),
            resume_saving: false,
            resume_again: false,
            have,
            peers: HashMap::new(),
            addrs: HashMap::new(),
            banned: HashSet::new(),
            web_seeds: HashMap::new(),
            strikes: HashMap::new(),
            departed: VecDeque::new(),
            suspects: HashMap::new(),
            pending_senders: HashMap::new(),
            disk_backlog_bytes: 0,
            disk: Some(disk),
            disk_results,
            disk_in_flight: 0,
            announcer,
            tracker_peers,
            found_peers,
            _lsd: lsd,
            events,
            control,
            torrent_events,
            optimistic: None,
            last_choke: now,
            last_optimistic: now,
            last_tick: now,
            complete_announced: false,
            tracker_told_completed: false,
            last_refused: None,
            syncing: false,
            failed: false,
            rechecking: false,
            _file_check: file_check,
            rng: rand::make_rng(),
            doorbell,
            _alive: alive,
            // Nothing has gone on yet: a new run parks as soon as it is quiet with nothing to
            // write, without first waiting `PARK_AFTER` on a thread of its own.
            idle_since: Instant::now().checked_sub(PARK_AFTER),
            profile: LoopStats::default(),
        };
        c.add_addrs(PeerSource::Manual, params.peers);
        // The selection may have changed while the data was checked: the files it wants and
        // the check kept out of the disk are created now (nothing to do otherwise).
        let wanted = c.selection.wanted(c.meta.files.len());
        // Only when a wanted file waits in the part file: a job's result would keep a block of
        // the results channel allocated for the torrent's whole run.
        if c.storage.wants_files_made(&wanted) {
            c.disk_send(DiskJob::WantFiles(wanted));
        }
        if c.picker.is_done() {
            // Complete before this run: `started` says so with left=0. `completed` is only for
            // a download that finishes while we run (trackers count it as a snatch).
            c.complete_announced = true;
            c.tracker_told_completed = true;
            c.stats.complete.store(true, Ordering::Relaxed);
        }
        c
    }

    fn name(&self) -> &str {
        &self.meta.name
    }

    fn log_started(&self) {
        info!(
            "torrent {}: started, {}/{} pieces verified",
            self.name(),
            self.picker.verified_count(),
            self.meta.geometry.num_pieces
        );
    }

    fn run(mut self: Box<Self>) {
        self.start_web_seeds();
        self.connect_more();
        self.serve();
    }

    /// The event loop, until the torrent stops (then its shutdown) or parks (then the thread
    /// ends and a ring calls this again on a new one).
    fn serve(mut self: Box<Self>) {
        let mut next_tick = Instant::now() + TICK;
        let mut profile = std::mem::take(&mut self.profile);
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            let mut woken = true;
            select! {
                recv(self.events.rx) -> event => {
                    if let Ok(event) = event {
                        let started = Instant::now();
                        profile.max_queue = profile.max_queue.max(self.events.len() + 1);
                        self.events.taken(event.weight());
                        self.on_peer_event(event);
                        let mut handled = 1;
                        // Take what else is queued before paying for another select.
                        for _ in 0..EVENT_BATCH {
                            let Ok(event) = self.events.rx.try_recv() else { break };
                            self.events.taken(event.weight());
                            self.on_peer_event(event);
                            handled += 1;
                        }
                        profile.events += handled;
                        profile.busy += started.elapsed();
                    }
                }
                recv(self.disk_results) -> result => {
                    if let Ok(result) = result {
                        self.on_disk_result(result);
                    }
                }
                recv(self.tracker_peers) -> found => match found {
                    Ok(found) => {
                        debug!("torrent {}: tracker gave {} peers", self.name(), found.peers.len());
                        self.add_addrs(PeerSource::Tracker, found.peers);
                        for addr in found.requires_encryption {
                            self.note_prefers_encryption(addr);
                        }
                        self.connect_more();
                    }
                    // No announcer (or it ended): a disconnected channel would wake us forever.
                    Err(_) => self.tracker_peers = crossbeam_channel::never(),
                },
                recv(self.found_peers) -> found => match found {
                    Ok((source, peers)) => {
                        debug!("torrent {}: {} gave {peers:?}", self.name(), source.name());
                        self.add_addrs(source, peers);
                        self.connect_more();
                    }
                    Err(_) => self.found_peers = crossbeam_channel::never(),
                },
                recv(self.control) -> control => match control {
                    Ok(Control::AddPeers(source, peers)) => {
                        self.add_addrs(source, peers);
                        self.connect_more();
                    }
                    Ok(Control::SetLimits(limits)) => {
                        if limits != self.limits {
                            info!("torrent {}: limits changed", self.name());
                        }
                        self.context.set_write_timeout(limits.write_timeout);
                        self.limits = limits;
                    }
                    Ok(Control::Reannounce) => self.announce(AnnouncerCommand::NeedPeers),
                    Ok(Control::Select(selection)) => self.select(selection),
                    Ok(Control::Stop) | Err(_) => break,
                },
                default(timeout) => woken = false,
            }
            profile.wakeups += 1;
            let now = Instant::now();
            if woken {
                // Something happened: an idle torrent's long tick ends.
                next_tick = next_tick.min(now + TICK);
            }
            if now >= next_tick {
                self.on_tick();
                next_tick = now + self.tick_interval();
            }
            if self.quiet() {
                let since = *self.idle_since.get_or_insert(now);
                if self.parkable() && now.duration_since(since) >= PARK_AFTER {
                    self.profile = profile;
                    match self.park() {
                        Ok(()) => return,
                        Err(me) => {
                            self = me;
                            profile = std::mem::take(&mut self.profile);
                        }
                    }
                }
            } else {
                self.idle_since = None;
            }
        }
        profile.log(self.name(), EVENTS_CAPACITY);
        self.shutdown();
    }

    /// Nothing going on and nothing to come but through a channel that rings our doorbell:
    /// [`quiet`](Self::quiet), and nothing on the disk or to save.
    fn parkable(&self) -> bool {
        self.quiet()
            && self.disk_in_flight == 0
            && !self.resume_dirty
            && !self.resume_saving
            && !self.syncing
    }

    /// Nothing going on with the outside: complete, no peer, nothing dialled, no web seed, not
    /// failed or to be checked again. What we wrote may still be on its way to the disk.
    fn quiet(&self) -> bool {
        self.picker.is_done()
            && self.peers.is_empty()
            && self.dialing.is_empty()
            && !self.failed
            && !self.rechecking
            && self.stats.web_seeds.load(Ordering::Relaxed) == 0
    }

    /// Parks: leaves this coordinator behind its doorbell and lets the thread end (`Ok`), unless
    /// something came in meanwhile (`Err`: go on).
    fn park(self: Box<Self>) -> Result<(), Box<Self>> {
        let doorbell = Arc::clone(&self.doorbell);
        let parking = doorbell.begin_park();
        let queued = !self.events.is_empty()
            || !self.disk_results.is_empty()
            || !self.tracker_peers.is_empty()
            || !self.found_peers.is_empty()
            || !self.control.is_empty();
        if queued {
            parking.cancel();
            return Err(self);
        }
        debug!("torrent {}: parked", self.name());
        let mut me = self;
        me.idle_since = None;
        parking.park(Resume::new(move || resume(me)));
        Ok(())
    }

    /// [`TICK`] while anything goes on, [`IDLE_TICK`] when nothing can: no peer, nothing being
    /// dialled, written or saved, and no address to dial for a download; [`PARK_AFTER`] when we
    /// may park.
    fn tick_interval(&self) -> Duration {
        if self.parkable() {
            return PARK_AFTER;
        }
        let idle = self.peers.is_empty()
            && self.dialing.is_empty()
            && self.disk_in_flight == 0
            && !self.resume_dirty
            && !self.syncing
            && (self.picker.is_done() || self.addrs.is_empty());
        if idle { IDLE_TICK } else { TICK }
    }

    // ---- peers ------------------------------------------------------------------------------

    fn add_addrs(&mut self, source: PeerSource, addrs: Vec<SocketAddr>) {
        self.add_flagged_addrs(
            source,
            addrs.into_iter().map(|addr| PexPeer {
                addr,
                flags: PexFlags::default(),
            }),
        );
    }

    /// Adds addresses with what their source said of them (BEP 11 `added.f`): a flag raises
    /// what we know of an address already in the book, it never clears it.
    fn add_flagged_addrs(&mut self, source: PeerSource, addrs: impl IntoIterator<Item = PexPeer>) {
        let now = Instant::now();
        for PexPeer { addr, flags } in addrs {
            if addr.port() == 0 || self.banned.contains(&addr.ip()) {
                continue;
            }
            if self.addrs.len() >= MAX_KNOWN_ADDRS && !self.addrs.contains_key(&addr) {
                break;
            }
            let info = self.addrs.entry(addr).or_insert(AddrInfo {
                connected: None,
                connecting: false,
                failures: 0,
                retry_at: now,
                seed: false,
                prefers_encryption: false,
                source,
            });
            info.seed |= flags.seed();
            info.prefers_encryption |= flags.prefers_encryption();
        }
    }

    /// Remembers that the peer at `addr` (a dialable address) prefers encryption.
    fn note_prefers_encryption(&mut self, addr: SocketAddr) {
        if let Some(info) = self.addrs.get_mut(&addr) {
            info.prefers_encryption = true;
        }
    }

    fn connect_more(&mut self) {
        let now = Instant::now();
        let complete = self.picker.is_done();
        let mut active = self.peers.len() + self.addrs.values().filter(|a| a.connecting).count();
        let connected_addrs: HashSet<SocketAddr> = self.peers.values().map(|p| p.addr).collect();
        let mut to_dial = Vec::new();
        for (addr, info) in &mut self.addrs {
            if active >= self.limits.max_peers {
                break;
            }
            if info.connecting
                || info.connected.is_some()
                || self.banned.contains(&addr.ip())
                || info.retry_at > now
                || (complete && info.seed)
                || connected_addrs.contains(addr)
            {
                continue;
            }
            info.connecting = true;
            active += 1;
            to_dial.push((*addr, info.prefers_encryption));
        }
        for (addr, prefers_encryption) in to_dial {
            let Some(permit) = self.global.try_peer_permit() else {
                if let Some(info) = self.addrs.get_mut(&addr) {
                    info.connecting = false;
                }
                continue;
            };
            let key = peer::next_peer_key();
            debug!("torrent {}: connecting to {addr}", self.meta.name);
            let spawned = peer::spawn_outgoing(
                Arc::clone(&self.context),
                key,
                addr,
                self.params_bind,
                self.limits.connect_timeout,
                prefers_encryption,
            );
            match spawned {
                Ok(socket) => {
                    self.dialing.insert(key, (socket, permit));
                }
                Err(e) => {
                    warn!(
                        "torrent {}: cannot spawn peer thread for {addr}: {e}",
                        self.meta.name
                    );
                    if let Some(info) = self.addrs.get_mut(&addr) {
                        info.connecting = false;
                    }
                }
            }
        }
    }

    fn on_peer_event(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Connected {
                peer,
                addr,
                peer_id,
                incoming,
                fast,
                encrypted,
                commands,
                handle,
                stats,
            } => {
                self.on_connected(peer, addr, peer_id, incoming, fast, commands, handle, stats);
                if encrypted && let Some(p) = self.peers.get_mut(&peer) {
                    p.prefers_encryption = true;
                    if !incoming {
                        self.note_prefers_encryption(addr);
                    }
                }
            }
            PeerEvent::ConnectFailed { peer, addr, reason } => {
                // Its permit goes back with it.
                self.dialing.remove(&peer);
                debug!("torrent {}: {addr}: {reason}", self.name());
                self.on_addr_failed(addr, matches!(reason, PeerError::SelfConnection));
            }
            PeerEvent::Bitfield { peer, pieces } => self.on_bitfield(peer, pieces),
            PeerEvent::Haves { peer, pieces } => self.on_haves(peer, &pieces),
            PeerEvent::ExtendedHandshake {
                peer,
                reqq,
                listen_port,
                client,
                pex,
                prefers_encryption,
                upload_only,
            } => {
                // `e=1`, or an MSE connection (an incoming peer's dialable address is known
                // only now, from its listen port): its address is dialled encrypted first.
                let encrypted_at = self.peers.get_mut(&peer).and_then(|p| {
                    p.listen_port = listen_port;
                    p.prefers_encryption |= prefers_encryption;
                    p.dialable_addr().filter(|_| p.prefers_encryption)
                });
                if let Some(addr) = encrypted_at {
                    self.note_prefers_encryption(addr);
                }
                let now_upload_only = self.peers.get_mut(&peer).is_some_and(|p| {
                    let changed = upload_only && !p.upload_only;
                    p.upload_only = upload_only;
                    changed
                });
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.pex = pex;
                    p.listen_port = listen_port;
                    debug!(
                        "torrent {}: {}: client {client:?}, reqq {reqq:?}, port {listen_port:?}",
                        self.meta.name, p.addr
                    );
                    p.client = client.filter(|c| !c.trim().is_empty());
                    if let Some(reqq) = reqq {
                        p.max_pipeline = usize::try_from(reqq)
                            .unwrap_or(usize::MAX)
                            .clamp(1, MAX_PIPELINE_KNOWN_REQQ);
                        p.pipeline = p.pipeline.min(p.max_pipeline);
                    }
                }
                // The bitfield came first: a peer that only uploads is useless to a torrent
                // that has every wanted piece whatever its bitfield says (BEP 21).
                if now_upload_only {
                    self.after_peer_pieces_changed(peer);
                }
            }
            PeerEvent::Choked { peer } => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                p.peer_choking = true;
                // A fast peer rejects each request it drops (and may still serve some);
                // otherwise a choke voids them all (BEP 3).
                if !p.fast {
                    self.void_requests(peer, false);
                }
            }
            PeerEvent::PexReceived { peer, added } => {
                let from = self.peers.get(&peer).map(|p| p.addr);
                debug!("torrent {}: pex from {from:?}: {added:?}", self.meta.name);
                self.add_flagged_addrs(PeerSource::Pex, added);
                self.connect_more();
            }
            PeerEvent::RequestRejected { peer, block } => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                if p.outstanding.remove(&block) {
                    self.picker.on_request_voided(&block);
                    self.fill_all();
                }
            }
            PeerEvent::Unchoked { peer } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.peer_choking = false;
                }
                self.fill_pipeline(peer);
            }
            PeerEvent::Interested { peer } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.peer_interested = true;
                }
                self.unchoke_if_slot_free(peer);
            }
            PeerEvent::NotInterested { peer } => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.peer_interested = false;
                }
            }
            PeerEvent::BlocksReceived { peer, blocks } => {
                for (block, data) in blocks {
                    self.on_block(peer, block, data);
                }
            }
            PeerEvent::Disconnected { peer, reason } => self.on_disconnected(peer, &reason),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_connected(
        &mut self,
        key: PeerKey,
        addr: SocketAddr,
        peer_id: [u8; 20],
        incoming: bool,
        fast: bool,
        commands: Sender<PeerCommand>,
        handle: StreamHandle,
        stats: Arc<PeerStats>,
    ) {
        if let Some(info) = self.addrs.get_mut(&addr) {
            info.connecting = false;
        }
        let mut permit = match self.dialing.remove(&key) {
            Some((_, permit)) => Some(permit),
            None => self.global.try_peer_permit(),
        };
        let network = admission::prefix(addr.ip());
        let mut refuse = if self.rechecking {
            Some("rechecking our data")
        } else if self.banned.contains(&addr.ip()) {
            Some("banned")
        } else if self
            .peers
            .values()
            .any(|p| !p.leaving && p.web_seed.is_none() && p.peer_id == peer_id)
        {
            Some("already connected to this peer id")
        } else if self
            .peers
            .values()
            .filter(|p| {
                !p.leaving && p.web_seed.is_none() && admission::prefix(p.addr.ip()) == network
            })
            .count()
            >= self.limits.max_per_prefix
        {
            Some("peers.max_per_prefix connections from its network already")
        } else {
            None
        };
        let full = self
            .peers
            .values()
            .filter(|p| !p.leaving && p.web_seed.is_none())
            .count()
            >= self.limits.max_peers;
        if refuse.is_none() && (full || permit.is_none()) {
            // Full: the least useful peer makes room, if one is less useful than a newcomer;
            // with the process's budget spent, its slot is the newcomer's.
            match admission::make_room(&self.peer_views(Instant::now())) {
                Some(victim) => {
                    self.drop_to_make_room(victim, addr);
                    if permit.is_none() {
                        permit = self.peers.get_mut(&victim).and_then(|p| p.permit.take());
                    }
                }
                None if permit.is_none() => refuse = Some("global peer limit reached"),
                None => refuse = Some("peer limit reached"),
            }
        }
        if let Some(why) = refuse {
            // The permit, if any, goes back as it drops.
            debug!("torrent {}: {addr}: refused: {why}", self.name());
            self.last_refused = Some(Instant::now());
            if let Some(info) = self.addrs.get_mut(&addr) {
                // Not a failure of the address, but no reason to dial it again soon.
                info.retry_at = Instant::now() + RETRY_MAX;
            }
            let _ = commands.try_send(PeerCommand::Shutdown);
            PeerLink::Stream(handle).close();
            return;
        }
        if let Some(info) = self.addrs.get_mut(&addr) {
            info.connected = Some(key);
            info.failures = 0;
        }
        debug!(
            "torrent {}: {addr}: connected ({})",
            self.name(),
            if incoming { "in" } else { "out" }
        );
        let now = Instant::now();
        let link = PeerLink::Stream(handle);
        let priority = link
            .local_addr()
            .map_or(0, |ours| admission::canonical_priority(ours, addr));
        let source = if incoming {
            PeerSource::Incoming
        } else {
            self.addrs
                .get(&addr)
                .map_or(PeerSource::Manual, |info| info.source)
        };
        let peer = Peer {
            addr,
            peer_id,
            incoming,
            source,
            fast,
            pex: false,
            prefers_encryption: false,
            upload_only: false,
            listen_port: None,
            client: None,
            pex_sent: HashSet::new(),
            last_pex: None,
            commands,
            link,
            web_seed: None,
            stats,
            pieces: Bitfield::new(self.meta.geometry.num_pieces),
            wanted: 0,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            outstanding: HashSet::new(),
            unrequested_streak: 0,
            pipeline: INITIAL_PIPELINE,
            max_pipeline: MAX_PIPELINE,
            last_block_at: now,
            connected_at: now,
            last_payload_at: None,
            last_interest_at: now,
            priority,
            leaving: false,
            permit,
            rate_down: 0,
            rate_up: 0,
            last_down: 0,
            last_up: 0,
        };
        self.peers.insert(key, peer);
        let start = PeerCommand::Start {
            pieces: self.have.clone(),
            upload_only: self.picker.is_done(),
        };
        self.command(key, start);
        self.publish_peer_count();
    }

    fn on_addr_failed(&mut self, addr: SocketAddr, is_self: bool) {
        let now = Instant::now();
        let starved = !self.picker.is_done() && self.peer_count() < STARVED_PEERS;
        if let Some(info) = self.addrs.get_mut(&addr) {
            info.connecting = false;
            info.connected = None;
            info.failures += 1;
            let backoff = if is_self {
                Duration::from_secs(24 * 3600)
            } else {
                retry_backoff(info.failures, starved)
            };
            info.retry_at = now + backoff;
        }
    }

    fn on_disconnected(&mut self, key: PeerKey, reason: &PeerError) {
        if let PeerError::ServeFailed { .. } = reason {
            self.recheck(format!("{reason}"));
        }
        let Some(peer) = self.peers.remove(&key) else {
            return;
        };
        if self.departed.len() >= MAX_DEPARTED {
            self.departed.pop_front();
        }
        self.departed.push_back((key, peer.addr));
        // Its permit, if it still holds one, goes back as `peer` drops.
        if let Some(seed) = self.web_seeds.get_mut(&key) {
            seed.running = false;
        }
        debug!(
            "torrent {}: {} ({}): disconnected: {reason}",
            self.name(),
            peer.addr,
            if peer.incoming { "in" } else { "out" }
        );
        for block in &peer.outstanding {
            self.picker.on_request_voided(block);
        }
        self.picker.on_peer_gone(&peer.pieces);
        self.picker.on_peer_disconnected(key);
        if self.optimistic == Some(key) {
            self.optimistic = None;
        }
        if let Some(info) = self.addrs.get_mut(&peer.addr) {
            info.connected = None;
            info.seed = peer.pieces.is_full();
            info.retry_at = Instant::now() + RETRY_BASE;
        }
        self.publish_peer_count();
        // Its requests are free again: let the others take them.
        self.fill_all();
    }

    /// Connected peers, web seeds not counted, published for displays.
    fn peer_count(&self) -> usize {
        self.peers.values().filter(|p| p.web_seed.is_none()).count()
    }

    fn publish_peer_count(&self) {
        let peers = self.peer_count();
        self.stats
            .peers
            .store(saturating_u32(peers), Ordering::Relaxed);
        self.stats
            .web_seeds
            .store(saturating_u32(self.peers.len() - peers), Ordering::Relaxed);
        let mut by_source = PeersBySource::default();
        for p in self.peers.values() {
            by_source.add(p.source);
        }
        *self.stats.peers_by_source.lock() = by_source;
    }

    /// Starts a thread for each `url-list` web seed (BEP 19) not running and not dropped for
    /// bad data, while there is something to download. Each enters the peer table as a peer
    /// with every piece that does not choke us.
    fn start_web_seeds(&mut self) {
        if self.picker.is_done() || self.failed || self.rechecking {
            return;
        }
        let urls: Vec<String> = self
            .meta
            .about
            .web_seeds
            .iter()
            .filter(|url| crate::tracker::http::is_supported(url))
            .filter(|url| {
                !self
                    .web_seeds
                    .values()
                    .any(|s| &s.url == *url && (s.running || s.strikes >= BAN_AFTER_STRIKES))
            })
            .cloned()
            .collect();
        let timeouts = WebSeedTimeouts {
            connect: self.limits.connect_timeout,
            read: self.limits.write_timeout,
        };
        for url in urls {
            let key = peer::next_peer_key();
            let spawned = web_seed::spawn(
                Arc::clone(&self.context),
                Arc::clone(&self.meta),
                key,
                url.clone(),
                timeouts,
            );
            let handle = match spawned {
                Ok(handle) => handle,
                Err(e) => {
                    warn!("torrent {}: web seed {url}: {e}", self.meta.name);
                    continue;
                }
            };
            debug!("torrent {}: web seed {url} started", self.meta.name);
            let now = Instant::now();
            self.peers.insert(
                key,
                Peer {
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    peer_id: [0; 20],
                    incoming: false,
                    source: PeerSource::WebSeed,
                    fast: false,
                    pex: false,
                    prefers_encryption: false,
                    upload_only: false,
                    listen_port: None,
                    client: None,
                    pex_sent: HashSet::new(),
                    last_pex: None,
                    commands: handle.commands,
                    link: PeerLink::Web(handle.closed),
                    web_seed: Some(Arc::from(url.as_str())),
                    stats: handle.stats,
                    pieces: Bitfield::new(self.meta.geometry.num_pieces),
                    wanted: 0,
                    am_choking: true,
                    am_interested: false,
                    peer_choking: false,
                    peer_interested: false,
                    outstanding: HashSet::new(),
                    unrequested_streak: 0,
                    pipeline: INITIAL_PIPELINE,
                    max_pipeline: WEB_SEED_PIPELINE,
                    last_block_at: now,
                    connected_at: now,
                    last_payload_at: None,
                    last_interest_at: now,
                    priority: 0,
                    leaving: false,
                    permit: None,
                    rate_down: 0,
                    rate_up: 0,
                    last_down: 0,
                    last_up: 0,
                },
            );
            self.web_seeds.insert(
                key,
                WebSeedState {
                    url,
                    running: true,
                    strikes: 0,
                },
            );
            self.on_bitfield(key, Bitfield::full(self.meta.geometry.num_pieces));
        }
        self.publish_peer_count();
    }

    /// What [`admission`] needs to know of the peers that are not leaving.
    fn peer_views(&self, now: Instant) -> Vec<admission::PeerView> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.leaving && p.web_seed.is_none())
            .map(|(&key, p)| admission::PeerView {
                key,
                connected_for: now.saturating_duration_since(p.connected_at),
                since_payload: p
                    .last_payload_at
                    .map(|at| now.saturating_duration_since(at)),
                interested: p.am_interested || p.peer_interested,
                uninterested_for: now.saturating_duration_since(p.last_interest_at),
                priority: p.priority,
            })
            .collect()
    }

    /// Drops peer `victim` so that the newcomer from `for_addr` gets its place. It leaves when
    /// its thread ends and until then counts against no limit of the torrent (it keeps its
    /// peer-budget permit unless the newcomer takes it).
    fn drop_to_make_room(&mut self, victim: PeerKey, for_addr: SocketAddr) {
        let name = self.meta.name.clone();
        if let Some(peer) = self.peers.get_mut(&victim) {
            debug!(
                "torrent {name}: {}: dropped to make room for {for_addr}",
                peer.addr
            );
            peer.leaving = true;
            let _ = peer.commands.try_send(PeerCommand::Shutdown);
            peer.link.close();
        }
    }

    /// While others wait for a slot (the torrent or the process is full and addresses wait
    /// to be dialled, or an incoming peer was refused lately), lets go of the peers neither
    /// side has been interested in for a while.
    fn drop_idle_peers(&mut self, now: Instant) {
        let full = self
            .peers
            .values()
            .filter(|p| !p.leaving && p.web_seed.is_none())
            .count()
            >= self.limits.max_peers
            || self.global.peers.is_full();
        if !full {
            return;
        }
        let dialable = self
            .addrs
            .values()
            .any(|a| a.connected.is_none() && !a.connecting && a.retry_at <= now && !a.seed);
        let refused_lately = self
            .last_refused
            .is_some_and(|at| now.duration_since(at) < admission::IDLE_UNINTERESTED);
        if !(dialable || refused_lately) {
            return;
        }
        for key in admission::idle_to_drop(&self.peer_views(now), true) {
            if let Some(peer) = self.peers.get_mut(&key) {
                debug!(
                    "torrent {}: {}: neither side interested for {:?} while others wait; \
                     dropped",
                    self.meta.name,
                    peer.addr,
                    admission::IDLE_UNINTERESTED
                );
                peer.leaving = true;
                let _ = peer.commands.try_send(PeerCommand::Shutdown);
                peer.link.close();
            }
        }
    }

    /// Sends a command; a peer whose queue is full is not keeping up and is dropped.
    fn command(&mut self, key: PeerKey, cmd: PeerCommand) {
        let Some(peer) = self.peers.get(&key) else {
            return;
        };
        // The coordinator is the queue's only sender: what it sees queued only shrinks.
        if peer.commands.len() >= PEER_COMMANDS_CAPACITY {
            warn!(
                "torrent {}: {}: command queue full; dropping peer",
                self.meta.name, peer.addr
            );
            peer.link.close();
            return;
        }
        // Unbounded: it fails only when the peer thread has ended.
        let _ = peer.commands.try_send(cmd);
    }

    fn on_bitfield(&mut self, key: PeerKey, pieces: Bitfield) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        self.picker.on_peer_gone(&peer.pieces);
        self.picker.on_peer_pieces(&pieces);
        peer.wanted = saturating_u32(pieces.iter_ones().filter(|&p| self.picker.wants(p)).count());
        peer.pieces = pieces;
        self.after_peer_pieces_changed(key);
    }

    fn on_haves(&mut self, key: PeerKey, pieces: &[u32]) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let mut changed = false;
        for &piece in pieces {
            if peer.pieces.get(piece) {
                continue;
            }
            peer.pieces.set(piece);
            self.picker.on_have(piece);
            if self.picker.wants(piece) {
                peer.wanted += 1;
            }
            changed = true;
        }
        if changed {
            self.after_peer_pieces_changed(key);
        }
    }

    fn after_peer_pieces_changed(&mut self, key: PeerKey) {
        let Some(peer) = self.peers.get(&key) else {
            return;
        };
        if peer.wants_nothing() && self.picker.is_done() {
            debug!(
                "torrent {}: {}: both only upload; disconnecting",
                self.name(),
                peer.addr
            );
            peer.link.close();
            return;
        }
        self.update_interest(key);
        self.fill_pipeline(key);
    }

    fn update_interest(&mut self, key: PeerKey) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let want = peer.wanted > 0 && !self.failed;
        if want != peer.am_interested {
            peer.am_interested = want;
            let cmd = if want {
                PeerCommand::Interested
            } else {
                PeerCommand::NotInterested
            };
            self.command(key, cmd);
        }
    }

    /// Tops up the peer's request pipeline when it ran a quarter low.
    fn fill_pipeline(&mut self, key: PeerKey) {
        if self.failed || self.rechecking || self.disk_backlog_bytes > MAX_DISK_BACKLOG_BYTES {
            return;
        }
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.peer_choking || !peer.am_interested {
            return;
        }
        let have = peer.outstanding.len();
        if have > peer.pipeline * 3 / 4 {
            return;
        }
        let outstanding = &peer.outstanding;
        let blocks = if self.buffers.held_bytes() + self.disk_backlog_bytes > MAX_HELD_BYTES {
            self.picker
                .pick_started(key, &peer.pieces, peer.pipeline - have)
        } else {
            self.picker
                .pick(key, &peer.pieces, peer.pipeline - have, |b| {
                    outstanding.contains(b)
                })
        };
        if blocks.is_empty() {
            return;
        }
        peer.outstanding.extend(blocks.iter().copied());
        if have == 0 {
            peer.last_block_at = Instant::now();
        }
        self.command(key, PeerCommand::Request(blocks));
    }

    fn fill_all(&mut self) {
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.fill_pipeline(key);
        }
    }

    /// The peer's requests will not be answered: give the blocks back to the picker.
    fn void_requests(&mut self, key: PeerKey, send_cancel: bool) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let blocks: Vec<BlockRef> = peer.outstanding.drain().collect();
        for block in &blocks {
            self.picker.on_request_voided(block);
        }
        if send_cancel && !blocks.is_empty() {
            self.command(key, PeerCommand::Cancel(blocks));
        }
        self.fill_all();
    }

    fn on_block(&mut self, key: PeerKey, block: BlockRef, data: BlockData) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if !peer.outstanding.remove(&block) {
            // Not requested from this peer (or voided by a choke): not trusted into a piece.
            debug!(
                "torrent {}: {}: unrequested block {block:?}",
                self.meta.name, peer.addr
            );
            peer.unrequested_streak += 1;
            if peer.unrequested_streak == MAX_UNREQUESTED_STREAK {
                warn!(
                    "torrent {}: {}: {MAX_UNREQUESTED_STREAK} blocks in a row we never asked \
                     for; dropping it",
                    self.meta.name, peer.addr
                );
                let _ = peer.commands.try_send(PeerCommand::Shutdown);
                peer.link.close();
            }
            return;
        }
        peer.unrequested_streak = 0;
        peer.last_block_at = Instant::now();
        match self.picker.on_block_received(&block) {
            Received::Unwanted => {}
            Received::Stored => self.buffers.store(&block, data, key),
            Received::PieceComplete => {
                self.buffers.store(&block, data, key);
                let piece = self.buffers.take(block.piece);
                self.submit_piece(block.piece, piece);
            }
        }
        self.cancel_duplicates(key, &block);
        self.fill_pipeline(key);
    }

    /// Endgame: the block came in, so withdraw the same request from every other peer.
    fn cancel_duplicates(&mut self, from: PeerKey, block: &BlockRef) {
        let others: Vec<PeerKey> = self
            .peers
            .iter_mut()
            .filter(|(k, p)| **k != from && p.outstanding.contains(block))
            .map(|(k, p)| {
                p.outstanding.remove(block);
                *k
            })
            .collect();
        for key in others {
            self.command(key, PeerCommand::Cancel(vec![*block]));
        }
    }

    fn submit_piece(&mut self, piece: u32, complete: CompletePiece) {
        let expected = self.meta.piece_hashes[piece as usize];
        self.disk_backlog_bytes += complete.data.len();
        self.disk_send(DiskJob::VerifyAndWrite {
            piece,
            data: complete.data,
            expected,
        });
        self.pending_senders.insert(piece, complete.senders);
    }

    // ---- disk -------------------------------------------------------------------------------

    /// Queues a job with the disk pool; false when stopping.
    fn disk_send(&mut self, job: DiskJob) -> bool {
        let sent = self.disk.as_ref().is_some_and(|disk| disk.send(job));
        if sent {
            self.disk_in_flight += 1;
        }
        sent
    }

    fn on_disk_result(&mut self, result: DiskResult) {
        self.disk_in_flight = self.disk_in_flight.saturating_sub(1);
        match result {
            DiskResult::Written { piece, data } => {
                self.disk_backlog_bytes -= data.len();
                self.on_piece_written(piece, &data);
            }
            DiskResult::HashFailed { piece, data } => {
                self.disk_backlog_bytes -= data.len();
                self.on_hash_failed(piece, data);
            }
            DiskResult::WriteFailed { piece, error } => {
                self.disk_backlog_bytes -= self.meta.geometry.piece_len(piece) as usize;
                self.pending_senders.remove(&piece);
                self.fail(format!("storage: {error}; torrent paused"));
            }
            DiskResult::Synced(Ok(())) => self.on_synced(),
            DiskResult::Synced(Err(error)) => {
                self.fail(format!("storage: {error}; torrent paused"));
            }
            DiskResult::FilesWanted(Err(error)) => {
                self.fail(format!("storage: {error}; torrent paused"));
            }
            DiskResult::FilesWanted(Ok(())) => {}
            DiskResult::FileChanged(error) => self.recheck(format!("storage: {error}")),
            DiskResult::ResumeSaved(saved) => {
                self.resume_saving = false;
                match saved {
                    Err(error) => warn!("torrent {}: {error}", self.name()),
                    // The start's own snapshot (after a hash): clean while nothing is written.
                    Ok(()) if !self.wrote_piece => self.resume_clean = true,
                    Ok(()) => {}
                }
                if std::mem::take(&mut self.resume_again) {
                    self.save_resume_later();
                }
            }
        }
        self.fill_all();
    }

    fn fail(&mut self, message: String) {
        if self.failed {
            return;
        }
        error!("torrent {}: {message}", self.name());
        self.failed = true;
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.void_requests(key, true);
            self.update_interest(key);
        }
        let _ = self.torrent_events.send(TorrentEvent::Failed(message));
    }

    /// Our data changed under us: from now on nothing is served or requested and no resume
    /// data is saved (it would list pieces that may be gone); the engine stops the torrent and
    /// hashes its data again.
    fn recheck(&mut self, why: String) {
        if self.rechecking {
            return;
        }
        error!("torrent {}: {why}; rechecking its data", self.name());
        self.rechecking = true;
        // Peers would ask for pieces we may no longer have: drop them all now.
        for peer in self.peers.values() {
            let _ = peer.commands.try_send(PeerCommand::Shutdown);
            peer.link.close();
        }
        let _ = self.torrent_events.send(TorrentEvent::RecheckNeeded(why));
    }

    fn on_piece_written(&mut self, piece: u32, data: &PieceData) {
        self.pending_senders.remove(&piece);
        if let Some(bad) = self.suspects.remove(&piece) {
            for culprit in blame_after_refetch(&bad.data, &bad.senders, data) {
                self.strike(culprit, piece);
            }
        }
        self.picker.on_piece_verified(piece);
        self.have.set(piece);
        self.stats.have.lock().set(piece);
        self.resume_dirty = true;
        self.wrote_piece = true;
        self.resume_clean = false;
        let len = u64::from(self.meta.geometry.piece_len(piece));
        self.stats.verified_bytes.fetch_add(len, Ordering::Relaxed);
        if self.picker.level(piece) > 0 {
            self.stats.left_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.command(key, PeerCommand::Have(piece));
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            if peer.pieces.get(piece) && peer.wanted > 0 {
                peer.wanted -= 1;
                if peer.wanted == 0 {
                    self.update_interest(key);
                }
            }
        }
        if self.picker.is_done() && !self.syncing && !self.complete_announced {
            self.syncing = true;
            self.disk_send(DiskJob::Sync);
        }
    }

    fn on_hash_failed(&mut self, piece: u32, data: PieceData) {
        let senders = self.pending_senders.remove(&piece).unwrap_or_default();
        warn!(
            "torrent {}: piece {piece} failed its hash check",
            self.name()
        );
        match blame_on_failure(&senders) {
            Blame::One(culprit) => {
                self.strike(culprit, piece);
                drop(data);
                self.picker.on_piece_failed(piece, false);
            }
            Blame::Several => {
                // Keep the bad copy; fetch the piece again from one peer and compare.
                self.suspects.insert(piece, CompletePiece { data, senders });
                self.picker.on_piece_failed(piece, true);
            }
        }
    }

    /// Counts a bad piece against the address of peer `key` (connected or departed); bans the
    /// address and drops its connections at [`BAN_AFTER_STRIKES`].
    fn strike(&mut self, key: PeerKey, piece: u32) {
        if let Some(seed) = self.web_seeds.get_mut(&key) {
            // A web seed has no address of its own to ban (it may share one with peers):
            // its strikes are its URL's, and it is dropped for good at the same count.
            seed.strikes += 1;
            warn!(
                "torrent {}: web seed {}: sent bad data for piece {piece} (strike {})",
                self.meta.name, seed.url, seed.strikes
            );
            if seed.strikes >= BAN_AFTER_STRIKES {
                warn!(
                    "torrent {}: web seed {}: dropped after {} bad pieces",
                    self.meta.name, seed.url, seed.strikes
                );
                if let Some(peer) = self.peers.get(&key) {
                    peer.link.close();
                }
            }
            return;
        }
        let addr = match self.peers.get(&key) {
            Some(peer) => peer.addr,
            None => match self.departed.iter().rev().find(|(k, _)| *k == key) {
                Some((_, addr)) => *addr,
                None => return,
            },
        };
        let strikes = self.strikes.entry(addr.ip()).or_insert(0);
        *strikes += 1;
        let strikes = *strikes;
        warn!(
            "torrent {}: {addr}: sent bad data for piece {piece} (strike {strikes})",
            self.meta.name
        );
        if strikes >= BAN_AFTER_STRIKES && self.banned.insert(addr.ip()) {
            warn!(
                "torrent {}: {addr}: banned after {strikes} bad pieces",
                self.meta.name
            );
            for peer in self.peers.values().filter(|p| p.addr.ip() == addr.ip()) {
                peer.link.close();
            }
        }
    }

    fn on_synced(&mut self) {
        self.syncing = false;
        if self.complete_announced {
            return;
        }
        if !self.picker.is_done() {
            return; // a new selection wants more meanwhile
        }
        self.complete_announced = true;
        self.stats.complete.store(true, Ordering::Relaxed);
        if self.picker.is_complete() {
            info!(
                "torrent {}: download complete, all {} pieces verified",
                self.name(),
                self.meta.geometry.num_pieces
            );
        } else {
            info!(
                "torrent {}: download complete, the wanted files' {} of {} pieces verified",
                self.name(),
                self.picker.verified_count(),
                self.meta.geometry.num_pieces
            );
        }
        if !self.tracker_told_completed {
            self.tracker_told_completed = true;
            self.announce(AnnouncerCommand::Completed);
        }
        self.save_resume_later();
        let _ = self.torrent_events.send(TorrentEvent::Completed);
        for peer in self.peers.values() {
            if peer.wants_nothing() {
                peer.link.close();
            }
        }
    }

    /// A new file selection: the picker orders by it from now on, the disk pool creates the
    /// files wanted now (moving their bytes out of the part file), and our interest in each
    /// peer follows what we need from it.
    fn select(&mut self, selection: Selection) {
        if selection == self.selection {
            return;
        }
        info!("torrent {}: file selection changed", self.name());
        self.resume_clean = false;
        let wanted = selection.wanted(self.meta.files.len());
        self.disk_send(DiskJob::WantFiles(wanted));
        let levels = selection.piece_levels(&self.meta.geometry, &self.meta.files);
        self.stats.wanted_bytes.store(
            selection::wanted_bytes(&self.meta.geometry, &levels),
            Ordering::Relaxed,
        );
        self.selection = selection;
        self.picker.set_levels(levels);
        self.stats
            .left_bytes
            .store(self.picker.left_bytes(), Ordering::Relaxed);
        if !self.picker.is_done() && self.complete_announced {
            info!("torrent {}: downloading again", self.name());
            self.complete_announced = false;
            self.stats.complete.store(false, Ordering::Relaxed);
            let _ = self.torrent_events.send(TorrentEvent::Incomplete);
        } else if self.picker.is_done() && !self.complete_announced && !self.syncing {
            self.syncing = true;
            self.disk_send(DiskJob::Sync);
        }
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.wanted = saturating_u32(
                    peer.pieces
                        .iter_ones()
                        .filter(|&p| self.picker.wants(p))
                        .count(),
                );
            }
            self.update_interest(key);
        }
        self.start_web_seeds();
        self.fill_all();
        self.connect_more();
    }

    fn announce(&self, cmd: AnnouncerCommand) {
        if let Some(registration) = &self.announcer {
            registration.send(cmd);
        }
    }

    // ---- timers -----------------------------------------------------------------------------

    fn on_tick(&mut self) {
        let now = Instant::now();
        let elapsed_ms = u64::try_from(now.duration_since(self.last_tick).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.last_tick = now;
        let (mut down, mut up) = (0, 0);
        let mut timed_out = Vec::new();
        for (key, peer) in &mut self.peers {
            let d = peer.stats.downloaded.load(Ordering::Relaxed);
            let u = peer.stats.uploaded.load(Ordering::Relaxed);
            let rate_down = (d - peer.last_down) * 1000 / elapsed_ms;
            let rate_up = (u - peer.last_up) * 1000 / elapsed_ms;
            if d != peer.last_down || u != peer.last_up {
                peer.last_payload_at = Some(now);
            }
            if peer.am_interested || peer.peer_interested {
                peer.last_interest_at = now;
            }
            // Smooth over a few ticks so one quiet tick does not collapse the pipeline.
            peer.rate_down = (peer.rate_down + rate_down) / 2;
            peer.rate_up = (peer.rate_up + rate_up) / 2;
            peer.last_down = d;
            peer.last_up = u;
            down += peer.rate_down;
            up += peer.rate_up;
            let wanted = usize::try_from(peer.rate_down * PIPELINE_SECONDS / u64::from(BLOCK_LEN))
                .unwrap_or(MAX_PIPELINE);
            peer.pipeline = wanted
                .max(MIN_PIPELINE)
                .max(peer.pipeline.min(INITIAL_PIPELINE))
                .min(peer.max_pipeline);
            if !peer.outstanding.is_empty()
                && now.duration_since(peer.last_block_at) > REQUEST_TIMEOUT
            {
                timed_out.push(*key);
            }
        }
        let mut pipelines: Vec<usize> = self.peers.values().map(|p| p.pipeline).collect();
        share_pipelines(&mut pipelines, MAX_REQUESTED_BLOCKS);
        for (peer, pipeline) in self.peers.values_mut().zip(pipelines) {
            peer.pipeline = pipeline;
        }
        for key in timed_out {
            if let Some(peer) = self.peers.get_mut(&key) {
                debug!(
                    "torrent {}: {}: requests timed out",
                    self.meta.name, peer.addr
                );
                peer.pipeline = MIN_PIPELINE;
                peer.last_block_at = now;
            }
            self.void_requests(key, true);
        }
        self.stats.download_rate.store(down, Ordering::Relaxed);
        self.publish_peer_count();
        let sending = self
            .peers
            .values()
            .filter(|p| p.web_seed.is_none() && p.rate_down > 0)
            .count();
        let seeds_sending = self
            .peers
            .values()
            .filter(|p| p.web_seed.is_some() && p.rate_down > 0)
            .count();
        self.stats
            .web_seeds_sending_to_us
            .store(saturating_u32(seeds_sending), Ordering::Relaxed);
        let getting = self.peers.values().filter(|p| p.rate_up > 0).count();
        self.stats
            .peers_sending_to_us
            .store(saturating_u32(sending), Ordering::Relaxed);
        self.stats
            .peers_getting_from_us
            .store(saturating_u32(getting), Ordering::Relaxed);
        self.stats.upload_rate.store(up, Ordering::Relaxed);
        self.publish_peers();

        if now.duration_since(self.last_choke) >= CHOKE_INTERVAL {
            let rotate = now.duration_since(self.last_optimistic) >= OPTIMISTIC_INTERVAL;
            if rotate {
                self.last_optimistic = now;
            }
            self.last_choke = now;
            self.rechoke(rotate);
        }
        if !self.picker.is_done() && self.peer_count() < STARVED_PEERS {
            self.announce(AnnouncerCommand::NeedPeers);
        }
        self.exchange_peers(now);
        self.drop_idle_peers(now);
        if self.resume_dirty && now.duration_since(self.last_resume_save) >= RESUME_SAVE_INTERVAL {
            self.save_resume_later();
        }
        self.connect_more();
        self.fill_all();
    }

    /// The peer table as displays see it (`TorrentStats::peer_list`), once a tick.
    fn publish_peers(&self) {
        let pieces = f64::from(self.meta.geometry.num_pieces.max(1));
        let list = self
            .peers
            .iter()
            .filter(|(_, p)| p.web_seed.is_none())
            .map(|(key, p)| PeerInfo {
                addr: p.addr,
                client: p
                    .client
                    .clone()
                    .unwrap_or_else(|| super::client_name(&p.peer_id)),
                incoming: p.incoming,
                source: p.source,
                am_choking: p.am_choking,
                am_interested: p.am_interested,
                peer_choking: p.peer_choking,
                peer_interested: p.peer_interested,
                optimistic: self.optimistic == Some(*key),
                progress: f64::from(p.pieces.count_ones()) / pieces,
                rate_down: p.rate_down,
                rate_up: p.rate_up,
            })
            .collect();
        *self.stats.peer_list.lock() = list;
    }

    /// Peer exchange (BEP 11): at most once a minute, tell each peer that takes it which of our
    /// peers (by their listen addresses) joined and left since our last message to it.
    fn exchange_peers(&mut self, now: Instant) {
        if self.meta.private {
            return;
        }
        // With the flags BEP 11 gives each: 0x01 prefers encryption, 0x02 seed.
        let dialable: Vec<(PeerKey, SocketAddr, PexFlags)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.web_seed.is_none())
            .filter_map(|(k, p)| {
                let flags = PexFlags::new(p.prefers_encryption, p.wants_nothing());
                Some((*k, p.dialable_addr()?, flags))
            })
            .collect();
        let due: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.pex
                    && p.last_pex
                        .is_none_or(|t| now.duration_since(t) >= PEX_INTERVAL)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let current: HashMap<SocketAddr, PexFlags> = dialable
                .iter()
                .filter(|(k, _, _)| *k != key)
                .map(|(_, a, f)| (*a, *f))
                .take(MAX_PEX_PEERS)
                .collect();
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            let added: Vec<PexPeer> = current
                .iter()
                .filter(|(addr, _)| !peer.pex_sent.contains(addr))
                .map(|(addr, flags)| PexPeer {
                    addr: *addr,
                    flags: *flags,
                })
                .collect();
            let current: HashSet<SocketAddr> = current.into_keys().collect();
            let dropped: Vec<SocketAddr> = peer.pex_sent.difference(&current).copied().collect();
            // Nothing to say is no message: the minute between messages (BEP 11) starts with
            // the first one actually sent, so a peer that arrived before our other peers hears
            // of them at the next tick, not a minute later.
            if added.is_empty() && dropped.is_empty() {
                continue;
            }
            peer.last_pex = Some(now);
            peer.pex_sent = current;
            self.command(key, PeerCommand::Pex(PexMessage { added, dropped }));
        }
    }

    /// Queues a resume-data snapshot on a disk thread (after the writes already queued).
    fn save_resume_later(&mut self) {
        if self.rechecking {
            return;
        }
        let Some(target) = self.resume.clone() else {
            return;
        };
        if self.resume_saving {
            self.resume_again = true;
            self.resume_dirty = false;
            return;
        }
        self.resume_saving = self.disk_send(DiskJob::SaveResume {
            meta: Arc::clone(&self.meta),
            target,
            have: self.have.clone(),
        });
        self.resume_dirty = false;
        self.last_resume_save = Instant::now();
    }

    fn rechoke(&mut self, rotate: bool) {
        let seeding = self.picker.is_done();
        let now = Instant::now();
        let candidates: Vec<Candidate> = self
            .peers
            .iter()
            .filter(|(_, p)| p.web_seed.is_none())
            .map(|(k, p)| Candidate {
                peer: *k,
                interested: p.peer_interested,
                rate: if seeding { p.rate_up } else { p.rate_down },
                connected_for: now.duration_since(p.connected_at),
            })
            .collect();
        let (unchoke, optimistic) = choker::choose(
            &candidates,
            self.limits.upload_slots,
            self.optimistic,
            rotate,
            &mut self.rng,
        );
        self.optimistic = optimistic;
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            let should_choke = !unchoke.contains(&key);
            self.set_choke(key, should_choke);
        }
    }

    fn set_choke(&mut self, key: PeerKey, choke: bool) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.am_choking == choke {
            return;
        }
        peer.am_choking = choke;
        self.command(
            key,
            if choke {
                PeerCommand::Choke
            } else {
                PeerCommand::Unchoke
            },
        );
    }

    /// A newly interested peer need not wait for the next choke round when a slot is free.
    fn unchoke_if_slot_free(&mut self, key: PeerKey) {
        let unchoked = self.peers.values().filter(|p| !p.am_choking).count();
        if unchoked < self.limits.upload_slots + 1 {
            self.set_choke(key, false);
        }
    }

    // ---- shutdown ---------------------------------------------------------------------------

    fn shutdown(&mut self) {
        info!("torrent {}: stopping", self.name());
        let announcer = self.announcer.take();
        if let Some(registration) = &announcer {
            registration.send(AnnouncerCommand::Stop);
        }
        let peers_deadline = Instant::now() + self.limits.stop_timeout;
        self.context.close_peer_threads();
        for peer in self.peers.values() {
            let _ = peer.commands.try_send(PeerCommand::Shutdown);
            peer.link.close();
        }
        for (socket, _) in self.dialing.values() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        // Let our queued pieces finish hashing and writing (bounded), then flush.
        drop(self.disk.take());
        let deadline = Instant::now() + DISK_DRAIN_TIMEOUT;
        while self.disk_in_flight > 0 {
            let Ok(result) = self.disk_results.recv_deadline(deadline) else {
                warn!(
                    "torrent {}: {} disk jobs unfinished after {DISK_DRAIN_TIMEOUT:?}; their pieces \
                     are not recorded",
                    self.name(),
                    self.disk_in_flight
                );
                break;
            };
            self.disk_in_flight -= 1;
            if let DiskResult::Written { piece, .. } = result {
                self.picker.on_piece_verified(piece);
                self.have.set(piece);
                self.resume_clean = false;
            }
        }
        if self.resume_clean && !self.rechecking {
            // No piece written this run and the resume file says what we have: nothing to
            // sync, nothing to save.
            debug!(
                "torrent {}: nothing written this run; its resume data stands",
                self.name()
            );
        } else {
            if let Err(e) = self.storage.sync_all() {
                error!("torrent {}: {e}", self.name());
            }
            if self.rechecking {
                info!(
                    "torrent {}: resume data not saved: the data is to be checked again",
                    self.name()
                );
            } else if let Some(target) = &self.resume {
                let saved = disk::save_resume(&self.storage, &self.meta, target, &self.have);
                if let Err(e) = saved {
                    error!("torrent {}: {e}", self.name());
                }
            }
        }
        // Every peer thread holds a sender: the channel disconnects when the last one ended.
        // Their events are taken meanwhile (and dropped), so none waits on a full channel.
        let started = Instant::now();
        let ended = loop {
            let wait = peers_deadline.saturating_duration_since(Instant::now());
            select! {
                recv(self.peer_threads_ended) -> _ => break true,
                recv(self.events.rx) -> event => {
                    if let Ok(event) = event {
                        self.events.taken(event.weight());
                    }
                }
                default(wait) => break false,
            }
        };
        if ended {
            debug!(
                "torrent {}: every peer thread ended ({:?} after the disk)",
                self.name(),
                started.elapsed()
            );
        } else {
            warn!(
                "torrent {}: peer threads still running after the stop budget ({:?})",
                self.name(),
                self.limits.stop_timeout
            );
        }
        if let Some(registration) = announcer {
            // The announcer has `stop_timeout` for its `stopped` announce; don't wait longer.
            registration
                .wait_until(Instant::now() + self.limits.stop_timeout + Duration::from_secs(1));
        }
        info!("torrent {}: stopped", self.name());
    }
}

/// Scales the peers' pipelines down, in proportion, until together they ask for at most
/// `budget` blocks (each keeps at least [`MIN_PIPELINE`]); under the budget they stay as they are.
fn share_pipelines(pipelines: &mut [usize], budget: usize) {
    let total: usize = pipelines.iter().sum();
    if total <= budget {
        return;
    }
    for pipeline in pipelines {
        *pipeline = (*pipeline * budget / total).max(MIN_PIPELINE);
    }
}

/// LSD's peers for this torrent: sent down its `found_peers` channel, then the doorbell rung, so
/// a parked coordinator wakes to take them (and a registered torrent can park).
struct RingingSink {
    inner: crate::lsd::ChannelSink,
    doorbell: Arc<Doorbell>,
}

impl crate::torrent::PeerSink for RingingSink {
    fn deliver(&mut self, peers: Vec<SocketAddr>) -> bool {
        let delivered = self.inner.deliver(peers);
        self.doorbell.ring();
        delivered
    }
}

/// How long an address waits for its next dial after its `failures`-th failure in a row:
/// doubling from [`RETRY_BASE`], up to [`RETRY_MAX`], or [`RETRY_STARVED_MAX`] while the torrent
/// is `starved` (downloading with few peers).
fn retry_backoff(failures: u32, starved: bool) -> Duration {
    let max = if starved {
        RETRY_STARVED_MAX
    } else {
        RETRY_MAX
    };
    crate::backoff::doubling(RETRY_BASE, failures, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_address_waits_doubling_but_not_long_while_the_torrent_starves() {
        let waits: Vec<u64> = (1..=7).map(|n| retry_backoff(n, false).as_secs()).collect();
        assert_eq!(waits, [4, 8, 16, 32, 60, 60, 60]);
        let starved: Vec<u64> = (1..=7).map(|n| retry_backoff(n, true).as_secs()).collect();
        assert_eq!(starved, [4, 8, 8, 8, 8, 8, 8]);
    }

    #[test]
    fn pipelines_share_the_budget_in_proportion_and_keep_a_floor() {
        let mut one = [MAX_PIPELINE_KNOWN_REQQ];
        share_pipelines(&mut one, MAX_REQUESTED_BLOCKS);
        assert_eq!(
            one,
            [MAX_PIPELINE_KNOWN_REQQ],
            "one peer keeps its whole pipeline"
        );
        let mut three = [1000, 1000, 48];
        share_pipelines(&mut three, 1024);
        assert_eq!(three, [500, 500, 24]);
        assert!(three.iter().sum::<usize>() <= 1024);
        let mut many = [20; 100];
        share_pipelines(&mut many, 1024);
        assert_eq!(many, [MIN_PIPELINE; 100]);
    }
}
