//! One torrent at run time: its coordinator (which owns the picker, the piece buffers, the
//! choker and the peer table; its thread ends while the torrent is parked, `parking.rs`), the
//! process's disk and announce threads it uses. This module holds the handle the engine keeps
//! and the shared counters it reads.

pub mod admission;
pub mod choker;
mod coordinator;
pub mod disk;
pub mod file_check;
pub mod parking;
pub mod picker;
pub mod piece_buffer;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::metainfo::Metainfo;
use crate::peer::TorrentContext;
use crate::ratelimit::Limits;
use crate::selection::Selection;
use crate::storage::Storage;
use crate::watched::Watched;
use crate::wire::Bitfield;

/// Where the peers a discovery service finds (the DHT, LSD) go: a running torrent's coordinator
/// or a magnet's metadata fetch. `deliver` returning false means the receiver is gone: the
/// service forgets it.
pub trait PeerSink: Send {
    fn deliver(&mut self, peers: Vec<std::net::SocketAddr>) -> bool;
    /// Whether the owner is short of peers (the DHT's next lookup comes sooner).
    fn needs_peers(&self) -> bool {
        false
    }
}

/// Where a peer's address came from (the first source that named it to this torrent), kept
/// for each connected peer and counted for displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerSource {
    /// A tracker's announce reply.
    Tracker,
    /// The DHT (BEP 5).
    Dht,
    /// Peer exchange (BEP 11) from a connected peer.
    Pex,
    /// Local service discovery (BEP 14).
    Lsd,
    /// It connected to us.
    Incoming,
    /// A web seed (BEP 19): a URL, not an address.
    WebSeed,
    /// Given by the user: `--peer`, a magnet's `x.pe`, a `[[torrent]]` entry's `peers`, or the
    /// peers a magnet's metadata fetch learned.
    Manual,
}

impl PeerSource {
    /// Every source, in display order.
    pub const ALL: [PeerSource; 7] = [
        PeerSource::Tracker,
        PeerSource::Dht,
        PeerSource::Pex,
        PeerSource::Lsd,
        PeerSource::Incoming,
        PeerSource::WebSeed,
        PeerSource::Manual,
    ];

    /// Its name in `status.json` and `btd status`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            PeerSource::Tracker => "tracker",
            PeerSource::Dht => "dht",
            PeerSource::Pex => "pex",
            PeerSource::Lsd => "lsd",
            PeerSource::Incoming => "incoming",
            PeerSource::WebSeed => "web_seed",
            PeerSource::Manual => "manual",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Connected peers (web seeds included, under [`PeerSource::WebSeed`]) counted by source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeersBySource([u32; 7]);

impl PeersBySource {
    #[must_use]
    pub fn get(&self, source: PeerSource) -> u32 {
        self.0[source.index()]
    }

    pub fn add(&mut self, source: PeerSource) {
        self.0[source.index()] = self.0[source.index()].saturating_add(1);
    }

    /// `(name, count)` for each source, in [`PeerSource::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        PeerSource::ALL.iter().map(|&s| (s.name(), self.get(s)))
    }
}

/// Orders from the engine to a coordinator.
#[derive(Debug)]
pub enum Control {
    /// Announce `stopped`, drop every peer, finish pending disk writes, flush, exit.
    Stop,
    /// Connect to these peers, found by `source`.
    AddPeers(PeerSource, Vec<SocketAddr>),
    /// New per-torrent limits (config reload); peers stay connected.
    SetLimits(TorrentLimits),
    /// Announce again as soon as the trackers' `min interval` allows (a user asked).
    Reannounce,
    /// A new file selection: pick by it, and create the files wanted now.
    Select(Selection),
}

/// What a torrent tells the engine, in the past tense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorrentEvent {
    /// Every wanted piece is verified and flushed to disk (every piece, unless a file
    /// selection leaves some out).
    Completed,
    /// After [`TorrentEvent::Completed`], a new file selection wants pieces we lack: the
    /// torrent downloads again.
    Incomplete,
    /// The torrent stopped transferring because of a storage error (named in the message).
    Failed(String),
    /// Data we had verified is gone or changed on disk (a file deleted, replaced or truncated,
    /// or a read failed): stop this torrent and hash its data again. Until it stops it serves
    /// nothing and saves no resume data.
    RecheckNeeded(String),
}

