//! Local service discovery (BEP 14): one `lsd` thread per process announces the public torrents
//! it runs (and the magnets whose metadata it fetches) on the local network's multicast group,
//! 239.192.152.143:6771 (and `[ff15::efc0:988f]:6771` where IPv6 multicast works), and hands
//! the peers announced there to the torrents with those info hashes.
//!
//! The engine owns the [`Lsd`]; torrents and magnet fetches [`LsdHandle::register`] an info hash
//! with a channel for the peers found, and the [`LsdRegistration`] they keep ends the announcing
//! when dropped. Private torrents (BEP 27) never register: their coordinator checks. The thread
//! starts with the first registration, so a process with no public torrent opens no socket
//! and joins no group.
//!
//! The thread runs [`Core`], which holds the schedule and the receive budget and returns what to
//! send and whom to tell: each registered info hash is announced at once, then every
//! [`ANNOUNCE_INTERVAL`], as many hashes to a datagram as fit. What arrives is rate-limited
//! before it is parsed ([`RECEIVE_PER_SEC`] datagrams a second, bursts of [`RECEIVE_BURST`]):
//! a flood costs a counter, not a parse each. Announces carrying our own `cookie`, malformed
//! ones (a debug log) and an address already passed on for that torrent in the last
//! [`REPEAT_WINDOW`] are dropped. The codec is [`message`].

pub mod message;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use log::{debug, info, warn};
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};

use crate::metainfo::InfoHash;
use crate::torrent::{PeerSink, PeerSource};
use message::Announce;

/// The IPv4 multicast group and port of BEP 14.
pub const IPV4_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 192, 152, 143), 6771);
/// The IPv6 multicast group and port of BEP 14 (site-local scope).
pub const IPV6_GROUP: SocketAddrV6 = SocketAddrV6::new(
    Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0xefc0, 0x988f),
    6771,
    0,
    0,
);
/// How often each torrent is announced (besides once when it registers).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Received datagrams parsed per second, on average.
pub const RECEIVE_PER_SEC: u32 = 16;
/// Received datagrams parsed at once after a quiet spell.
pub const RECEIVE_BURST: u32 = 32;
/// An address announced again for the same torrent within this is not passed on again.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);
/// (address, info hash) pairs remembered for [`REPEAT_WINDOW`].
const MAX_REMEMBERED: usize = 4096;
/// How long the thread blocks in a receive before it looks at its commands and schedule.
const POLL: Duration = Duration::from_millis(200);
/// How long [`Lsd::stop`] waits for the thread.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// Peers found for one torrent, and where they came from.
pub type FoundPeers = (PeerSource, Vec<SocketAddr>);

/// A [`PeerSink`] that sends what LSD finds down a channel, tagged [`PeerSource::Lsd`] (a
/// magnet's metadata fetch takes them so).
pub struct ChannelSink(pub Sender<FoundPeers>);

impl PeerSink for ChannelSink {
    fn deliver(&mut self, peers: Vec<SocketAddr>) -> bool {
        self.0.send((PeerSource::Lsd, peers)).is_ok()
    }
}

/// What the LSD thread must do, from [`Core`].
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Announce these info hashes now.
    Announce(Vec<InfoHash>),
    /// Registration `id` has a new peer.
    Found { id: u64, peer: SocketAddr },
}

/// The LSD thread's decisions, without sockets or clocks (time comes in as `now`).
pub struct Core {
    cookie: String,
    entries: HashMap<u64, (InfoHash, Instant)>,
    /// When each info hash was last announced (kept for [`ANNOUNCE_INTERVAL`]): a new
    /// registration of a hash waits for the interval since then.
    announced: HashMap<InfoHash, Instant>,
    tokens: f64,
    refilled: Instant,
    /// When each registration was last given each peer.
    recent: HashMap<(u64, SocketAddr), Instant>,
    /// Datagrams dropped unparsed by the receive budget.
    pub dropped: u64,
}

