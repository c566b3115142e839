//! Fetching a torrent's info dictionary from peers (BEP 9, `ut_metadata`), for a magnet link.
//!
//! [`fetch`] runs on its caller's thread, the *fetch loop*: it owns the `FetchState` (who is
//! connected, which metadata piece is asked of whom, the pieces received, who is trusted) and a
//! thread per peer connection, `metadata ADDR`, which does only I/O on the same
//! [`Connection`] a torrent's peer runs on (dial or accept, handshakes, framed reads, timers,
//! the end reported once), with a handler of its own (`MetadataPeer`): the BitTorrent
//! handshake with the BEP 10 bit, the extended handshake (we advertise `ut_metadata` under
//! [`OUR_UT_METADATA_ID`] and read the peer's id and `metadata_size`), then the requests the loop
//! orders and the data and rejects the peer sends back. A thread `metadata tracker` per
//! `tr` announces once and hands the loop its peers; a tracker that fails is a warning.
//!
//! Peers also dial in: trackers that took our `started` announce hand our address out, and the
//! listener routes a handshake for this info hash to the fetch's inbox (`listener::FetchInbox`)
//! when the caller passes one. Such a connection runs the same `metadata ADDR` thread as a dialled
//! one, minus the dial; its address is never dialled, but the listen port its extended
//! handshake names is passed on with the peers worth dialling for the download. While trackers
//! know our address, running out of peers to dial does not end the fetch: it waits for peers to
//! dial in until its deadline. A fetch that ends without metadata tells those trackers
//! `stopped`, within `stop_timeout`.
//!
//! Peers with the same `metadata_size` share one assembly: its 16 KiB pieces are spread over
//! them. The assembled bytes are used only if their SHA-1 is the info hash. When it is not, the
//! whole assembly is discarded: a peer that sent every piece of it is banned; when several peers
//! sent pieces, each is a suspect from then on and may only fill an assembly of its own (so a
//! second failure names the liar and bans it, and an honest peer still gets to finish alone).
//! `metadata_size` is checked (1 byte to [`MAX_METADATA_BYTES`]) before anything is allocated
//! for it, and pieces are allocated only as they arrive, each checked against its length.
//!
//! Nothing here touches storage or the engine: the caller turns the verified bytes into a
//! `Metainfo` and starts the download.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, select};
use log::{debug, info, warn};
use sha1::{Digest, Sha1};

use crate::listener::Incoming;
use crate::metainfo::InfoHash;
use crate::peer::PeerError;
use crate::peer::conn::{self, HANDSHAKE_TIMEOUT};
use crate::peer::connection::{self, Connection, EndGuard, Handler, ReadPlan};
use crate::peer::mse::Encryption;
use crate::tracker::udp::UdpClient;
use crate::tracker::{
    AnnounceEvent, AnnounceRequest, AnnounceResponse, OurAddrs, TrackerError, http, udp,
};
use crate::watched::Watched;
use crate::wire::extension::{
    EXTENDED_ID, EXTENSION_BIT, HANDSHAKE_EXT_ID, METADATA_PIECE_LEN, MetadataMessage,
    OUR_UT_METADATA_ID, UT_METADATA,
};
use crate::wire::{ExtendedHandshake, Handshake, Message};

/// The largest info dictionary we fetch; a larger `metadata_size` drops the peer unallocated.
pub const MAX_METADATA_BYTES: u32 = 16 * 1024 * 1024;

/// Peer connections open at once.
const MAX_CONNECTIONS: usize = 16;
/// Metadata requests outstanding with one peer (libtorrent keeps two, and rejects beyond a small
/// queue).
const REQUESTS_PER_PEER: usize = 2;
/// A request unanswered this long drops the peer (it is tried again later) and frees the piece.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a peer thread's read blocks before it looks at its orders again.
const READ_TICK: Duration = Duration::from_millis(100);
/// A peer thread's read buffer: a metadata piece and then some (it grows for a larger message,
/// which the decoder bounds).
const READ_BUF_BYTES: usize = 32 * 1024;
/// How long the fetch loop waits for an event before it looks at its timers.
const LOOP_TICK: Duration = Duration::from_millis(250);
/// A peer that failed harmlessly (refused, rejected, timed out) is dialled again after this,
/// doubled per failure up to [`RETRY_MAX`].
const RETRY_BASE: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long [`fetch`] waits for its peer threads to end before it returns without them (a thread
/// still connecting ends on its own within the connect timeout).
const JOIN_GRACE: Duration = Duration::from_secs(1);
/// What we tell trackers we have left before we know the size: any non-zero value says we are
/// not a seed (a tracker may send a seed no seeds).
const UNKNOWN_LEFT: u64 = 16 * 1024;

/// What [`fetch`] needs: whose metadata, who we are, where to look, and how long.
#[derive(Clone, Debug)]
pub struct FetchParams {
    pub info_hash: InfoHash,
    /// The magnet's `dn`, for the log until the metadata names the torrent.
    pub name: Option<String>,
    /// Our peer id in handshakes and announces.
    pub peer_id: [u8; 20],
    /// Our listen port, told to peers (`p`) and trackers.
    pub listen_port: u16,
    /// Source address of outgoing connections (unspecified or `None`: the kernel's choice).
    pub bind: Option<IpAddr>,
    /// Peers to dial (`x.pe`, `--peer`), in order.
    pub peers: Vec<SocketAddr>,
    /// Trackers to announce to once each (`tr`).
    pub trackers: Vec<String>,
    /// The magnet's web seeds (`ws`): not used to fetch the metadata (BEP 19 serves pieces,
    /// not the info dictionary), only carried to the torrent built from it.
    pub web_seeds: Vec<String>,
    pub connect_timeout: Duration,
    /// Bounds one announce (HTTP: connect, then the exchange; UDP: the whole exchange).
    pub announce_timeout: Duration,
    /// UDP trackers: the first retransmission wait (BEP 15).
    pub udp_retransmit_base: Duration,
    /// Peers asked of each tracker.
    pub numwant: u32,
    /// Our addresses told to HTTP trackers (BEP 7).
    pub addrs: OurAddrs,
    /// Bounds the `stopped` announces of a fetch that ends without metadata.
    pub stop_timeout: Duration,
    /// The whole fetch gives up after this.
    pub timeout: Duration,
    /// Peers local service discovery (BEP 14) finds for this info hash, while the caller keeps
    /// the registration: with it, running out of peers does not end the fetch before its
    /// deadline.
    pub discovered: Option<Receiver<crate::lsd::FoundPeers>>,
    /// How connections are encrypted (`[network] encryption`).
    pub encryption: Encryption,
    /// The process's DHT, when it runs: it is asked for peers (and told about us) at once, then
    /// after 5 s, doubling up to every minute; while it runs the fetch waits for peers until its
    /// deadline.
    pub dht: Option<crate::dht::DhtHandle>,
}

/// How soon a fetch asks the DHT again the first time (a seeder may announce just after our
/// first lookup); each wait doubles up to [`DHT_LOOKUP_EVERY`].
const DHT_LOOKUP_FIRST: Duration = Duration::from_secs(5);
/// How often a fetch asks the DHT again, at most.
const DHT_LOOKUP_EVERY: Duration = Duration::from_secs(60);

/// Hands the DHT's peers to the fetch loop; gone once the loop is.
struct DhtSink(Sender<Event>);

impl crate::dht::PeerSink for DhtSink {
    fn deliver(&mut self, peers: Vec<SocketAddr>) -> bool {
        self.0.send(Event::DhtPeers(peers)).is_ok()
    }
}

/// A verified info dictionary and where it came from.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The raw bytes of the info dictionary; their SHA-1 is the info hash.
    pub info: Vec<u8>,
    /// The peers whose pieces make up `info`.
    pub sources: Vec<SocketAddr>,
    /// Every peer address learned (given, or from trackers) that did not misbehave: worth
    /// dialling for the download.
    pub peers: Vec<SocketAddr>,
}