/// Counters of one run of a torrent (from its coordinator's start to its end), for progress
/// displays, the announcer and the daemon's lifetime totals. The byte counts are exact: every
/// peer thread adds what it moves as it moves it, so a peer that left still counts.
#[derive(Debug)]
pub struct TorrentStats {
    pub total_bytes: AtomicU64,
    pub verified_bytes: AtomicU64,
    /// Bytes of the pieces the file selection wants (all of them without one).
    pub wanted_bytes: AtomicU64,
    /// Bytes of wanted pieces not verified yet: what the trackers hear as `left`.
    pub left_bytes: AtomicU64,
    /// Payload bytes received in `piece` messages this run, by every peer (including waste).
    pub downloaded: AtomicU64,
    /// Payload bytes of `piece` messages written to sockets this run, by every peer.
    pub uploaded: AtomicU64,
    /// Payload bytes this run may still serve ([`u64::MAX`]: no limit). Peer threads reserve
    /// each block from it before reading it for a peer, so a ratio limit stops uploads exactly;
    /// see [`TorrentStats::reserve_upload`].
    upload_allowance: AtomicU64,
    pub download_rate: AtomicU64,
    pub upload_rate: AtomicU64,
    /// Peers connected, web seeds not counted (the coordinator's tick writes it, as the next
    /// four).
    pub peers: AtomicU32,
    /// Web seeds (BEP 19) running.
    pub web_seeds: AtomicU32,
    /// Web seeds that sent us payload lately.
    pub web_seeds_sending_to_us: AtomicU32,
    /// Connected peers that sent us payload lately.
    pub peers_sending_to_us: AtomicU32,
    /// Connected peers we sent payload to lately.
    pub peers_getting_from_us: AtomicU32,
    /// The verified pieces (for per-file progress displays).
    pub have: parking_lot::Mutex<Bitfield>,
    pub complete: AtomicBool,
    /// Seeders, leechers and completed downloads as the trackers report them (the announcer
    /// writes them).
    pub swarm: Arc<crate::tracker::SwarmStats>,
    /// Connected peers by where their address came from (the coordinator writes it with
    /// `peers`).
    pub peers_by_source: parking_lot::Mutex<PeersBySource>,
    /// The connected peers as the coordinator's last tick saw them (the RPC's `peers`).
    pub peer_list: parking_lot::Mutex<Vec<PeerInfo>>,
}

/// One connected peer, as a snapshot for displays (the RPC's `peers`): written by the
/// coordinator on its tick, read by the daemon.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The client's name: its extended handshake's `v`, else read from its peer id.
    pub client: String,
    pub incoming: bool,
    /// Where its address came from.
    pub source: PeerSource,
    pub am_choking: bool,
    pub am_interested: bool,
    pub peer_choking: bool,
    pub peer_interested: bool,
    /// Our optimistic unchoke.
    pub optimistic: bool,
    /// The fraction of the pieces it has.
    pub progress: f64,
    /// Payload bytes per second from it and to it.
    pub rate_down: u64,
    pub rate_up: u64,
}

impl PeerInfo {
    /// Transmission's `flagStr`: `O` our optimistic unchoke; `D` downloading from it, `d` we
    /// want to but it chokes us; `U` uploading to it, `u` it wants to but we choke it; `K` it
    /// unchoked us but we are not interested; `?` we unchoked it but it is not interested;
    /// `H` found through the DHT, `X` through peer exchange; `I` it connected to us.
    #[must_use]
    pub fn flags(&self) -> String {
        let mut flags = String::new();
        if self.optimistic {
            flags.push('O');
        }
        if self.rate_down > 0 && !self.peer_choking {
            flags.push('D');
        } else if self.am_interested && self.peer_choking {
            flags.push('d');
        }
        if self.rate_up > 0 && !self.am_choking {
            flags.push('U');
        } else if self.peer_interested && self.am_choking {
            flags.push('u');
        }
        if !self.peer_choking && !self.am_interested {
            flags.push('K');
        }
        if !self.am_choking && !self.peer_interested {
            flags.push('?');
        }
        match self.source {
            PeerSource::Dht => flags.push('H'),
            PeerSource::Pex => flags.push('X'),
            _ => {}
        }
        if self.incoming {
            flags.push('I');
        }
        flags
    }
}