impl Core {
    #[must_use]
    pub fn new(cookie: String, now: Instant) -> Self {
        Self {
            cookie,
            entries: HashMap::new(),
            announced: HashMap::new(),
            tokens: f64::from(RECEIVE_BURST),
            refilled: now,
            recent: HashMap::new(),
            dropped: 0,
        }
    }

    /// Registration `id` wants peers for `info_hash`; it is announced at the next [`Core::due`],
    /// or [`ANNOUNCE_INTERVAL`] after the hash's last announce if that is later (a torrent
    /// stopped and started, a magnet's fetch then its torrent: at most one announce an
    /// interval per torrent).
    pub fn on_registered(&mut self, id: u64, info_hash: InfoHash, now: Instant) {
        let at = self
            .announced
            .get(&info_hash)
            .map_or(now, |last| (*last + ANNOUNCE_INTERVAL).max(now));
        self.entries.insert(id, (info_hash, at));
    }

    pub fn on_unregistered(&mut self, id: u64) {
        self.entries.remove(&id);
        self.recent.retain(|(of, _), _| *of != id);
    }

    /// The info hashes to announce at `now` (each once), scheduled again for
    /// [`ANNOUNCE_INTERVAL`] later.
    pub fn due(&mut self, now: Instant) -> Option<Action> {
        let mut hashes = Vec::new();
        for (hash, at) in self.entries.values_mut() {
            if *at <= now {
                *at = now + ANNOUNCE_INTERVAL;
                if !hashes.contains(hash) {
                    hashes.push(*hash);
                }
            }
        }
        self.announced
            .retain(|_, last| now.saturating_duration_since(*last) < ANNOUNCE_INTERVAL);
        for hash in &hashes {
            self.announced.insert(*hash, now);
        }
        (!hashes.is_empty()).then_some(Action::Announce(hashes))
    }

    /// A datagram from `from` arrived: the peers it gives to registrations, if within budget,
    /// well formed, not ours and not a repeat.
    pub fn on_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> Vec<Action> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens =
            (self.tokens + elapsed * f64::from(RECEIVE_PER_SEC)).min(f64::from(RECEIVE_BURST));
        if self.tokens < 1.0 {
            self.dropped += 1;
            return Vec::new();
        }
        self.tokens -= 1.0;
        let announce = match Announce::parse(datagram) {
            Ok(a) => a,
            Err(e) => {
                debug!("lsd: {from}: ignored: {e}");
                return Vec::new();
            }
        };
        if announce.cookie.as_deref() == Some(self.cookie.as_str()) {
            return Vec::new();
        }
        let ip = match from.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let peer = SocketAddr::new(ip, announce.port);
        if self.recent.len() >= MAX_REMEMBERED {
            self.recent
                .retain(|_, at| now.saturating_duration_since(*at) < REPEAT_WINDOW);
            if self.recent.len() >= MAX_REMEMBERED {
                self.recent.clear();
            }
        }
        let mut actions = Vec::new();
        for hash in announce.info_hashes {
            let ids: Vec<u64> = self
                .entries
                .iter()
                .filter(|(_, (h, _))| *h == hash)
                .map(|(&id, _)| id)
                .collect();
            for id in ids {
                if let Some(at) = self.recent.get(&(id, peer))
                    && now.saturating_duration_since(*at) < REPEAT_WINDOW
                {
                    continue;
                }
                self.recent.insert((id, peer), now);
                debug!("lsd: {peer} announced {hash}");
                actions.push(Action::Found { id, peer });
            }
        }
        actions
    }
}

/// Where the LSD thread announces from.
#[derive(Clone, Copy, Debug)]
pub struct LsdConfig {
    /// Our TCP listen port, the `Port` we announce.
    pub listen_port: u16,
    /// The address we listen on and send from (`None` or unspecified: any).
    pub bind: Option<IpAddr>,
}