/// Why [`fetch`] returned without metadata.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No peer to ask: none given, no tracker answered with any, or all misbehaved.
    #[error(
        "no peers left to ask for the metadata ({tried} tried, {banned} dropped for bad metadata or protocol errors)"
    )]
    NoPeers {
        /// Peer addresses dialled.
        tried: usize,
        /// Of those, the ones banned.
        banned: usize,
    },
    /// The deadline passed first.
    #[error(
        "no verified metadata within {waited:?} ({tried} peers tried, {banned} dropped for bad metadata or protocol errors)"
    )]
    TimedOut {
        waited: Duration,
        tried: usize,
        banned: usize,
    },
    /// The caller's stop channel fired.
    #[error("stopped before the metadata arrived")]
    Stopped,
}

/// Fetches and verifies the info dictionary of `params.info_hash`: dials the given peers and
/// those the trackers name, takes the connections that arrive on `incoming` (the listener's
/// inbox for this info hash, if any), collects the metadata pieces, and returns once their SHA-1
/// matches. A message on `stop` (or its disconnection) ends the fetch.
///
/// # Errors
/// [`FetchError::Stopped`] on `stop`; [`FetchError::TimedOut`] after `params.timeout`;
/// [`FetchError::NoPeers`] as soon as no peer is left to try, no announce is pending, and no
/// peer can dial in (no `incoming`, or no tracker took our announce).
pub fn fetch(
    params: &FetchParams,
    stop: &Receiver<()>,
    incoming: Option<&Receiver<Incoming>>,
) -> Result<Fetched, FetchError> {
    let started = Instant::now();
    let deadline = started + params.timeout;
    let (events_tx, events) = crossbeam_channel::unbounded();
    let setup = Arc::new(PeerSetup {
        info_hash: params.info_hash,
        peer_id: params.peer_id,
        listen_port: params.listen_port,
        bind: params.bind.filter(|ip| !ip.is_unspecified()),
        connect_timeout: params.connect_timeout,
        encryption: params.encryption,
    });
    let mut state = FetchState::new(params.info_hash);
    state.add_peers(&params.peers, started);
    let tracker_key: u32 = rand::random();
    let mut announcing = spawn_announces(params, tracker_key, &events_tx);
    // Trackers that took our `started`: they hand our address to peers, which may dial in.
    let mut announced: Vec<String> = Vec::new();
    let never = crossbeam_channel::never();
    let inbox = incoming.unwrap_or(&never);
    let never_found = crossbeam_channel::never();
    let discovered = params.discovered.as_ref().unwrap_or(&never_found);
    info!(
        "magnet {}{}: fetching metadata from {} peers and {announcing} trackers",
        params.info_hash,
        params
            .name
            .as_ref()
            .map_or(String::new(), |n| format!(" ({n})")),
        params.peers.len()
    );
    let mut orders: HashMap<Key, Sender<Order>> = HashMap::new();
    let mut threads: Vec<Watched<()>> = Vec::new();
    let mut next_dht_lookup = started;
    let mut dht_wait = DHT_LOOKUP_FIRST;
    let result = loop {
        let now = Instant::now();
        if let Some(dht) = &params.dht
            && now >= next_dht_lookup
        {
            next_dht_lookup = now + dht_wait;
            dht_wait = crate::backoff::doubling(dht_wait, 1, DHT_LOOKUP_EVERY);
            // Announced too when peers can dial in, so a seeder that finds us connects.
            let port = incoming.is_some().then_some(params.listen_port);
            dht.search_once(
                &params.info_hash,
                port,
                Box::new(DhtSink(events_tx.clone())),
            );
        }
        if let Some(verified) = state.done.take() {
            break Ok(verified);
        }
        if now >= deadline {
            break Err(FetchError::TimedOut {
                waited: params.timeout,
                tried: state.tried(),
                banned: state.banned(),
            });
        }
        let reachable = (incoming.is_some() && !announced.is_empty())
            || params.dht.is_some()
            || params.discovered.is_some();
        if announcing == 0 && state.exhausted() && !reachable {
            break Err(FetchError::NoPeers {
                tried: state.tried(),
                banned: state.banned(),
            });
        }
        threads.retain_mut(|t| !t.is_done());
        for (key, addr) in state.dial(now) {
            spawn_peer(
                &setup,
                key,
                addr,
                None,
                &events_tx,
                &mut orders,
                &mut threads,
            );
        }
        for action in state.take_actions() {
            match action {
                // A full or closed queue means the thread is ending; its `Gone` follows.
                Action::Request { peer, piece } => {
                    if let Some(tx) = orders.get(&peer) {
                        let _ = tx.try_send(Order::Request(piece));
                    }
                }
                // Dropping the sender is the order: the thread sees it within `READ_TICK`.
                Action::Stop { peer } => {
                    orders.remove(&peer);
                }
            }
        }
        let wait = LOOP_TICK.min(deadline.saturating_duration_since(now));
        select! {
            recv(events) -> event => {
                // The loop holds a sender, so the channel never disconnects.
                if let Ok(event) = event {
                    handle_event(&mut state, event, &mut announcing, &mut announced, &mut orders);
                }
            }
            recv(inbox) -> conn => {
                // The caller holds the inbox's sender (the registry's route), so it stays open.
                if let Ok(conn) = conn {
                    take_incoming(&mut state, conn, &setup, &events_tx, &mut orders, &mut threads);
                }
            }
            recv(discovered) -> found => {
                if let Ok((source, peers)) = found {
                    debug!("metadata: {} gave {peers:?}", source.name());
                    state.add_peers(&peers, Instant::now());
                }
            }
            recv(stop) -> _ => break Err(FetchError::Stopped),
            default(wait) => {}
        }
        state.tick(Instant::now());
    };
    drop(orders);
    if result.is_err() {
        announce_stopped(params, tracker_key, &announced);
    }
    join_bounded(threads);
    result.map(|verified| Fetched {
        info: verified.info,
        sources: verified.sources,
        peers: state.known_peers(),
    })
}

/// A peer dialled in: its own `metadata ADDR` thread, if the state takes it (else it is closed).
fn take_incoming(
    state: &mut FetchState,
    conn: Incoming,
    setup: &Arc<PeerSetup>,
    events: &Sender<Event>,
    orders: &mut HashMap<Key, Sender<Order>>,
    threads: &mut Vec<Watched<()>>,
) {
    let addr = conn.addr;
    match state.on_incoming(addr, Instant::now()) {
        Some(key) => {
            debug!("metadata: peer {addr} dialled in");
            spawn_peer(setup, key, addr, Some(conn), events, orders, threads);
        }
        None => debug!("metadata: peer {addr} dialled in: not taken"),
    }
}

/// Starts the `metadata ADDR` thread of connection `key`: it dials `addr`, or answers `accepted`.
fn spawn_peer(
    setup: &Arc<PeerSetup>,
    key: Key,
    addr: SocketAddr,
    accepted: Option<Incoming>,
    events: &Sender<Event>,
    orders: &mut HashMap<Key, Sender<Order>>,
    threads: &mut Vec<Watched<()>>,
) {
    let (tx, rx) = crossbeam_channel::bounded(64);
    let thread_events = events.clone();
    let setup = Arc::clone(setup);
    let spawned = crate::watched::spawn(
        std::thread::Builder::new()
            .name(format!("metadata {addr}"))
            .stack_size(crate::peer::PEER_STACK_BYTES),
        move || {
            crate::profile::run_as(crate::profile::Role::Metadata, || {
                peer_thread(&setup, key, addr, accepted, &thread_events, &rx);
            });
        },
    );
    match spawned {
        Ok(handle) => {
            orders.insert(key, tx);
            threads.push(handle);
        }
        Err(e) => {
            warn!("metadata: cannot start a thread for peer {addr}: {e}");
            // Reported as gone, so the state frees the connection.
            let _ = events.send(Event::Gone {
                peer: key,
                addr,
                end: PeerError::Panicked,
            });
        }
    }
}