/// A client's name from its peer id (Azureus style, `-XXabcd-`: two letters for the client,
/// four version digits), or `unknown` with the id's first printable bytes. What its extended
/// handshake's `v` says is better; this is for peers that send none.
#[must_use]
pub fn client_name(peer_id: &[u8; 20]) -> String {
    let azureus = peer_id[0] == b'-'
        && peer_id[7] == b'-'
        && peer_id[1..3].iter().all(u8::is_ascii_alphabetic)
        && peer_id[3..7].iter().all(u8::is_ascii_alphanumeric);
    if !azureus {
        let printable: String = peer_id
            .iter()
            .take(8)
            .take_while(|b| b.is_ascii_graphic())
            .map(|&b| char::from(b))
            .collect();
        return if printable.is_empty() {
            "unknown".into()
        } else {
            format!("unknown ({printable})")
        };
    }
    let code = std::str::from_utf8(&peer_id[1..3]).unwrap_or_default();
    let digits: Vec<char> = peer_id[3..7].iter().map(|&b| char::from(b)).collect();
    let name = match code {
        "BD" => "btd",
        "DE" => "Deluge",
        "LT" => "libtorrent (Rasterbar)",
        "lt" => "libTorrent (Rakshasa)",
        "qB" => "qBittorrent",
        "TR" => "Transmission",
        "UT" => "\u{00b5}Torrent",
        "AZ" => "Azureus",
        "BT" => "BitTorrent",
        "KT" => "KTorrent",
        "RS" => "Rufus",
        "AG" | "A~" => "Ares",
        _ => return format!("{code} {}", digits.iter().collect::<String>()),
    };
    let version = if code == "TR" {
        // Transmission: one digit, then two (`-TR3000-` is 3.00).
        format!("{}.{}{}", digits[0], digits[1], digits[2])
    } else {
        let mut parts: Vec<String> = digits.iter().map(char::to_string).collect();
        while parts.len() > 2 && parts.last().is_some_and(|d| d == "0") {
            parts.pop();
        }
        parts.join(".")
    };
    format!("{name} {version}")
}

impl Default for TorrentStats {
    fn default() -> Self {
        Self {
            total_bytes: AtomicU64::new(0),
            verified_bytes: AtomicU64::new(0),
            wanted_bytes: AtomicU64::new(0),
            left_bytes: AtomicU64::new(0),
            downloaded: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            upload_allowance: AtomicU64::new(u64::MAX),
            download_rate: AtomicU64::new(0),
            upload_rate: AtomicU64::new(0),
            peers: AtomicU32::new(0),
            web_seeds: AtomicU32::new(0),
            web_seeds_sending_to_us: AtomicU32::new(0),
            peers_sending_to_us: AtomicU32::new(0),
            peers_getting_from_us: AtomicU32::new(0),
            have: parking_lot::Mutex::new(Bitfield::new(0)),
            complete: AtomicBool::new(false),
            swarm: Arc::default(),
            peers_by_source: parking_lot::Mutex::new(PeersBySource::default()),
            peer_list: parking_lot::Mutex::new(Vec::new()),
        }
    }
}

impl TorrentStats {
    /// Bytes of wanted pieces still missing.
    pub fn left(&self) -> u64 {
        self.left_bytes.load(Ordering::Relaxed)
    }

    /// Sets how many more payload bytes this run may upload (`None`: no limit). Bytes already
    /// reserved by peer threads are not taken back.
    pub fn set_upload_allowance(&self, bytes: Option<u64>) {
        self.upload_allowance
            .store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// What is left of the upload allowance, `None` without a limit.
    pub fn upload_allowance(&self) -> Option<u64> {
        Some(self.upload_allowance.load(Ordering::Relaxed)).filter(|&b| b != u64::MAX)
    }

    /// Takes `bytes` from the upload allowance; false (and nothing taken) when less is left.
    pub fn reserve_upload(&self, bytes: u64) -> bool {
        // Without a limit (the usual case) a load, not a write every peer thread contends on.
        if self.upload_allowance.load(Ordering::Relaxed) == u64::MAX {
            return true;
        }
        self.upload_allowance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                if left == u64::MAX {
                    Some(left)
                } else {
                    left.checked_sub(bytes)
                }
            })
            .is_ok()
    }

    /// Returns a reservation that was not sent (the connection failed first).
    pub fn release_upload(&self, bytes: u64) {
        let _ = self
            .upload_allowance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left != u64::MAX).then(|| left.saturating_add(bytes).min(u64::MAX - 1))
            });
    }
}

