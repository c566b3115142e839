//! The engine: what one btd process shares across its torrents. It owns our peer id, the
//! listener and the registry the listener routes by, the disk, announce and file-check threads, and starts and stops torrents. The CLI's
//! one-shot commands and (later) the daemon drive it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use log::{debug, info, warn};
use parking_lot::RwLock;
use rand::RngExt;

use crate::dht::{Dht, DhtHandle, PeerSink};
use crate::listener::{FetchInbox, Listener, Registry, Route};
use crate::lsd::{Lsd, LsdConfig, LsdRegistration};
use crate::metainfo::Metainfo;
use crate::peer::mse::Encryption;
use crate::ratelimit::Limits;
use crate::selection::Selection;
use crate::storage::Storage;
use crate::torrent::disk::DiskPool;
use crate::torrent::file_check::FileChecker;
use crate::torrent::{
    Control, PeerSource, ResumeTarget, TorrentHandle, TorrentLimits, TorrentParams,
};
use crate::tracker::OurAddrs;
use crate::tracker::announcer::{ANNOUNCE_THREADS, AnnouncePool};
use crate::wire::Bitfield;

/// Our client prefix in peer ids (Azureus style): btd 0.1.
const PEER_ID_PREFIX: &[u8; 8] = b"-BD0010-";

/// How the engine listens and dials.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub listen: SocketAddr,
    pub limits: TorrentLimits,
    /// Global rates in bytes per second (0 = unlimited).
    pub download_rate: u64,
    pub upload_rate: u64,
    /// Peer connections across all torrents.
    pub max_peers: usize,
    /// Incoming connections at once from one IP address.
    pub max_peers_per_ip: usize,
    /// Run local service discovery (BEP 14) for public torrents.
    pub lsd: bool,
    /// Message stream encryption of peer connections.
    pub encryption: Encryption,
    /// The DHT, when it is on.
    pub dht: Option<crate::dht::DhtConfig>,
}

/// See the module documentation.
pub struct Engine {
    peer_id: [u8; 20],
    registry: Registry,
    listener: Listener,
    config: EngineConfig,
    global: Arc<Limits>,
    /// The disk threads every torrent shares (`limits.disk_threads` of them).
    disk: DiskPool,
    /// The announce threads every torrent shares ([`ANNOUNCE_THREADS`] of them).
    announce: AnnouncePool,
    /// The thread that notices files deleted or truncated under running torrents.
    file_check: FileChecker,
    /// The process's DHT node, when it is on and its socket could be bound.
    dht: Option<Dht>,
    /// Local service discovery (BEP 14), when on; its thread starts with the first public
    /// torrent or magnet.
    lsd: Option<Lsd>,
}

/// What a run starts with besides its data and peers (the daemon sets them; one-shot commands
/// take the defaults: no resume data, no upload limit, every file).
#[derive(Default)]
pub struct RunOptions {
    /// Where to keep resume data.
    pub resume: Option<ResumeTarget>,
    /// Payload bytes this run may upload before a seeding limit is reached (`None`: no limit).
    pub upload_allowance: Option<u64>,
    /// Which files are wanted.
    pub selection: Selection,
}

impl Engine {
    /// Binds the listening socket and starts the listener thread and the disk threads.
    ///
    /// # Errors
    /// When the listen address cannot be bound or a thread cannot be started.
    pub fn start(config: EngineConfig) -> std::io::Result<Self> {
        let registry: Registry = Arc::new(RwLock::new(HashMap::new()));
        let global = Arc::new(Limits::new(
            config.download_rate,
            config.upload_rate,
            config.max_peers,
        ));
        global.peers.set_max_per_ip(config.max_peers_per_ip);
        global.encryption.set(config.encryption);
        let listener = Listener::bind(config.listen, Arc::clone(&registry), Arc::clone(&global))?;
        let disk = DiskPool::start(config.limits.disk_threads)?;
        let announce = AnnouncePool::start(ANNOUNCE_THREADS)?;
        let file_check = FileChecker::start()?;
        let dht = config.dht.as_ref().and_then(|dht| {
            Dht::start(dht, listener.local_addr())
                .map_err(|e| warn!("dht: cannot start: {e}; running without the DHT"))
                .ok()
        });
        let lsd = config.lsd.then(|| {
            Lsd::new(LsdConfig {
                listen_port: listener.local_addr().port(),
                bind: Some(config.listen.ip()),
            })
        });
        Ok(Self {
            peer_id: new_peer_id(),
            registry,
            listener,
            config,
            global,
            disk,
            announce,
            file_check,
            dht,
            lsd,
        })
    }