fn handle_event(
    state: &mut FetchState,
    event: Event,
    announcing: &mut usize,
    announced: &mut Vec<String>,
    orders: &mut HashMap<Key, Sender<Order>>,
) {
    let now = Instant::now();
    match event {
        Event::Ready {
            peer,
            size,
            listen_port,
        } => {
            state.on_ready(peer, size);
            if let Some(port) = listen_port {
                state.on_listen_port(peer, port);
            }
        }
        Event::Piece {
            peer,
            piece,
            total_size,
            data,
        } => state.on_piece(peer, piece, total_size, data),
        Event::Rejected { peer, piece } => state.on_rejected(peer, piece),
        Event::Gone { peer, addr, end } => {
            debug!("metadata: peer {addr}: {end}");
            orders.remove(&peer);
            state.on_gone(peer, end.is_misbehaviour(), now);
        }
        Event::TrackerPeers { url, peers } => {
            debug!("metadata: tracker {url}: {} peers", peers.len());
            state.add_peers(&peers, now);
            announced.push(url);
        }
        Event::DhtPeers(peers) => {
            debug!("metadata: dht: {} peers", peers.len());
            state.add_peers(&peers, now);
        }
        Event::AnnounceDone => *announcing = announcing.saturating_sub(1),
    }
}

/// Waits up to [`JOIN_GRACE`] for the peer threads; any still running (connecting) are left to
/// end on their own: their events go to a closed channel.
fn join_bounded(mut threads: Vec<Watched<()>>) {
    let deadline = Instant::now() + JOIN_GRACE;
    let mut left = 0;
    for thread in &mut threads {
        // One deadline for all: the whole wait stays within the grace.
        if !thread.wait_until(deadline) {
            left += 1;
        }
    }
    if left > 0 {
        debug!("metadata: {left} peer threads still connecting; they end on their own");
    }
}

/// Our announce of `event` for the fetch (`key` the same in every announce of one fetch).
fn announce_request(params: &FetchParams, event: AnnounceEvent, key: u32) -> AnnounceRequest {
    AnnounceRequest {
        info_hash: params.info_hash.0,
        peer_id: params.peer_id,
        port: params.listen_port,
        uploaded: 0,
        downloaded: 0,
        left: UNKNOWN_LEFT,
        event: Some(event),
        numwant: params.numwant,
        tracker_id: None,
        key,
        addrs: params.addrs,
        encryption: params.encryption,
    }
}

/// One announce to `url` (HTTP or UDP), bounded by `timeout`.
fn announce_once(
    url: &str,
    request: &AnnounceRequest,
    bind: Option<IpAddr>,
    udp_retransmit_base: Duration,
    timeout: Duration,
) -> Result<AnnounceResponse, TrackerError> {
    if udp::is_supported(url) {
        UdpClient::new(udp_retransmit_base).bound_to(bind).announce(
            url,
            request,
            Instant::now() + timeout,
        )
    } else {
        http::announce(url, request, timeout)
    }
}

/// Tells the trackers in `urls` we are gone (`stopped`), all at once, and waits for them at most
/// `params.stop_timeout` (a thread still waiting then is left to its own timeout, the same).
fn announce_stopped(params: &FetchParams, key: u32, urls: &[String]) {
    if urls.is_empty() {
        return;
    }
    let deadline = Instant::now() + params.stop_timeout;
    let request = announce_request(params, AnnounceEvent::Stopped, key);
    let mut threads = Vec::new();
    for url in urls {
        let (request, url) = (request.clone(), url.clone());
        let (bind, base, timeout) = (params.bind, params.udp_retransmit_base, params.stop_timeout);
        let spawned = crate::watched::spawn(
            std::thread::Builder::new().name("metadata tracker".into()),
            move || match announce_once(&url, &request, bind, base, timeout) {
                Ok(_) => debug!("tracker {url}: stopped"),
                Err(e) => debug!("{e} (announcing stopped)"),
            },
        );
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(e) => warn!("cannot start a thread to announce stopped: {e}"),
        }
    }
    for mut thread in threads {
        thread.wait_until(deadline);
    }
}

/// Starts one `metadata tracker` thread per usable tracker; returns how many.
fn spawn_announces(params: &FetchParams, key: u32, events: &Sender<Event>) -> usize {
    let request = announce_request(params, AnnounceEvent::Started, key);
    let mut started = 0;
    for url in &params.trackers {
        if !http::is_supported(url) && !udp::is_supported(url) {
            warn!("tracker {url}: unsupported scheme; skipped");
            continue;
        }
        let (request, events) = (request.clone(), events.clone());
        let (timeout, base) = (params.announce_timeout, params.udp_retransmit_base);
        let bind = params.bind;
        let url = url.clone();
        let thread_url = url.clone();
        let spawned = std::thread::Builder::new()
            .name("metadata tracker".into())
            .spawn(move || {
                let url = thread_url;
                match announce_once(&url, &request, bind, base, timeout) {
                    Ok(reply) => {
                        let _ = events.send(Event::TrackerPeers {
                            url,
                            peers: reply.peers,
                        });
                    }
                    Err(e) => warn!("{e}; the metadata must come from other peers"),
                }
                let _ = events.send(Event::AnnounceDone);
            });
        match spawned {
            Ok(_) => started += 1,
            Err(e) => warn!("tracker {url}: cannot start an announce thread: {e}"),
        }
    }
    started
}

// ---- the state of a fetch (pure: no sockets, no threads, time passed in) ----------------------

/// A process-local number for one connection attempt.
type Key = u64;

/// What the fetch loop must do for the state.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    /// Ask this peer for this metadata piece.
    Request { peer: Key, piece: u32 },
    /// End this peer's connection.
    Stop { peer: Key },
}

/// How far we trust an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// May fill a shared assembly.
    Trusted,
    /// Sent a piece of a shared assembly that failed the hash: may only fill its own.
    Suspect,
    /// Sent bad metadata alone, or broke the protocol: never dialled again.
    Banned,
}

/// One address we know of.
#[derive(Debug)]
struct Entry {
    standing: Standing,
    /// A connection to it is open or being opened.
    connected: bool,
    failures: u32,
    not_before: Instant,
}

/// One connection, from dialling until its thread is gone.
#[derive(Debug)]
struct Link {
    addr: SocketAddr,
    /// The peer's `metadata_size`, once its extended handshake came.
    size: Option<u32>,
    /// Pieces asked of it and when.
    outstanding: Vec<(u32, Instant)>,
    /// We told it to stop; its `Gone` is on the way.
    stopping: bool,
    /// It dialled us: its address is not one to dial.
    incoming: bool,
}

#[derive(Debug)]
enum Slot {
    Missing,
    Requested(Key),
    Received { from: Key, data: Vec<u8> },
}

/// The pieces of one candidate info dictionary of `size` bytes.
#[derive(Debug)]
struct Assembly {
    size: u32,
    /// Only this (suspect) peer may fill it; `None`: every trusted peer with this size.
    solo: Option<Key>,
    slots: Vec<Slot>,
}

impl Assembly {
    fn new(size: u32, solo: Option<Key>) -> Self {
        let pieces = size.div_ceil(METADATA_PIECE_LEN);
        Self {
            size,
            solo,
            slots: (0..pieces).map(|_| Slot::Missing).collect(),
        }
    }

    /// Length of piece `piece`, `None` past the end.
    fn piece_len(&self, piece: u32) -> Option<u32> {
        let start = piece.checked_mul(METADATA_PIECE_LEN)?;
        (start < self.size).then(|| (self.size - start).min(METADATA_PIECE_LEN))
    }
}