enum Command {
    Register {
        id: u64,
        info_hash: InfoHash,
        sink: Box<dyn PeerSink>,
    },
    Unregister(u64),
}

struct Running {
    commands: Sender<Command>,
    /// Disconnects when the thread ends.
    ended: Receiver<()>,
    thread: JoinHandle<()>,
}

struct Shared {
    config: LsdConfig,
    stopped: AtomicBool,
    running: Mutex<Option<Running>>,
    /// Opening the sockets failed once: not tried again (warned once).
    failed: AtomicBool,
    next_id: std::sync::atomic::AtomicU64,
}

/// The process's LSD service. See the module documentation.
pub struct Lsd {
    shared: Arc<Shared>,
}

/// What torrents and magnet fetches register with; cheap to clone.
#[derive(Clone)]
pub struct LsdHandle {
    shared: Arc<Shared>,
}

/// One info hash announced and listened for, until dropped.
pub struct LsdRegistration {
    id: u64,
    commands: Option<Sender<Command>>,
}

impl Drop for LsdRegistration {
    fn drop(&mut self) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(Command::Unregister(self.id));
        }
    }
}

impl Lsd {
    /// The service, idle until the first registration.
    #[must_use]
    pub fn new(config: LsdConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                stopped: AtomicBool::new(false),
                running: Mutex::new(None),
                failed: AtomicBool::new(false),
                next_id: std::sync::atomic::AtomicU64::new(1),
            }),
        }
    }

    #[must_use]
    pub fn handle(&self) -> LsdHandle {
        LsdHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops the thread (if it runs), waiting for it at most a second.
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        let Some(running) = self.shared.running.lock().take() else {
            return;
        };
        drop(running.commands);
        match running.ended.recv_timeout(STOP_WAIT) {
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                let _ = running.thread.join();
            }
            _ => warn!("lsd: the thread did not end within {STOP_WAIT:?}"),
        }
    }
}

impl Drop for Lsd {
    fn drop(&mut self) {
        self.stop();
    }
}

impl LsdHandle {
    /// Announces `info_hash` from now on (at once, then every [`ANNOUNCE_INTERVAL`]) and hands
    /// the peers announced for it to `sink`, until the registration is dropped. Starts the
    /// thread if it is not running; when its sockets cannot be opened (warned once) the
    /// registration does nothing.
    pub fn register(&self, info_hash: InfoHash, sink: Box<dyn PeerSink>) -> LsdRegistration {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut running = self.shared.running.lock();
        if running.is_none()
            && !self.shared.stopped.load(Ordering::Relaxed)
            && !self.shared.failed.load(Ordering::Relaxed)
        {
            match start(self.shared.config) {
                Ok(r) => *running = Some(r),
                Err(e) => {
                    self.shared.failed.store(true, Ordering::Relaxed);
                    warn!("lsd: cannot start local service discovery: {e}");
                }
            }
        }
        let commands = running.as_ref().map(|r| r.commands.clone());
        if let Some(tx) = &commands {
            let _ = tx.send(Command::Register {
                id,
                info_hash,
                sink,
            });
        }
        LsdRegistration { id, commands }
    }
}

/// The sockets of one family: `recv` bound to the group's port and joined to it, `send` bound
/// to our address.
struct Family {
    recv: UdpSocket,
    send: UdpSocket,
    group: SocketAddr,
    host: String,
}

fn open_v4(bind: Option<Ipv4Addr>) -> std::io::Result<Family> {
    let iface = bind.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let recv = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    recv.set_reuse_address(true)?;
    recv.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, IPV4_GROUP.port())).into())?;
    recv.join_multicast_v4(IPV4_GROUP.ip(), &iface)?;
    let send = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    send.bind(&SocketAddr::from((iface, 0)).into())?;
    if !iface.is_unspecified() {
        send.set_multicast_if_v4(&iface)?;
    }
    send.set_multicast_loop_v4(true)?;
    Ok(Family {
        recv: recv.into(),
        send: send.into(),
        group: SocketAddr::V4(IPV4_GROUP),
        host: IPV4_GROUP.to_string(),
    })
}