/// Limits and knobs of one torrent, from the config file and the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorrentLimits {
    pub max_peers: usize,
    /// Most connections from one /24 (IPv4) or /48 (IPv6) network.
    pub max_per_prefix: usize,
    pub upload_slots: usize,
    pub connect_timeout: Duration,
    /// A peer socket write that makes no progress this long drops the peer (it stopped reading).
    pub write_timeout: Duration,
    pub disk_threads: usize,
    pub numwant: u32,
    pub announce_timeout: Duration,
    pub stop_timeout: Duration,
    /// UDP trackers: retransmit after `udp_retransmit_base * 2^n` (BEP 15).
    pub udp_retransmit_base: Duration,
}

/// Everything a torrent needs to start.
pub struct TorrentParams {
    /// Our addresses told to HTTP trackers (BEP 7).
    pub our_addrs: crate::tracker::OurAddrs,
    pub meta: Arc<Metainfo>,
    pub storage: Arc<Storage>,
    /// Pieces already verified on disk.
    pub have: Bitfield,
    pub peer_id: [u8; 20],
    /// Our listening port, for trackers.
    pub listen_port: u16,
    /// Source address of outgoing connections.
    pub bind: Option<IpAddr>,
    pub peers: Vec<SocketAddr>,
    pub limits: TorrentLimits,
    /// The process-wide rate limits and peer budget.
    pub global: Arc<Limits>,
    /// Where to keep resume data (the daemon); None for one-shot commands.
    pub resume: Option<ResumeTarget>,
    /// Payload bytes this run may upload before a seeding limit is reached (`None`: no limit).
    pub upload_allowance: Option<u64>,
    /// Which files are wanted, and how urgently.
    pub selection: Selection,
    /// The process's disk threads.
    pub disk: disk::DiskPoolHandle,
    /// The process's announce threads.
    pub announce: crate::tracker::announcer::AnnouncePoolHandle,
    /// The process's local service discovery (BEP 14), when on; private torrents ignore it.
    pub lsd: Option<crate::lsd::LsdHandle>,
    /// The process's file checker.
    pub file_check: file_check::FileCheckHandle,
    /// The process's DHT, when it runs (a private torrent ignores it).
    pub dht: Option<crate::dht::DhtHandle>,
}

/// Where and how a torrent saves its resume data.
#[derive(Clone, Debug)]
pub struct ResumeTarget {
    pub path: PathBuf,
    /// The download directory (files are under `root/<name>`).
    pub root: PathBuf,
    /// The file at `path` already says what the run starts with (the daemon's check took it
    /// from there): nothing to save until a piece is written, at stop neither.
    pub current: bool,
}

/// The engine's grip on a running torrent.
pub struct TorrentHandle {
    pub context: Arc<TorrentContext>,
    pub stats: Arc<TorrentStats>,
    pub events: Receiver<TorrentEvent>,
    control: ControlSender,
    /// Ends when the coordinator's run ends (it may park and resume on other threads meanwhile).
    thread: Watched<()>,
    doorbell: Arc<parking::Doorbell>,
}

/// A sender of [`Control`] messages to a coordinator: each one sent rings its doorbell, so a
/// parked coordinator is resumed to take it. Dropping the last one ends the coordinator's run
/// (parked or not), as a `Stop` would.
#[derive(Clone)]
pub struct ControlSender {
    tx: Option<Sender<Control>>,
    doorbell: Arc<parking::Doorbell>,
}

impl ControlSender {
    /// Sends without waiting (the channel is unbounded); false when the coordinator is gone.
    pub fn send(&self, control: Control) -> bool {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(control).is_ok());
        self.doorbell.ring();
        sent
    }
}

impl Drop for ControlSender {
    fn drop(&mut self) {
        // The sender first: a parked coordinator rung now sees its channel disconnect when this
        // was the last one.
        drop(self.tx.take());
        self.doorbell.ring();
    }
}

/// A torrent told to stop whose coordinator may still be at it (announcing `stopped`,
/// finishing disk writes). Nothing waits for it unless asked to, and then only until a
/// deadline (see [`Watched`]).
pub struct Stopping {
    pub stats: Arc<TorrentStats>,
    pub thread: Watched<()>,
}

impl TorrentHandle {
    /// Starts the coordinator (which starts the disk and announcer threads).
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn start(params: TorrentParams) -> std::io::Result<Self> {
        coordinator::start(params)
    }

    /// A sender of control messages, for sources that feed the torrent from their own thread
    /// (the DHT's peers).
    pub fn control_sender(&self) -> ControlSender {
        self.control.clone()
    }