/// Metadata whose SHA-1 matched.
#[derive(Debug)]
struct Verified {
    info: Vec<u8>,
    sources: Vec<SocketAddr>,
}

/// The fetch's bookkeeping; the fetch loop feeds it events and carries out its actions.
struct FetchState {
    info_hash: InfoHash,
    /// Every address known, in the order learned.
    order: Vec<SocketAddr>,
    book: HashMap<SocketAddr, Entry>,
    links: BTreeMap<Key, Link>,
    /// The address of every key ever used (pieces outlive their sender's connection).
    addr_of: HashMap<Key, SocketAddr>,
    assemblies: Vec<Assembly>,
    actions: Vec<Action>,
    next_key: Key,
    done: Option<Verified>,
    /// The listen addresses of peers that dialled in, from their extended handshakes, in order.
    learned: Vec<SocketAddr>,
}

impl FetchState {
    fn new(info_hash: InfoHash) -> Self {
        Self {
            info_hash,
            order: Vec::new(),
            book: HashMap::new(),
            links: BTreeMap::new(),
            addr_of: HashMap::new(),
            assemblies: Vec::new(),
            actions: Vec::new(),
            next_key: 0,
            done: None,
            learned: Vec::new(),
        }
    }

    fn add_peers(&mut self, addrs: &[SocketAddr], now: Instant) {
        for &addr in addrs {
            if addr.port() == 0 || addr.ip().is_unspecified() || self.book.contains_key(&addr) {
                continue;
            }
            self.order.push(addr);
            self.book.insert(
                addr,
                Entry {
                    standing: Standing::Trusted,
                    connected: false,
                    failures: 0,
                    not_before: now,
                },
            );
        }
    }

    /// Addresses to dial now, each with its new key, up to [`MAX_CONNECTIONS`] open at once.
    fn dial(&mut self, now: Instant) -> Vec<(Key, SocketAddr)> {
        let mut out = Vec::new();
        for i in 0..self.order.len() {
            if self.links.len() >= MAX_CONNECTIONS {
                break;
            }
            let addr = &self.order[i];
            let entry = self
                .book
                .get_mut(addr)
                .expect("every ordered address is in the book");
            if entry.connected || entry.standing == Standing::Banned || entry.not_before > now {
                continue;
            }
            entry.connected = true;
            let addr = *addr;
            out.push((self.open_link(addr, false), addr));
        }
        out
    }

    /// A peer dialled in from `addr`: its key, or `None` to close the connection (the metadata
    /// is verified already, [`MAX_CONNECTIONS`] are open, it is connected already, or its IP
    /// was banned: a peer that dials in again comes from another port).
    fn on_incoming(&mut self, addr: SocketAddr, now: Instant) -> Option<Key> {
        if self.done.is_some() || self.links.len() >= MAX_CONNECTIONS {
            return None;
        }
        if self
            .book
            .iter()
            .any(|(a, e)| a.ip() == addr.ip() && e.standing == Standing::Banned)
        {
            return None;
        }
        let entry = self.book.entry(addr).or_insert(Entry {
            standing: Standing::Trusted,
            connected: false,
            failures: 0,
            not_before: now,
        });
        if entry.connected {
            return None;
        }
        entry.connected = true;
        Some(self.open_link(addr, true))
    }

    /// A new link to `addr` (dialled, or `incoming`) under a fresh key.
    fn open_link(&mut self, addr: SocketAddr, incoming: bool) -> Key {
        let key = self.next_key;
        self.next_key += 1;
        self.links.insert(
            key,
            Link {
                addr,
                size: None,
                outstanding: Vec::new(),
                stopping: false,
                incoming,
            },
        );
        self.addr_of.insert(key, addr);
        key
    }

    /// The listen port a peer that dialled in named in its extended handshake: its address is
    /// worth dialling for the download.
    fn on_listen_port(&mut self, peer: Key, port: u16) {
        if let Some(link) = self.links.get(&peer)
            && link.incoming
            && port != 0
        {
            let addr = SocketAddr::new(link.addr.ip(), port);
            if !self.learned.contains(&addr) {
                self.learned.push(addr);
            }
        }
    }

    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The peer's extended handshake came with a `metadata_size` already bounded.
    fn on_ready(&mut self, peer: Key, size: u32) {
        if let Some(link) = self.links.get_mut(&peer) {
            link.size = Some(size);
        }
    }