fn open_v6(bind: Option<Ipv6Addr>) -> std::io::Result<Family> {
    let recv = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    recv.set_only_v6(true)?;
    recv.set_reuse_address(true)?;
    recv.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, IPV6_GROUP.port())).into())?;
    recv.join_multicast_v6(IPV6_GROUP.ip(), 0)?;
    let send = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    send.set_only_v6(true)?;
    send.bind(&SocketAddr::from((bind.unwrap_or(Ipv6Addr::UNSPECIFIED), 0)).into())?;
    send.set_multicast_loop_v6(true)?;
    Ok(Family {
        recv: recv.into(),
        send: send.into(),
        group: SocketAddr::V6(IPV6_GROUP),
        host: IPV6_GROUP.to_string(),
    })
}

/// Opens the sockets of the families our bind address allows and starts the thread.
fn start(config: LsdConfig) -> std::io::Result<Running> {
    let bind = config.bind.filter(|ip| !ip.is_unspecified());
    let mut families = Vec::new();
    let mut errors = Vec::new();
    if !matches!(bind, Some(IpAddr::V6(_))) {
        let v4 = match bind {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        };
        match open_v4(v4) {
            Ok(f) => families.push(f),
            Err(e) => errors.push(format!("{IPV4_GROUP}: {e}")),
        }
    }
    if !matches!(bind, Some(IpAddr::V4(_))) {
        let v6 = match bind {
            Some(IpAddr::V6(ip)) => Some(ip),
            _ => None,
        };
        match open_v6(v6) {
            Ok(f) => families.push(f),
            // Many hosts have no IPv6 multicast route: not worth more than a debug line.
            Err(e) => debug!("lsd: [{}]:{}: {e}", IPV6_GROUP.ip(), IPV6_GROUP.port()),
        }
    }
    if families.is_empty() {
        return Err(std::io::Error::other(if errors.is_empty() {
            "no usable address family".to_owned()
        } else {
            errors.join("; ")
        }));
    }
    // The first family blocks (bounded by POLL); the others are drained without blocking.
    families[0].recv.set_read_timeout(Some(POLL))?;
    for f in &families[1..] {
        f.recv.set_nonblocking(true)?;
    }
    let cookie = format!("{:08x}", rand::random::<u32>());
    let (commands_tx, commands) = crossbeam_channel::unbounded();
    let (ended_tx, ended) = crossbeam_channel::bounded::<()>(0);
    let groups: Vec<String> = families.iter().map(|f| f.group.to_string()).collect();
    let thread = std::thread::Builder::new()
        .name("lsd".into())
        .spawn(move || {
            let _ended = ended_tx;
            info!("lsd: announcing on {}", groups.join(" and "));
            run(&families, config.listen_port, cookie, &commands);
        })?;
    Ok(Running {
        commands: commands_tx,
        ended,
        thread,
    })
}