    /// The process's DHT, when it runs.
    pub fn dht(&self) -> Option<DhtHandle> {
        self.dht.as_ref().map(Dht::handle)
    }

    /// Logs `listening on ADDR`: call it once the torrents that should accept peers are added,
    /// since scripts take the line to mean a peer can connect.
    pub fn log_listening(&self) {
        info!("listening on {}", self.listen_addr());
    }

    /// Our peer id, the same for every torrent (and the metadata fetch) of this process.
    pub fn peer_id(&self) -> [u8; 20] {
        self.peer_id
    }

    /// Our addresses that HTTP announces tell the tracker (BEP 7): while we listen on both
    /// families, the globally routable addresses the system sends from to each family's
    /// internet, looked up now (they may change while we run). A UDP `connect` only consults
    /// the routing table: nothing is sent.
    pub fn our_addrs(&self) -> OurAddrs {
        let listen = self.listen_addr().ip();
        if listen != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
            return OurAddrs::default();
        }
        let route_source = |from: SocketAddr, to: SocketAddr| {
            let socket = std::net::UdpSocket::bind(from).ok()?;
            socket.connect(to).ok()?;
            socket.local_addr().ok().map(|a| a.ip())
        };
        // Documentation addresses (RFC 5737, RFC 3849): routed like any other, never reached.
        let v4 = route_source(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::from((Ipv4Addr::new(198, 51, 100, 1), 6881)),
        );
        let v6 = route_source(
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 6881)),
        );
        OurAddrs::from_route_sources(listen, v4, v6)
    }

    /// The bound listen address, with the port the kernel picked for port 0.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Starts a torrent whose data is opened in `storage`, `have` already verified, dialling
    /// `peers` besides those its trackers give.
    ///
    /// # Errors
    /// When its threads cannot be spawned.
    pub fn add(
        &self,
        meta: Arc<Metainfo>,
        storage: Arc<Storage>,
        have: Bitfield,
        peers: Vec<SocketAddr>,
        options: RunOptions,
    ) -> std::io::Result<TorrentHandle> {
        let RunOptions {
            resume,
            upload_allowance,
            selection,
        } = options;
        let info_hash = meta.info_hash;
        let bind = Some(self.config.listen.ip()).filter(|ip: &IpAddr| !ip.is_unspecified());
        let handle = TorrentHandle::start(TorrentParams {
            our_addrs: self.our_addrs(),
            meta,
            storage,
            have,
            peer_id: self.peer_id,
            listen_port: self.listen_addr().port(),
            bind,
            peers,
            limits: self.config.limits.clone(),
            global: Arc::clone(&self.global),
            resume,
            upload_allowance,
            selection,
            disk: self.disk.handle(),
            announce: self.announce.handle(),
            file_check: self.file_check.handle(),
            dht: self.dht(),
            lsd: self.lsd.as_ref().map(Lsd::handle),
        })?;
        // BEP 27: a private torrent never touches the DHT.
        if !handle.context.private
            && let Some(dht) = self.dht()
        {
            dht.track(
                &info_hash,
                self.listen_addr().port(),
                Box::new(TorrentSink {
                    control: handle.control_sender(),
                    stats: Arc::clone(&handle.stats),
                }),
            );
        }
        self.registry
            .write()
            .insert(info_hash, Route::Torrent(Arc::clone(&handle.context)));
        Ok(handle)
    }

    /// Applies new global rates and peer budget (per IP too) at once, and per-torrent limits to torrents
    /// added from now on (running ones get `Control::SetLimits` from their owner).
    pub fn reconfigure(
        &mut self,
        limits: TorrentLimits,
        download_rate: u64,
        upload_rate: u64,
        max_peers: usize,
        max_peers_per_ip: usize,
    ) {
        self.global.download.set_rate(download_rate);
        self.global.upload.set_rate(upload_rate);
        self.global.peers.set_max(max_peers);
        self.global.peers.set_max_per_ip(max_peers_per_ip);
        self.config.limits = limits;
        self.config.download_rate = download_rate;
        self.config.upload_rate = upload_rate;
        self.config.max_peers = max_peers;
        self.config.max_peers_per_ip = max_peers_per_ip;
    }

    /// How connections opened from now on are encrypted (a reload changes it; open
    /// connections keep theirs).
    pub fn set_encryption(&mut self, mode: Encryption) {
        self.global.encryption.set(mode);
        self.config.encryption = mode;
    }

    /// The encryption mode of new connections.
    pub fn encryption(&self) -> Encryption {
        self.global.encryption.get()
    }

    /// The process's peer budget: slots held by connections open or being dialled, and the
    /// most there may be.
    pub fn peer_slots(&self) -> crate::status::PeerSlots {
        crate::status::PeerSlots {
            used: self.global.peers.used(),
            max: self.global.peers.max(),
        }
    }

    /// Routes incoming connections for `info_hash` to a metadata fetch until the inbox is
    /// dropped; `None` when the torrent is already running.
    pub fn fetch_inbox(&self, info_hash: crate::metainfo::InfoHash) -> Option<FetchInbox> {
        FetchInbox::open(&self.registry, info_hash)
    }

    /// Announces a magnet's info hash on the local network and sends the peers announced for
    /// it to `peers` while the registration lives; `None` when LSD is off. (The metadata is
    /// not known yet, so neither is whether the torrent is private.)
    pub fn lsd_register(
        &self,
        info_hash: crate::metainfo::InfoHash,
        peers: crossbeam_channel::Sender<crate::lsd::FoundPeers>,
    ) -> Option<LsdRegistration> {
        self.lsd.as_ref().map(|lsd| {
            lsd.handle()
                .register(info_hash, Box::new(crate::lsd::ChannelSink(peers)))
        })
    }

    /// Removes a torrent from the listener's registry, so no new peer reaches it.
    pub fn unregister(&self, info_hash: &crate::metainfo::InfoHash) {
        self.registry.write().remove(info_hash);
        if let Some(dht) = self.dht() {
            dht.untrack(info_hash);
        }
    }

    /// Stops a torrent gracefully (announce `stopped`, drop peers, flush).
    pub fn remove(&self, handle: TorrentHandle) {
        self.unregister(&handle.context.info_hash);
        handle.stop();
    }

    /// Stops accepting peers, then lets the disk threads finish what is queued.
    pub fn shutdown(mut self) {
        self.listener.stop();
        if let Some(dht) = self.dht.take() {
            dht.stop();
        }
        if let Some(lsd) = &self.lsd {
            lsd.stop();
        }
        self.disk.stop();
    }
}

/// Where the DHT's peers for a running torrent go: its coordinator, as `Control::AddPeers`
/// (the path tracker and `--peer` peers take).
struct TorrentSink {
    control: crate::torrent::ControlSender,
    stats: Arc<crate::torrent::TorrentStats>,
}

/// Below this many connected peers, a torrent still downloading looks again sooner.
const FEW_PEERS: u32 = 5;

impl PeerSink for TorrentSink {
    fn deliver(&mut self, peers: Vec<SocketAddr>) -> bool {
        debug!("dht: {} peers", peers.len());
        // Never blocks the `dht` thread: the control channel is unbounded (and a parked
        // coordinator is resumed to take them).
        self.control.send(Control::AddPeers(PeerSource::Dht, peers))
    }

    fn needs_peers(&self) -> bool {
        !self
            .stats
            .complete
            .load(std::sync::atomic::Ordering::Relaxed)
            && self.stats.peers.load(std::sync::atomic::Ordering::Relaxed) < FEW_PEERS
    }
}

fn new_peer_id() -> [u8; 20] {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(PEER_ID_PREFIX);
    let mut rng = rand::rng();
    for byte in &mut id[8..] {
        *byte = ALPHABET[rng.random_range(0..ALPHABET.len())];
    }
    id
}