    fn on_piece(&mut self, peer: Key, piece: u32, total_size: Option<u64>, data: Vec<u8>) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        let Some(at) = link.outstanding.iter().position(|(p, _)| *p == piece) else {
            debug!(
                "metadata: peer {}: piece {piece} we did not ask for; ignored",
                link.addr
            );
            return;
        };
        link.outstanding.remove(at);
        let Some(index) = self.assembly_of(peer) else {
            return;
        };
        let assembly = &mut self.assemblies[index];
        let want = assembly.piece_len(piece);
        if total_size.is_some_and(|t| t != u64::from(assembly.size)) {
            let size = assembly.size;
            self.ban(
                peer,
                &format!("total_size {total_size:?} after metadata_size {size}"),
            );
            return;
        }
        if want.and_then(|w| usize::try_from(w).ok()) != Some(data.len()) {
            let len = data.len();
            self.ban(
                peer,
                &format!("piece {piece} of {len} bytes, want {want:?}"),
            );
            return;
        }
        let slot = &mut assembly.slots[usize::try_from(piece).expect("within the slots")];
        if matches!(slot, Slot::Received { .. }) {
            return;
        }
        *slot = Slot::Received { from: peer, data };
        if assembly
            .slots
            .iter()
            .all(|s| matches!(s, Slot::Received { .. }))
        {
            self.verify(index);
        }
    }

    fn on_rejected(&mut self, peer: Key, piece: u32) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        link.outstanding.retain(|(p, _)| *p != piece);
        debug!(
            "metadata: peer {}: rejected piece {piece}; asking others",
            link.addr
        );
        self.stop(peer);
    }

    /// The peer's thread ended; `misbehaved` bans its address, anything else delays its retry.
    fn on_gone(&mut self, peer: Key, misbehaved: bool, now: Instant) {
        let Some(link) = self.links.remove(&peer) else {
            return;
        };
        self.release(peer);
        let entry = self
            .book
            .get_mut(&link.addr)
            .expect("linked addresses are known");
        entry.connected = false;
        if misbehaved {
            entry.standing = Standing::Banned;
        } else {
            let wait = crate::backoff::doubling(RETRY_BASE, entry.failures, RETRY_MAX);
            entry.failures += 1;
            entry.not_before = now + wait;
        }
    }

    /// Drops peers whose requests timed out, then hands out requests.
    fn tick(&mut self, now: Instant) {
        let late: Vec<Key> = self
            .links
            .iter()
            .filter(|(_, l)| {
                !l.stopping
                    && l.outstanding
                        .iter()
                        .any(|(_, at)| now.saturating_duration_since(*at) >= REQUEST_TIMEOUT)
            })
            .map(|(k, _)| *k)
            .collect();
        for peer in late {
            debug!(
                "metadata: peer {}: no answer within {REQUEST_TIMEOUT:?}",
                self.links[&peer].addr
            );
            self.stop(peer);
        }
        self.schedule(now);
    }

    /// In rounds of one request per peer, so the pieces spread over the peers.
    fn schedule(&mut self, now: Instant) {
        if self.done.is_some() {
            return;
        }
        for _ in 0..REQUESTS_PER_PEER {
            let ready: Vec<Key> = self
                .links
                .iter()
                .filter(|(_, l)| {
                    !l.stopping && l.size.is_some() && l.outstanding.len() < REQUESTS_PER_PEER
                })
                .map(|(k, _)| *k)
                .collect();
            for peer in ready {
                let Some(index) = self.assembly_of(peer) else {
                    continue;
                };
                let slots = &mut self.assemblies[index].slots;
                let Some(free) = slots.iter().position(|s| matches!(s, Slot::Missing)) else {
                    continue;
                };
                slots[free] = Slot::Requested(peer);
                let piece = u32::try_from(free).expect("at most 1024 pieces");
                let link = self.links.get_mut(&peer).expect("listed above");
                link.outstanding.push((piece, now));
                self.actions.push(Action::Request { peer, piece });
            }
        }
    }

    /// The assembly `peer` fills, made when it has none yet.
    fn assembly_of(&mut self, peer: Key) -> Option<usize> {
        let link = self.links.get(&peer)?;
        let size = link.size?;
        let solo = match self.book[&link.addr].standing {
            Standing::Trusted => None,
            Standing::Suspect => Some(peer),
            Standing::Banned => return None,
        };
        let found = self
            .assemblies
            .iter()
            .position(|a| a.solo == solo && (solo.is_some() || a.size == size));
        Some(found.unwrap_or_else(|| {
            self.assemblies.push(Assembly::new(size, solo));
            self.assemblies.len() - 1
        }))
    }

    fn verify(&mut self, index: usize) {
        let assembly = self.assemblies.remove(index);
        let mut info = Vec::with_capacity(usize::try_from(assembly.size).unwrap_or(0));
        let mut senders: Vec<Key> = Vec::new();
        for slot in assembly.slots {
            if let Slot::Received { from, data } = slot {
                info.extend_from_slice(&data);
                if !senders.contains(&from) {
                    senders.push(from);
                }
            }
        }
        let addrs: Vec<SocketAddr> = senders.iter().map(|k| self.addr_of[k]).collect();
        if Sha1::digest(&info).as_slice() == self.info_hash.0 {
            self.done = Some(Verified {
                info,
                sources: addrs,
            });
            return;
        }
        let shown = join_addrs(&addrs);
        if let [liar] = senders[..] {
            self.ban(
                liar,
                &format!(
                    "its {} bytes of metadata fail the info hash check",
                    assembly.size
                ),
            );
            return;
        }
        warn!(
            "metadata: {} bytes from {shown} fail the info hash check; discarded, and each of \
             those peers may now only send a whole copy alone",
            assembly.size
        );
        for peer in senders {
            let entry = self
                .book
                .get_mut(&self.addr_of[&peer])
                .expect("known address");
            if entry.standing == Standing::Trusted {
                entry.standing = Standing::Suspect;
            }
            // Requests of theirs still outstanding were for other assemblies' pieces; none
            // are, since this one was complete, but a suspect starts its own from scratch.
            if let Some(link) = self.links.get_mut(&peer) {
                link.outstanding.clear();
            }
        }
    }

    /// Bans `peer`'s address for good, ends its connection and throws away the pieces it sent.
    fn ban(&mut self, peer: Key, why: &str) {
        let addr = self.addr_of[&peer];
        warn!("metadata: peer {addr}: {why}; dropped for good");
        self.book.get_mut(&addr).expect("known address").standing = Standing::Banned;
        self.stop(peer);
        for assembly in &mut self.assemblies {
            for slot in &mut assembly.slots {
                if matches!(slot, Slot::Received { from, .. } if *from == peer) {
                    *slot = Slot::Missing;
                }
            }
        }
    }

    /// Ends `peer`'s connection; its pieces in flight go back to be asked of others.
    fn stop(&mut self, peer: Key) {
        if let Some(link) = self.links.get_mut(&peer)
            && !link.stopping
        {
            link.stopping = true;
            link.outstanding.clear();
            self.actions.push(Action::Stop { peer });
        }
        self.release(peer);
    }

    /// Frees the slots `peer` was asked for and drops its solo assembly.
    fn release(&mut self, peer: Key) {
        self.assemblies.retain(|a| a.solo != Some(peer));
        for assembly in &mut self.assemblies {
            for slot in &mut assembly.slots {
                if matches!(slot, Slot::Requested(k) if *k == peer) {
                    *slot = Slot::Missing;
                }
            }
        }
    }

    /// True when nothing is connected and every address to dial (if any) is banned.
    fn exhausted(&self) -> bool {
        self.links.is_empty()
            && self
                .order
                .iter()
                .all(|a| self.book[a].standing == Standing::Banned)
    }

    fn tried(&self) -> usize {
        self.addr_of
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    fn banned(&self) -> usize {
        self.book
            .values()
            .filter(|e| e.standing == Standing::Banned)
            .count()
    }

    /// Every address to dial that was not banned, in the order learned, then the listen
    /// addresses of peers that dialled in (unless their IP was banned).
    fn known_peers(&self) -> Vec<SocketAddr> {
        let banned = |ip: IpAddr| {
            self.book
                .iter()
                .any(|(a, e)| a.ip() == ip && e.standing == Standing::Banned)
        };
        let mut peers: Vec<SocketAddr> = self
            .order
            .iter()
            .filter(|a| self.book[a].standing != Standing::Banned)
            .copied()
            .collect();
        for addr in &self.learned {
            if !peers.contains(addr) && !banned(addr.ip()) {
                peers.push(*addr);
            }
        }
        peers
    }
}

fn join_addrs(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- one peer connection, on its own thread ------------------------------------------------

/// What every `metadata ADDR` thread needs, shared.
struct PeerSetup {
    info_hash: InfoHash,
    peer_id: [u8; 20],
    listen_port: u16,
    bind: Option<IpAddr>,
    connect_timeout: Duration,
    encryption: Encryption,
}

/// Facts a peer thread reports to the fetch loop, in the past tense.
#[derive(Debug)]
enum Event {
    /// The extended handshake came, with a bounded `metadata_size` and the peer's listen port
    /// (`p`), if it said.
    Ready {
        peer: Key,
        size: u32,
        listen_port: Option<u16>,
    },
    /// A data message for a piece.
    Piece {
        peer: Key,
        piece: u32,
        total_size: Option<u64>,
        data: Vec<u8>,
    },
    /// A reject for a piece.
    Rejected { peer: Key, piece: u32 },
    /// The thread is ending; sent exactly once per thread, also on a panic.
    Gone {
        peer: Key,
        addr: SocketAddr,
        end: PeerError,
    },
    /// A tracker's reply.
    TrackerPeers { url: String, peers: Vec<SocketAddr> },
    /// Peers the DHT found.
    DhtPeers(Vec<SocketAddr>),
    /// One announce thread finished, however it went.
    AnnounceDone,
}

/// Orders from the fetch loop to one peer thread, in the imperative. Closing the channel is the
/// order to stop.
#[derive(Debug)]
enum Order {
    Request(u32),
}

fn peer_thread(
    setup: &PeerSetup,
    peer: Key,
    addr: SocketAddr,
    accepted: Option<Incoming>,
    events: &Sender<Event>,
    orders: &Receiver<Order>,
) {
    let guard = EndGuard::new(|end| {
        let _ = events.send(Event::Gone { peer, addr, end });
    });
    let end = run_peer(setup, peer, addr, accepted, events, orders);
    guard.end(end);
}

/// One connection's life: dial `addr` (or answer `accepted`, whose handshake the listener read),
/// handshakes, then the requests the loop orders, until something ends it.
fn run_peer(
    setup: &PeerSetup,
    peer: Key,
    addr: SocketAddr,
    accepted: Option<Incoming>,
    events: &Sender<Event>,
    orders: &Receiver<Order>,
) -> PeerError {
    let mut ours = Handshake::new(setup.info_hash.0, setup.peer_id);
    ours.reserved[5] |= EXTENSION_BIT;
    // An accepted connection's slot counts it at the listener until this returns.
    let (mut stream, theirs, slot) = match accepted {
        Some(Incoming {
            stream,
            handshake,
            slot,
            ..
        }) => (stream, handshake, Some(slot)),
        None => {
            let socket = match conn::open_socket(addr, setup.bind) {
                Ok(socket) => socket,
                Err(e) => return PeerError::Connect(e),
            };
            let dial = conn::Dial {
                bind: setup.bind,
                connect_timeout: setup.connect_timeout,
                ours: &ours,
                mode: setup.encryption,
                stopping: &|| false,
            };
            match conn::dial(socket, addr, &dial) {
                Ok((stream, theirs)) => (stream, theirs, None),
                Err(e) => return e,
            }
        }
    };
    if let Err(e) = connection::finish_handshake(&mut stream, &ours, &theirs, slot.is_some()) {
        return e;
    }
    if let Err(e) = stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
        return PeerError::Connect(e);
    }
    stream.set_nodelay();
    if !theirs.supports_extension_protocol() {
        return PeerError::NoExtensions;
    }
    let mut conn = Connection::new(stream, addr, READ_BUF_BYTES, 1024);
    let hello = ExtendedHandshake {
        m: [(UT_METADATA.to_owned(), OUR_UT_METADATA_ID)].into(),
        ..connection::our_extended_handshake(addr, setup.listen_port)
    };
    conn.queue_extended_handshake(&hello);
    let mut handler = MetadataPeer {
        peer,
        addr,
        events,
        orders,
        handshake_by: Instant::now() + HANDSHAKE_TIMEOUT,
        their_id: None,
    };
    conn.run(&mut handler)
}