/// The thread's loop: commands, due announces, then what arrived; ends when the command
/// channel disconnects (the [`Lsd`] stopped).
fn run(families: &[Family], port: u16, cookie: String, commands: &Receiver<Command>) {
    let mut core = Core::new(cookie.clone(), Instant::now());
    let mut sinks: HashMap<u64, Box<dyn PeerSink>> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let mut reported_dropped = 0;
    loop {
        let now = Instant::now();
        loop {
            match commands.try_recv() {
                Ok(Command::Register {
                    id,
                    info_hash,
                    sink,
                }) => {
                    sinks.insert(id, sink);
                    core.on_registered(id, info_hash, now);
                }
                Ok(Command::Unregister(id)) => {
                    sinks.remove(&id);
                    core.on_unregistered(id);
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            }
        }
        if let Some(Action::Announce(hashes)) = core.due(now) {
            for f in families {
                for datagram in message::encode(&f.host, port, &cookie, &hashes) {
                    if let Err(e) = f.send.send_to(&datagram, f.group) {
                        debug!("lsd: send to {}: {e}", f.group);
                    }
                }
            }
            debug!("lsd: announced {} torrents", hashes.len());
        }
        for (i, f) in families.iter().enumerate() {
            // The first socket blocks up to POLL; the rest only take what is there.
            let mut reads = 0;
            loop {
                let received = f.recv.recv_from(&mut buf);
                let (n, from) = match received {
                    Ok(r) => r,
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                            || e.kind() == ErrorKind::Interrupted =>
                    {
                        break;
                    }
                    Err(e) => {
                        debug!("lsd: receive on {}: {e}", f.group);
                        std::thread::sleep(POLL);
                        break;
                    }
                };
                for action in core.on_datagram(from, &buf[..n], Instant::now()) {
                    if let Action::Found { id, peer } = action
                        && let Some(sink) = sinks.get_mut(&id)
                        && !sink.deliver(vec![peer])
                    {
                        // Its owner is gone; its registration's drop unregisters it.
                        sinks.remove(&id);
                    }
                }
                reads += 1;
                // A flood must not keep us from our commands; the budget drops the rest.
                if i == 0 || reads >= 64 {
                    break;
                }
            }
        }
        if core.dropped >= reported_dropped + 1000 {
            reported_dropped = core.dropped;
            debug!(
                "lsd: {} datagrams dropped by the receive budget so far",
                core.dropped
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> InfoHash {
        InfoHash([n; 20])
    }

    fn announce(port: u16, hashes: &[InfoHash], cookie: &str) -> Vec<u8> {
        message::encode("239.192.152.143:6771", port, cookie, hashes).remove(0)
    }

    #[test]
    fn announces_at_registration_then_every_interval() {
        let t0 = Instant::now();
        let mut core = Core::new("me".into(), t0);
        assert_eq!(core.due(t0), None);
        core.on_registered(1, hash(1), t0);
        core.on_registered(2, hash(2), t0);
        core.on_registered(3, hash(1), t0);
        let Some(Action::Announce(mut hashes)) = core.due(t0) else {
            panic!("nothing due")
        };
        hashes.sort_by_key(|h| h.0);
        assert_eq!(hashes, vec![hash(1), hash(2)]);
        assert_eq!(core.due(t0 + Duration::from_secs(299)), None);
        core.on_unregistered(2);
        assert_eq!(
            core.due(t0 + ANNOUNCE_INTERVAL),
            Some(Action::Announce(vec![hash(1)]))
        );
    }

    /// A torrent stopped and started again (or a magnet's fetch followed by its torrent) is a
    /// new registration of the same hash: it waits for the interval since the hash's last
    /// announce, so start/stop churn never multicasts more than once an interval.
    #[test]
    fn a_hash_registered_again_is_announced_no_sooner_than_an_interval_after_the_last() {
        let t0 = Instant::now();
        let mut core = Core::new("me".into(), t0);
        core.on_registered(1, hash(1), t0);
        assert_eq!(core.due(t0), Some(Action::Announce(vec![hash(1)])));
        let mut t = t0;
        for id in 2..20 {
            core.on_unregistered(id - 1);
            t += Duration::from_secs(10);
            core.on_registered(id, hash(1), t);
            assert_eq!(core.due(t), None, "registration {id} at {:?}", t - t0);
        }
        // Another hash is not held back.
        core.on_registered(50, hash(2), t);
        assert_eq!(core.due(t), Some(Action::Announce(vec![hash(2)])));
        assert_eq!(
            core.due(t0 + ANNOUNCE_INTERVAL),
            Some(Action::Announce(vec![hash(1)]))
        );
        // Long after its last announce, a new registration is announced at once.
        core.on_unregistered(19);
        let later = t0 + 3 * ANNOUNCE_INTERVAL;
        core.on_registered(60, hash(1), later);
        let Some(Action::Announce(hashes)) = core.due(later) else {
            panic!("nothing due")
        };
        assert!(hashes.contains(&hash(1)), "{hashes:?}");
    }

    #[test]
    fn passes_an_announced_peer_to_each_registration_of_its_hash_once_a_window() {
        let t0 = Instant::now();
        let mut core = Core::new("me".into(), t0);
        core.on_registered(1, hash(1), t0);
        core.on_registered(2, hash(1), t0);
        let from: SocketAddr = "10.0.0.7:6771".parse().unwrap();
        let peer: SocketAddr = "10.0.0.7:51413".parse().unwrap();
        let mut found = core.on_datagram(from, &announce(51413, &[hash(1), hash(9)], "other"), t0);
        found.sort_by_key(|a| match a {
            Action::Found { id, .. } => *id,
            Action::Announce(_) => 0,
        });
        assert_eq!(
            found,
            vec![Action::Found { id: 1, peer }, Action::Found { id: 2, peer }]
        );
        let again = t0 + Duration::from_secs(1);
        assert!(
            core.on_datagram(from, &announce(51413, &[hash(1)], "other"), again)
                .is_empty()
        );
        // A registration that comes later (the torrent after its magnet's fetch) is told too.
        core.on_unregistered(1);
        core.on_registered(3, hash(1), again);
        assert_eq!(
            core.on_datagram(from, &announce(51413, &[hash(1)], "other"), again),
            vec![Action::Found { id: 3, peer }]
        );
        let later = t0 + REPEAT_WINDOW;
        assert_eq!(
            core.on_datagram(from, &announce(51413, &[hash(1)], "other"), later)
                .len(),
            1
        );
    }

    #[test]
    fn ignores_its_own_cookie_and_malformed_datagrams() {
        let t0 = Instant::now();
        let mut core = Core::new("me".into(), t0);
        core.on_registered(1, hash(1), t0);
        let from: SocketAddr = "10.0.0.7:6771".parse().unwrap();
        assert!(
            core.on_datagram(from, &announce(1, &[hash(1)], "me"), t0)
                .is_empty()
        );
        assert!(
            core.on_datagram(from, b"BT-SEARCH * HTTP/1.1\r\n\r\n", t0)
                .is_empty()
        );
        assert!(core.on_datagram(from, &[0xff; 40], t0).is_empty());
    }

    #[test]
    fn maps_an_ipv4_mapped_source_to_ipv4() {
        let t0 = Instant::now();
        let mut core = Core::new("me".into(), t0);
        core.on_registered(1, hash(1), t0);
        let from: SocketAddr = "[::ffff:10.0.0.8]:6771".parse().unwrap();
        assert_eq!(
            core.on_datagram(from, &announce(7, &[hash(1)], "x"), t0),
            vec![Action::Found {
                id: 1,
                peer: "10.0.0.8:7".parse().unwrap()
            }]
        );
    }

    #[test]
    fn a_flood_is_dropped_unparsed_beyond_the_budget() {
        let t0 = Instant::now();
        let mut core = Core::new("me".into(), t0);
        core.on_registered(1, hash(1), t0);
        let mut found = 0;
        for i in 0..1000u16 {
            let from = SocketAddr::from(([10, 0, 0, 1], 6771));
            found += core
                .on_datagram(from, &announce(1000 + i, &[hash(1)], "x"), t0)
                .len();
        }
        assert_eq!(found, RECEIVE_BURST as usize);
        assert_eq!(core.dropped, 1000 - u64::from(RECEIVE_BURST));
        // The budget refills with time.
        let later = t0 + Duration::from_secs(1);
        let from = SocketAddr::from(([10, 0, 0, 2], 6771));
        assert_eq!(
            core.on_datagram(from, &announce(5, &[hash(1)], "x"), later)
                .len(),
            1
        );
    }
}