    /// Sends a control message; ignored if the coordinator already stopped.
    pub fn send(&self, control: Control) {
        self.control.send(control);
    }

    /// Whether the coordinator is parked now (no thread), and how many times it parked.
    pub fn parked(&self) -> (bool, u64) {
        (self.doorbell.is_parked(), self.doorbell.counts().0)
    }

    /// While the coordinator is parked, its counts of parks and resumes; `None` while it runs
    /// (or is about to). The same mark at two looks means it did not run in between: no new
    /// event, no byte moved.
    pub fn parked_mark(&self) -> Option<(u64, u64)> {
        // The flag first: a resume and a park after it change the counts.
        self.doorbell.is_parked().then(|| self.doorbell.counts())
    }

    /// Tells the coordinator to stop gracefully and returns at once; see [`Stopping`].
    pub fn begin_stop(self) -> Stopping {
        self.send(Control::Stop);
        Stopping {
            stats: self.stats,
            thread: self.thread,
        }
    }

    /// Stops the torrent gracefully and waits for its coordinator to finish.
    pub fn stop(self) {
        let mut stopping = self.begin_stop();
        while !stopping
            .thread
            .wait_until(std::time::Instant::now() + Duration::from_secs(3600))
        {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(prefix: &[u8]) -> [u8; 20] {
        let mut id = [b'x'; 20];
        id[..prefix.len()].copy_from_slice(prefix);
        id
    }

    #[test]
    fn client_names_come_from_azureus_style_peer_ids() {
        assert_eq!(
            client_name(&id(b"-LT2080-")),
            "libtorrent (Rasterbar) 2.0.8"
        );
        assert_eq!(client_name(&id(b"-TR3000-")), "Transmission 3.00");
        assert_eq!(client_name(&id(b"-qB4630-")), "qBittorrent 4.6.3");
        assert_eq!(client_name(&id(b"-ZZ1234-")), "ZZ 1234");
        assert_eq!(client_name(&id(b"M7-4-3--")), "unknown (M7-4-3--)");
        assert_eq!(client_name(&[0; 20]), "unknown");
    }

    #[test]
    fn flags_say_who_sends_to_whom_as_transmission_shows_them() {
        let idle = PeerInfo {
            addr: "10.0.0.1:6881".parse().unwrap(),
            client: String::new(),
            incoming: false,
            source: PeerSource::Tracker,
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            optimistic: false,
            progress: 0.0,
            rate_down: 0,
            rate_up: 0,
        };
        assert_eq!(idle.flags(), "");
        let leecher = PeerInfo {
            am_choking: false,
            peer_interested: true,
            rate_up: 1000,
            incoming: true,
            ..idle.clone()
        };
        assert_eq!(leecher.flags(), "UI");
        let waiting = PeerInfo {
            am_interested: true,
            peer_interested: true,
            ..idle.clone()
        };
        assert_eq!(waiting.flags(), "du");
        let seeder = PeerInfo {
            am_interested: true,
            peer_choking: false,
            rate_down: 5000,
            optimistic: true,
            am_choking: false,
            ..idle.clone()
        };
        assert_eq!(seeder.flags(), "OD?");
        let unchoked_not_wanted = PeerInfo {
            peer_choking: false,
            ..idle
        };
        assert_eq!(unchoked_not_wanted.flags(), "K");
    }

    #[test]
    fn upload_reservations_never_pass_the_allowance_and_failed_ones_come_back() {
        let stats = TorrentStats::default();
        assert_eq!(stats.upload_allowance(), None);
        assert!(
            stats.reserve_upload(u64::MAX / 2),
            "no limit: anything goes"
        );
        stats.release_upload(5);
        assert_eq!(
            stats.upload_allowance(),
            None,
            "a release keeps it unlimited"
        );

        stats.set_upload_allowance(Some(40_000));
        assert!(stats.reserve_upload(16_384));
        assert!(stats.reserve_upload(16_384));
        assert!(
            !stats.reserve_upload(16_384),
            "7,232 bytes left: a block does not fit"
        );
        assert_eq!(stats.upload_allowance(), Some(7_232));
        assert!(stats.reserve_upload(7_232), "the short last block does");
        stats.release_upload(16_384);
        assert_eq!(stats.upload_allowance(), Some(16_384));
        stats.set_upload_allowance(None);
        assert_eq!(stats.upload_allowance(), None);
    }
}