/// The metadata fetch's [`Handler`] of one connection: it waits for the peer's extended
/// handshake, tells the fetch loop the peer is ready, then sends the loop's requests and passes
/// on the peer's data and rejects. Closing the order channel, or the loop going away, ends it
/// (`Dropped`).
struct MetadataPeer<'a> {
    peer: Key,
    addr: SocketAddr,
    events: &'a Sender<Event>,
    orders: &'a Receiver<Order>,
    /// When the peer's extended handshake must have come by.
    handshake_by: Instant,
    /// The id the peer takes `ut_metadata` under, once its extended handshake came.
    their_id: Option<u8>,
}

impl MetadataPeer<'_> {
    /// The peer's extended handshake: it must offer `ut_metadata` and a bounded
    /// `metadata_size`; the loop hears that the peer is ready.
    fn on_extended_handshake(&mut self, theirs: &ExtendedHandshake) -> Result<(), PeerError> {
        let their_id = match theirs.m.get(UT_METADATA) {
            Some(&id) if id != 0 => id,
            _ => return Err(PeerError::NoUtMetadata),
        };
        let size = match theirs.metadata_size {
            None => return Err(PeerError::NoMetadataSize),
            Some(size) => u32::try_from(size)
                .ok()
                .filter(|s| (1..=MAX_METADATA_BYTES).contains(s))
                .ok_or(PeerError::BadMetadataSize {
                    size,
                    max: MAX_METADATA_BYTES,
                })?,
        };
        debug!(
            "metadata: peer {}: {} offers {size} bytes of metadata",
            self.addr,
            theirs.v.as_deref().unwrap_or("a client")
        );
        self.their_id = Some(their_id);
        self.report(Event::Ready {
            peer: self.peer,
            size,
            listen_port: theirs.p,
        })
    }

    fn report(&self, event: Event) -> Result<(), PeerError> {
        self.events.send(event).map_err(|_| PeerError::Dropped)
    }
}

impl Handler for MetadataPeer<'_> {
    fn before_read(&mut self, conn: &mut Connection) -> Result<(), PeerError> {
        let Some(their_id) = self.their_id else {
            if Instant::now() >= self.handshake_by {
                return Err(PeerError::NoExtendedHandshake(HANDSHAKE_TIMEOUT));
            }
            // No orders come before `Ready`; a closed channel is the order to stop.
            return match self.orders.try_recv() {
                Err(TryRecvError::Disconnected) => Err(PeerError::Dropped),
                _ => Ok(()),
            };
        };
        loop {
            match self.orders.try_recv() {
                Ok(Order::Request(piece)) => {
                    conn.queue_extended(their_id, &MetadataMessage::Request { piece }.encode());
                }
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(PeerError::Dropped),
            }
        }
    }

    fn plan_read(&mut self, space: usize) -> Option<ReadPlan> {
        // Reads block briefly, so a closed order channel is noticed.
        Some(ReadPlan {
            timeout: READ_TICK,
            max_bytes: space,
        })
    }

    fn on_message(&mut self, conn: &mut Connection, msg: Message) -> Result<(), PeerError> {
        let Message::Unknown {
            id: EXTENDED_ID,
            payload,
        } = msg
        else {
            return Ok(());
        };
        let Some((&ext_id, body)) = payload.split_first() else {
            return Ok(());
        };
        let Some(their_id) = self.their_id else {
            if ext_id == HANDSHAKE_EXT_ID {
                let theirs =
                    ExtendedHandshake::decode(body).map_err(|reason| PeerError::BadExtended {
                        extension: "extended handshake",
                        reason,
                    })?;
                return self.on_extended_handshake(&theirs);
            }
            return Ok(());
        };
        if ext_id != OUR_UT_METADATA_ID {
            return Ok(());
        }
        let event =
            match MetadataMessage::decode(body).map_err(|reason| PeerError::BadExtended {
                extension: "ut_metadata",
                reason,
            })? {
                MetadataMessage::Data {
                    piece,
                    total_size,
                    data,
                } => Event::Piece {
                    peer: self.peer,
                    piece,
                    total_size,
                    data: data.to_vec(),
                },
                MetadataMessage::Reject { piece } => Event::Rejected {
                    peer: self.peer,
                    piece,
                },
                MetadataMessage::Request { piece } => {
                    // We have no metadata to give (we did not send a metadata_size).
                    conn.queue_extended(their_id, &MetadataMessage::Reject { piece }.encode());
                    return Ok(());
                }
                MetadataMessage::Other { .. } => return Ok(()),
            };
        self.report(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 6881))
    }

    /// Metadata of `len` bytes (not a real info dictionary: only its hash matters here).
    fn metadata(len: usize) -> (Vec<u8>, InfoHash) {
        let bytes: Vec<u8> = (0..len)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        let hash = InfoHash(Sha1::digest(&bytes).into());
        (bytes, hash)
    }

    const PIECE: usize = METADATA_PIECE_LEN as usize;

    fn piece_of(bytes: &[u8], piece: u32) -> Vec<u8> {
        let start = usize::try_from(piece).unwrap() * PIECE;
        bytes[start..bytes.len().min(start + PIECE)].to_vec()
    }

    fn len32(bytes: &[u8]) -> u32 {
        u32::try_from(bytes.len()).unwrap()
    }

    /// A state with `n` connected, ready peers (keys 0..n) offering `size` bytes.
    fn ready_state(hash: InfoHash, n: u8, size: u32, now: Instant) -> FetchState {
        let mut s = FetchState::new(hash);
        let addrs: Vec<SocketAddr> = (1..=n).map(addr).collect();
        s.add_peers(&addrs, now);
        let dialled = s.dial(now);
        assert_eq!(dialled.len(), usize::from(n));
        for (key, _) in dialled {
            s.on_ready(key, size);
        }
        s
    }

    fn requests(actions: &[Action]) -> Vec<(Key, u32)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Request { peer, piece } => Some((*peer, *piece)),
                Action::Stop { .. } => None,
            })
            .collect()
    }

    /// Answers every outstanding request: `liar` sends zeros, the others the real bytes.
    fn answer_all(s: &mut FetchState, bytes: &[u8], liar: Option<Key>, now: Instant) {
        for (peer, piece) in requests(&s.take_actions()) {
            let mut data = piece_of(bytes, piece);
            if Some(peer) == liar {
                data.fill(0);
            }
            s.on_piece(peer, piece, Some(u64::from(len32(bytes))), data);
        }
        s.tick(now);
    }

    /// A [`Connection`] over loopback TCP, and the peer's end.
    fn connection() -> (Connection, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, addr) = l.accept().unwrap();
        let stream = crate::peer::conn::PeerStream::Plain(ours);
        (Connection::new(stream, addr, READ_BUF_BYTES, 1024), peer)
    }

    fn extended(ext_id: u8, body: &[u8]) -> Message {
        let mut payload = vec![ext_id];
        payload.extend_from_slice(body);
        Message::Unknown {
            id: EXTENDED_ID,
            payload,
        }
    }

    #[test]
    fn a_metadata_peer_refuses_absurd_sizes_and_peers_without_ut_metadata() {
        let (mut conn, _peer) = connection();
        let (events_tx, _events) = crossbeam_channel::unbounded();
        let (_orders_tx, orders) = crossbeam_channel::bounded(4);
        let mut h = MetadataPeer {
            peer: 7,
            addr: conn.addr(),
            events: &events_tx,
            orders: &orders,
            handshake_by: Instant::now() + HANDSHAKE_TIMEOUT,
            their_id: None,
        };
        let without = ExtendedHandshake {
            metadata_size: Some(20_000),
            ..ExtendedHandshake::default()
        };
        let end = h.on_message(
            &mut conn,
            extended(HANDSHAKE_EXT_ID, &without.encode()[1..]),
        );
        assert!(matches!(end, Err(PeerError::NoUtMetadata)), "{end:?}");
        assert!(!end.unwrap_err().is_misbehaviour());
        let absurd = ExtendedHandshake {
            m: [(UT_METADATA.to_owned(), 3)].into(),
            metadata_size: Some(1 << 40),
            ..ExtendedHandshake::default()
        };
        let end = h
            .on_message(&mut conn, extended(HANDSHAKE_EXT_ID, &absurd.encode()[1..]))
            .unwrap_err();
        assert!(
            matches!(end, PeerError::BadMetadataSize { size, .. } if size == 1 << 40),
            "{end}"
        );
        assert!(end.is_misbehaviour(), "an absurd size bans the address");
        h.handshake_by = Instant::now();
        assert!(matches!(
            h.before_read(&mut conn),
            Err(PeerError::NoExtendedHandshake(_))
        ));
    }

    #[test]
    fn a_metadata_peer_asks_under_the_peers_id_and_passes_answers_on() {
        let (mut conn, _peer) = connection();
        let (events_tx, events) = crossbeam_channel::unbounded();
        let (orders_tx, orders) = crossbeam_channel::bounded(4);
        let mut h = MetadataPeer {
            peer: 7,
            addr: conn.addr(),
            events: &events_tx,
            orders: &orders,
            handshake_by: Instant::now() + HANDSHAKE_TIMEOUT,
            their_id: None,
        };
        // Before the extended handshake, metadata messages are not for us yet.
        let data = MetadataMessage::Data {
            piece: 1,
            total_size: Some(20_000),
            data: &[9; 100],
        }
        .encode();
        h.on_message(&mut conn, extended(OUR_UT_METADATA_ID, &data))
            .unwrap();
        assert!(events.try_recv().is_err());
        let theirs = ExtendedHandshake {
            m: [(UT_METADATA.to_owned(), 3)].into(),
            metadata_size: Some(20_000),
            p: Some(6881),
            ..ExtendedHandshake::default()
        };
        h.on_message(&mut conn, extended(HANDSHAKE_EXT_ID, &theirs.encode()[1..]))
            .unwrap();
        assert!(matches!(
            events.try_recv().unwrap(),
            Event::Ready {
                peer: 7,
                size: 20_000,
                listen_port: Some(6881)
            }
        ));
        orders_tx.send(Order::Request(1)).unwrap();
        h.before_read(&mut conn).unwrap();
        let mut want = vec![0, 0, 0, 27, 20, 3];
        want.extend_from_slice(b"d8:msg_typei0e5:piecei1ee");
        assert_eq!(conn.out(), &want, "a request under the peer's id 3");
        conn.out().clear();
        h.on_message(&mut conn, extended(OUR_UT_METADATA_ID, &data))
            .unwrap();
        assert!(matches!(
            events.try_recv().unwrap(),
            Event::Piece { peer: 7, piece: 1, total_size: Some(20_000), data } if data == [9; 100]
        ));
        // The peer asks us: we have nothing to give, and say so under its id.
        let ask = MetadataMessage::Request { piece: 0 }.encode();
        h.on_message(&mut conn, extended(OUR_UT_METADATA_ID, &ask))
            .unwrap();
        let mut want = vec![0, 0, 0, 27, 20, 3];
        want.extend_from_slice(b"d8:msg_typei2e5:piecei0ee");
        assert_eq!(conn.out(), &want);
        let bad = h.on_message(&mut conn, extended(OUR_UT_METADATA_ID, b"not bencode"));
        assert!(bad.unwrap_err().is_misbehaviour());
        drop(orders_tx);
        assert!(matches!(h.before_read(&mut conn), Err(PeerError::Dropped)));
    }

    #[test]
    fn spreads_pieces_over_peers_and_verifies_the_whole() {
        let now = Instant::now();
        let (bytes, hash) = metadata(3 * 16384 + 100);
        let size = len32(&bytes);
        let mut s = ready_state(hash, 2, size, now);
        s.tick(now);
        let asked = requests(&s.take_actions());
        assert_eq!(asked, vec![(0, 0), (1, 1), (0, 2), (1, 3)]);
        for (peer, piece) in asked {
            assert!(s.done.is_none());
            s.on_piece(peer, piece, Some(u64::from(size)), piece_of(&bytes, piece));
        }
        let done = s.done.take().expect("verified");
        assert_eq!(done.info, bytes);
        assert_eq!(done.sources, vec![addr(1), addr(2)]);
    }

    #[test]
    fn a_lone_liar_is_banned_and_an_honest_peer_finishes() {
        let now = Instant::now();
        let (bytes, hash) = metadata(1000);
        let mut s = ready_state(hash, 2, 1000, now);
        s.tick(now);
        // One piece: peer 0 gets it and lies.
        assert_eq!(requests(&s.take_actions()), vec![(0, 0)]);
        s.on_piece(0, 0, Some(1000), vec![0; 1000]);
        assert!(s.done.is_none());
        assert_eq!(s.book[&addr(1)].standing, Standing::Banned);
        assert_eq!(s.take_actions(), vec![Action::Stop { peer: 0 }]);
        s.on_gone(0, false, now);
        s.tick(now);
        assert_eq!(requests(&s.take_actions()), vec![(1, 0)]);
        s.on_piece(1, 0, None, bytes.clone());
        assert_eq!(s.done.take().unwrap().sources, vec![addr(2)]);
        assert_eq!(s.known_peers(), vec![addr(2)]);
    }

    #[test]
    fn a_mixed_failure_makes_suspects_that_must_send_a_whole_copy_alone() {
        let now = Instant::now();
        let (bytes, hash) = metadata(2 * 16384 + 5);
        let mut s = ready_state(hash, 2, len32(&bytes), now);
        s.tick(now);
        // Peer 0 lies in every piece it sends; peer 1 is honest.
        answer_all(&mut s, &bytes, Some(0), now);
        assert!(s.done.is_none());
        assert_eq!(s.book[&addr(1)].standing, Standing::Suspect);
        assert_eq!(s.book[&addr(2)].standing, Standing::Suspect);
        // Each now fills its own copy: the liar's fails and bans it, the honest one verifies.
        for _ in 0..3 {
            answer_all(&mut s, &bytes, Some(0), now);
        }
        assert_eq!(s.book[&addr(1)].standing, Standing::Banned);
        let done = s.done.take().expect("the honest copy verifies");
        assert_eq!(done.info, bytes);
        assert_eq!(done.sources, vec![addr(2)]);
    }

    #[test]
    fn peers_that_disagree_on_the_size_fill_separate_assemblies() {
        let now = Instant::now();
        let (bytes, hash) = metadata(20_000);
        let mut s = FetchState::new(hash);
        s.add_peers(&[addr(1), addr(2)], now);
        let keys: Vec<Key> = s.dial(now).into_iter().map(|(k, _)| k).collect();
        s.on_ready(keys[0], 5_000_000);
        s.on_ready(keys[1], 20_000);
        s.tick(now);
        let asked = requests(&s.take_actions());
        assert_eq!(asked, vec![(0, 0), (1, 0), (0, 1), (1, 1)]);
        // The liar stalls; the honest peer alone completes its assembly.
        s.on_piece(1, 0, Some(20_000), piece_of(&bytes, 0));
        s.on_piece(1, 1, Some(20_000), piece_of(&bytes, 1));
        assert_eq!(s.done.take().unwrap().info, bytes);
    }

    #[test]
    fn wrong_lengths_and_sizes_ban_the_sender() {
        let now = Instant::now();
        let (_, hash) = metadata(20_000);
        let mut s = ready_state(hash, 2, 20_000, now);
        s.tick(now);
        s.take_actions();
        s.on_piece(0, 0, Some(20_000), vec![1; 100]);
        s.on_piece(1, 1, Some(19_999), vec![1; 20_000 - 16384]);
        assert_eq!(s.banned(), 2);
        assert_eq!(
            s.take_actions(),
            vec![Action::Stop { peer: 0 }, Action::Stop { peer: 1 }]
        );
        s.on_gone(0, false, now);
        s.on_gone(1, false, now);
        assert!(s.exhausted());
    }

    #[test]
    fn a_banned_peer_takes_its_pieces_with_it() {
        let now = Instant::now();
        let (bytes, hash) = metadata(20_000);
        let mut s = ready_state(hash, 2, 20_000, now);
        s.tick(now);
        assert_eq!(requests(&s.take_actions()), vec![(0, 0), (1, 1)]);
        // Peer 0 sends piece 0, then breaks the rules with an extra request answered wrong.
        s.on_piece(0, 0, Some(20_000), piece_of(&bytes, 0));
        s.tick(now);
        assert_eq!(requests(&s.take_actions()), vec![]);
        s.links.get_mut(&0).unwrap().outstanding.push((1, now));
        s.on_piece(0, 1, Some(20_000), vec![0; 3]);
        assert_eq!(s.book[&addr(1)].standing, Standing::Banned);
        // Piece 0 is asked again, of peer 1, and the copy verifies without peer 0's bytes.
        s.on_piece(1, 1, Some(20_000), piece_of(&bytes, 1));
        s.tick(now);
        let asked = requests(&s.take_actions());
        assert_eq!(asked, vec![(1, 0)]);
        s.on_piece(1, 0, None, piece_of(&bytes, 0));
        let done = s.done.take().expect("verified");
        assert_eq!(done.sources, vec![addr(2)]);
    }

    #[test]
    fn a_reject_or_a_silent_peer_frees_the_piece_for_another() {
        let now = Instant::now();
        let (_, hash) = metadata(100);
        let mut s = ready_state(hash, 2, 100, now);
        s.tick(now);
        assert_eq!(requests(&s.take_actions()), vec![(0, 0)]);
        s.on_rejected(0, 0);
        s.tick(now);
        assert_eq!(
            s.take_actions(),
            vec![
                Action::Stop { peer: 0 },
                Action::Request { peer: 1, piece: 0 }
            ]
        );
        // Peer 1 never answers: after the timeout it is stopped, and peer 0 (gone, retried
        // after its back-off) is dialled again.
        s.on_gone(0, false, now);
        let later = now + REQUEST_TIMEOUT;
        s.tick(later);
        assert_eq!(s.take_actions(), vec![Action::Stop { peer: 1 }]);
        assert_eq!(s.book[&addr(1)].standing, Standing::Trusted);
        assert_eq!(s.dial(later), vec![(2, addr(1))]);
        assert!(!s.exhausted());
    }

    #[test]
    fn a_peer_that_dials_in_serves_metadata_and_its_listen_port_is_passed_on() {
        let now = Instant::now();
        let (bytes, hash) = metadata(1000);
        let mut s = FetchState::new(hash);
        assert!(s.exhausted(), "nothing to dial");
        let from = SocketAddr::from(([127, 0, 0, 9], 50123));
        let key = s.on_incoming(from, now).expect("taken");
        assert_eq!(s.on_incoming(from, now), None, "connected already");
        assert!(
            s.dial(now).is_empty(),
            "an incoming address is never dialled"
        );
        s.on_ready(key, 1000);
        s.on_listen_port(key, 6881);
        s.tick(now);
        assert_eq!(requests(&s.take_actions()), vec![(key, 0)]);
        s.on_piece(key, 0, Some(1000), bytes.clone());
        let done = s.done.take().expect("verified");
        assert_eq!((done.info, done.sources), (bytes, vec![from]));
        assert_eq!(
            s.known_peers(),
            vec![SocketAddr::from(([127, 0, 0, 9], 6881))]
        );
        s.on_gone(key, false, now);
        assert!(s.exhausted(), "an incoming address is not one to dial");
    }

    #[test]
    fn an_incoming_liar_is_refused_from_any_port_and_not_passed_on() {
        let now = Instant::now();
        let (_, hash) = metadata(1000);
        let mut s = FetchState::new(hash);
        let liar = SocketAddr::from(([127, 0, 0, 9], 50123));
        let key = s.on_incoming(liar, now).expect("taken");
        s.on_ready(key, 1000);
        s.on_listen_port(key, 6881);
        s.tick(now);
        assert_eq!(requests(&s.take_actions()), vec![(key, 0)]);
        s.on_piece(key, 0, Some(1000), vec![0; 1000]);
        s.on_gone(key, false, now);
        let again = SocketAddr::from(([127, 0, 0, 9], 50124));
        assert_eq!(s.on_incoming(again, now), None);
        assert!(s.known_peers().is_empty());
        let other = SocketAddr::from(([127, 0, 0, 10], 50124));
        assert!(s.on_incoming(other, now).is_some());
    }

    #[test]
    fn incoming_connections_beyond_the_limit_are_refused() {
        let now = Instant::now();
        let (_, hash) = metadata(1000);
        let mut s = FetchState::new(hash);
        let addrs: Vec<SocketAddr> = (1..=u8::try_from(MAX_CONNECTIONS).unwrap())
            .map(addr)
            .collect();
        s.add_peers(&addrs, now);
        assert_eq!(s.dial(now).len(), MAX_CONNECTIONS);
        assert_eq!(s.on_incoming(addr(200), now), None);
        s.on_gone(0, false, now);
        assert!(s.on_incoming(addr(200), now).is_some());
    }

    #[test]
    fn a_misbehaving_peer_is_never_dialled_again() {
        let now = Instant::now();
        let (_, hash) = metadata(100);
        let mut s = FetchState::new(hash);
        s.add_peers(&[addr(1), addr(1), addr(2)], now);
        assert_eq!(s.dial(now), vec![(0, addr(1)), (1, addr(2))]);
        s.on_gone(0, true, now);
        s.on_gone(1, false, now);
        let later = now + RETRY_MAX;
        assert_eq!(s.dial(later), vec![(2, addr(2))]);
        s.on_gone(2, true, later);
        assert!(s.dial(later + RETRY_MAX).is_empty());
        assert!(s.exhausted());
        assert_eq!((s.tried(), s.banned()), (2, 2));
    }
}
