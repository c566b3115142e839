//! The DHT (BEP 5, with BEP 32 for IPv6): a KRPC node of our own on plain threads, one routing
//! table per address family. It finds peers for torrents without trackers and tells other nodes
//! about ours.
//!
//! Threads: `dht` owns the node's pure core ([`node::Node`]: routing tables, tokens, peer store,
//! rate limit, searches), the torrents it looks up on a schedule and the sinks their peers go
//! to; `dht recv v4` / `dht recv v6` each own nothing but reading their UDP socket and hand every
//! datagram to `dht` (a bounded queue: when `dht` is behind, datagrams are dropped, as the
//! network would). Only `dht` sends. Nothing here touches a torrent: peers found go to a
//! [`PeerSink`] (a torrent's `Control::AddPeers`, a metadata fetch's events).
//!
//! The routing table's good nodes and our node id are saved in the state directory at stop
//! and every 10 minutes (`dht.dat`) and pinged at the next start, so a restart (even after a
//! crash) does not lean on the bootstrap nodes.

pub mod krpc;
pub mod lookup;
pub mod node;
pub mod routing;
pub mod store;
pub mod tokens;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use log::{debug, info, warn};

use crate::metainfo::InfoHash;
use crate::wire::compact::{self, Family, NodeInfo};
use krpc::Id;
use node::{Action, Node, SearchId};

/// The state file under the state directory.
pub const STATE_FILE: &str = "dht.dat";
/// The first re-lookup of a torrent that wants peers comes this soon; each one doubles it, up
/// to [`LOOKUP_EVERY`].
pub const LOOKUP_RETRY_FIRST: Duration = Duration::from_secs(60);
/// A torrent is looked up (and announced) this often.
pub const LOOKUP_EVERY: Duration = Duration::from_secs(15 * 60);
/// How often the core's timers run.
const TICK: Duration = Duration::from_millis(500);
/// How long a `dht recv` thread blocks before it looks at the stop flag.
const RECV_TICK: Duration = Duration::from_millis(250);
/// Datagrams waiting for the `dht` thread; more are dropped.
const INBOUND_QUEUE: usize = 512;
/// Nodes saved at most.
const SAVE_MAX: usize = 300;
/// The routing table is also saved this often while the DHT runs, so a daemon that did not
/// stop cleanly (killed, a crash, power loss) still starts from a recent table.
const SAVE_EVERY: Duration = Duration::from_secs(10 * 60);

/// The DHT's settings (`[dht]`, `--no-dht`, `--dht-bootstrap`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhtConfig {
    /// UDP port; 0 means the same number as the TCP listen port.
    pub port: u16,
    /// `HOST:PORT` of nodes asked while the routing table is small.
    pub bootstrap: Vec<String>,
    /// Where the routing table is saved (`None`: not saved, as for one-shot commands).
    pub state_file: Option<PathBuf>,
}

pub use crate::torrent::PeerSink;

enum Command {
    Track {
        info_hash: Id,
        port: u16,
        sink: Box<dyn PeerSink>,
    },
    Untrack(Id),
    Once {
        info_hash: Id,
        port: Option<u16>,
        sink: Box<dyn PeerSink>,
    },
    AddNode(SocketAddr),
}

/// Counts for `btd status` and `status.json`.
#[derive(Debug, Default)]
pub struct DhtStats {
    pub nodes_v4: AtomicUsize,
    pub nodes_v6: AtomicUsize,
}

/// A cheap, cloneable way to talk to the running DHT.
#[derive(Clone)]
pub struct DhtHandle {
    commands: Sender<Command>,
    stats: Arc<DhtStats>,
    port: u16,
}

impl std::fmt::Debug for DhtHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DhtHandle(port {})", self.port)
    }
}

impl DhtHandle {
    /// Our DHT's UDP port (for the BEP 5 `port` message).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Nodes in the routing tables (both families).
    pub fn nodes(&self) -> usize {
        self.stats.nodes_v4.load(Ordering::Relaxed) + self.stats.nodes_v6.load(Ordering::Relaxed)
    }

    /// Looks `info_hash` up now and then on a schedule, announcing `port` (our TCP listen
    /// port), until [`DhtHandle::untrack`] or the sink is gone.
    pub fn track(&self, info_hash: &InfoHash, port: u16, sink: Box<dyn PeerSink>) {
        let _ = self.commands.send(Command::Track {
            info_hash: info_hash.0,
            port,
            sink,
        });
    }

    pub fn untrack(&self, info_hash: &InfoHash) {
        let _ = self.commands.send(Command::Untrack(info_hash.0));
    }

    /// One lookup of `info_hash` (announcing `port` when given); the sink is dropped at its end.
    pub fn search_once(&self, info_hash: &InfoHash, port: Option<u16>, sink: Box<dyn PeerSink>) {
        let _ = self.commands.send(Command::Once {
            info_hash: info_hash.0,
            port,
            sink,
        });
    }

    /// A node worth knowing (a peer's BEP 5 `port` message): it is pinged and added if it
    /// answers.
    pub fn add_node(&self, addr: SocketAddr) {
        let _ = self.commands.send(Command::AddNode(addr));
    }
}

/// The running DHT; see the module documentation.
pub struct Dht {
    handle: DhtHandle,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    main: Option<JoinHandle<()>>,
}

/// Sockets to bind for a listen address: both families for an unspecified one, else its own.
fn bind_addrs(listen: IpAddr, port: u16) -> Vec<SocketAddr> {
    match listen {
        IpAddr::V4(a) if a.is_unspecified() => vec![
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        ],
        IpAddr::V6(a) if a.is_unspecified() => vec![
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        ],
        ip => vec![SocketAddr::new(ip, port)],
    }
}

/// The families peers can reach our TCP listen address on: `0.0.0.0` is IPv4 only, `::`
/// both (the listener takes IPv4 too), any other address its own family. The DHT may look
/// up over a family beyond these (peers found there are dialled), but announces only here.
fn reachable_families(listen: IpAddr) -> Vec<Family> {
    match listen {
        IpAddr::V6(a) if a.is_unspecified() => vec![Family::V4, Family::V6],
        IpAddr::V4(_) => vec![Family::V4],
        IpAddr::V6(_) => vec![Family::V6],
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // The IPv4 socket has its own port: the IPv6 one must not take IPv4 too.
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(RECV_TICK))?;
    Ok(socket)
}

impl Dht {
    /// Binds the UDP sockets (`config.port`, or `listen`'s port for 0; IPv6 only when it can
    /// be bound) and starts the threads.
    ///
    /// # Errors
    /// When no socket can be bound or a thread cannot be started.
    pub fn start(config: &DhtConfig, listen: SocketAddr) -> std::io::Result<Dht> {
        let port = if config.port == 0 {
            listen.port()
        } else {
            config.port
        };
        let mut sockets: Vec<(Family, Arc<UdpSocket>)> = Vec::new();
        let mut last_err = None;
        for addr in bind_addrs(listen.ip(), port) {
            match bind(addr) {
                Ok(s) => sockets.push((Family::of(&addr), Arc::new(s))),
                Err(e) => {
                    debug!("dht: cannot bind {addr}: {e}");
                    last_err = Some(e);
                }
            }
        }
        if sockets.is_empty() {
            return Err(last_err.unwrap_or_else(|| std::io::Error::other("no address to bind")));
        }
        let port = sockets[0].1.local_addr()?.port();
        let saved = config.state_file.as_deref().and_then(load);
        let id = saved.as_ref().map_or_else(rand::random, |s| s.0);
        let families: Vec<Family> = sockets.iter().map(|s| s.0).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (inbound_tx, inbound) = crossbeam_channel::bounded(INBOUND_QUEUE);
        let mut threads = Vec::new();
        for (family, socket) in &sockets {
            let socket = Arc::clone(socket);
            let stop = Arc::clone(&stop);
            let tx = inbound_tx.clone();
            let name = match family {
                Family::V4 => "dht recv v4",
                Family::V6 => "dht recv v6",
            };
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || receive(&socket, &stop, &tx))?,
            );
        }
        drop(inbound_tx);
        let (commands, commands_rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(DhtStats::default());
        let run = Run {
            node: Node::new(id, &families, Vec::new(), rand::random(), Instant::now()),
            sockets,
            bootstrap: config.bootstrap.clone(),
            saved: saved.map(|s| s.1).unwrap_or_default(),
            state_file: config.state_file.clone(),
            stats: Arc::clone(&stats),
            tracks: HashMap::new(),
            owners: HashMap::new(),
            reachable: reachable_families(listen.ip()),
        };
        let main = std::thread::Builder::new()
            .name("dht".into())
            .spawn(move || run.run(&inbound, &commands_rx))?;
        info!(
            "dht: node {} on UDP port {port} ({})",
            crate::hex::encode(&id),
            families
                .iter()
                .map(|f| match f {
                    Family::V4 => "IPv4",
                    Family::V6 => "IPv6",
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(Dht {
            handle: DhtHandle {
                commands,
                stats,
                port,
            },
            stop,
            threads,
            main: Some(main),
        })
    }

    pub fn handle(&self) -> DhtHandle {
        self.handle.clone()
    }

    /// Stops the threads (the `dht` thread saves the routing table first) and waits for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The receive threads see the flag within `RECV_TICK`; the `dht` thread ends when their
        // queue disconnects (handles others still hold do not keep it alive).
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(main) = self.main.take() {
            let _ = main.join();
        }
    }
}

fn receive(socket: &UdpSocket, stop: &AtomicBool, tx: &Sender<(SocketAddr, Vec<u8>)>) {
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                if tx.try_send((from, buf[..n].to_vec())).is_err() && !tx.is_full() {
                    return; // `dht` is gone
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // ICMP errors surface here on Linux (port unreachable): not fatal.
            Err(e) => debug!("dht: recv: {e}"),
        }
    }
}

struct Track {
    port: u16,
    sink: Box<dyn PeerSink>,
    due: Instant,
    retry: Duration,
    search: Option<SearchId>,
}

enum Owner {
    Track(Id),
    Once(Box<dyn PeerSink>),
}

struct Run {
    node: Node,
    sockets: Vec<(Family, Arc<UdpSocket>)>,
    bootstrap: Vec<String>,
    saved: Vec<SocketAddr>,
    state_file: Option<PathBuf>,
    stats: Arc<DhtStats>,
    tracks: HashMap<Id, Track>,
    owners: HashMap<SearchId, Owner>,
    /// The families our TCP listen port is reachable on (announces go there only).
    reachable: Vec<Family>,
}

impl Run {
    fn run(mut self, inbound: &Receiver<(SocketAddr, Vec<u8>)>, commands: &Receiver<Command>) {
        let bootstrap = resolve(&self.bootstrap);
        let now = Instant::now();
        self.node = Node::new(
            *self.node.id(),
            &self.sockets.iter().map(|s| s.0).collect::<Vec<_>>(),
            bootstrap,
            rand::random(),
            now,
        );
        self.node.announce_only_on(&self.reachable);
        let saved = std::mem::take(&mut self.saved);
        let actions = self.node.add_nodes(&saved, now);
        self.carry_out(actions);
        let mut next_tick = now;
        let mut next_save = now + SAVE_EVERY;
        let mut commands_open = true;
        loop {
            let never = crossbeam_channel::never();
            let commands_rx = if commands_open { commands } else { &never };
            select! {
                recv(inbound) -> msg => match msg {
                    Ok((from, bytes)) => {
                        log::trace!("dht: <- {from}: {} bytes", bytes.len());
                        let actions = self.node.on_datagram(from, &bytes, Instant::now());
                        self.carry_out(actions);
                    }
                    Err(_) => break, // the receive threads stopped
                },
                recv(commands_rx) -> cmd => match cmd {
                    Ok(cmd) => self.on_command(cmd),
                    Err(_) => commands_open = false,
                },
                default(TICK) => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                let actions = self.node.tick(now);
                self.carry_out(actions);
                self.schedule(now);
                let (v4, v6) = self.node.node_counts();
                self.stats.nodes_v4.store(v4, Ordering::Relaxed);
                self.stats.nodes_v6.store(v6, Ordering::Relaxed);
            }
            if now >= next_save {
                next_save = now + SAVE_EVERY;
                self.save(now, false);
            }
        }
        self.save(Instant::now(), true);
    }

    /// Writes the good nodes to the state file, if there is one; while running (`!last`) only
    /// when there are some, so a spell without network does not wipe a good table.
    fn save(&self, now: Instant, last: bool) {
        let Some(path) = &self.state_file else {
            return;
        };
        let mut nodes = self.node.good_nodes(now);
        if nodes.is_empty() && !last {
            return;
        }
        nodes.truncate(SAVE_MAX);
        match crate::atomic_file::write(path, &encode_state(self.node.id(), &nodes)) {
            Ok(()) => debug!("dht: saved {} nodes to {}", nodes.len(), path.display()),
            Err(e) => warn!("dht: cannot save {}: {e}", path.display()),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Track {
                info_hash,
                port,
                sink,
            } => {
                if let Some(old) = self.tracks.remove(&info_hash)
                    && let Some(sid) = old.search
                {
                    self.node.cancel(sid);
                    self.owners.remove(&sid);
                }
                self.tracks.insert(
                    info_hash,
                    Track {
                        port,
                        sink,
                        due: now,
                        retry: LOOKUP_RETRY_FIRST,
                        search: None,
                    },
                );
                self.schedule(now);
            }
            Command::Untrack(info_hash) => {
                if let Some(t) = self.tracks.remove(&info_hash)
                    && let Some(sid) = t.search
                {
                    self.node.cancel(sid);
                    self.owners.remove(&sid);
                }
            }
            Command::Once {
                info_hash,
                port,
                sink,
            } => {
                let (sid, actions) = self.node.search(info_hash, true, port, now);
                self.owners.insert(sid, Owner::Once(sink));
                self.carry_out(actions);
            }
            Command::AddNode(addr) => {
                let actions = self.node.add_nodes(&[addr], now);
                self.carry_out(actions);
            }
        }
    }

    /// Starts the lookups of tracked torrents that are due.
    fn schedule(&mut self, now: Instant) {
        let due: Vec<Id> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.search.is_none() && t.due <= now)
            .map(|(k, _)| *k)
            .collect();
        for info_hash in due {
            let Some(track) = self.tracks.get_mut(&info_hash) else {
                continue;
            };
            let (sid, actions) = self.node.search(info_hash, true, Some(track.port), now);
            track.search = Some(sid);
            self.owners.insert(sid, Owner::Track(info_hash));
            self.carry_out(actions);
        }
    }

    fn carry_out(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, bytes } => {
                    let family = Family::of(&to);
                    if let Some((_, socket)) = self.sockets.iter().find(|s| s.0 == family) {
                        let to = match (family, to) {
                            (Family::V4, _) => compact::canonical(to),
                            (Family::V6, _) => to,
                        };
                        log::trace!("dht: -> {to}: {} bytes", bytes.len());
                        if let Err(e) = socket.send_to(&bytes, to) {
                            debug!("dht: send to {to}: {e}");
                        }
                    }
                }
                Action::Peers { search, peers } => {
                    let alive = match self.owners.get_mut(&search) {
                        Some(Owner::Once(sink)) => sink.deliver(peers),
                        Some(Owner::Track(hash)) => match self.tracks.get_mut(hash) {
                            Some(t) => t.sink.deliver(peers),
                            None => false,
                        },
                        None => true,
                    };
                    if !alive {
                        self.node.cancel(search);
                        if let Some(Owner::Track(hash)) = self.owners.remove(&search) {
                            self.tracks.remove(&hash);
                        }
                    }
                }
                Action::SearchDone { search } => {
                    if let Some(Owner::Track(hash)) = self.owners.remove(&search)
                        && let Some(t) = self.tracks.get_mut(&hash)
                    {
                        let now = Instant::now();
                        t.search = None;
                        if t.sink.needs_peers() {
                            t.due = now + t.retry;
                            t.retry = crate::backoff::doubling(t.retry, 1, LOOKUP_EVERY);
                        } else {
                            t.due = now + LOOKUP_EVERY;
                        }
                    }
                }
            }
        }
    }
}

/// Resolves `HOST:PORT` bootstrap names; a name that does not resolve is a warning.
fn resolve(names: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for name in names {
        match name.to_socket_addrs() {
            Ok(addrs) => out.extend(addrs.map(compact::canonical)),
            Err(e) => warn!("dht: bootstrap node {name}: {e}"),
        }
    }
    out
}

/// `dht.dat`: a bencoded dictionary of our `id` and compact `nodes` and `nodes6`.
fn encode_state(id: &Id, nodes: &[NodeInfo]) -> Vec<u8> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for n in nodes {
        match Family::of(&n.addr) {
            Family::V4 => compact::encode_node(n, &mut v4),
            Family::V6 => compact::encode_node(n, &mut v6),
        }
    }
    let mut out = b"d2:id20:".to_vec();
    out.extend_from_slice(id);
    for (key, bytes) in [(&b"5:nodes"[..], v4), (&b"6:nodes6"[..], v6)] {
        out.extend_from_slice(key);
        out.extend_from_slice(bytes.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(&bytes);
    }
    out.push(b'e');
    out
}

/// Our id and the saved nodes' addresses, or `None` (with a warning) when the file is bad.
fn decode_state(bytes: &[u8]) -> Option<(Id, Vec<SocketAddr>)> {
    let root = crate::bencode::decode(bytes).ok()?;
    let id: Id = root.get("id")?.as_bytes()?.try_into().ok()?;
    let mut addrs = Vec::new();
    for (key, family) in [("nodes", Family::V4), ("nodes6", Family::V6)] {
        if let Some(b) = root.get(key).and_then(crate::bencode::Value::as_bytes) {
            addrs.extend(
                compact::decode_nodes(family, b)
                    .ok()?
                    .iter()
                    .map(|n| n.addr),
            );
        }
    }
    Some((id, addrs))
}

fn load(path: &Path) -> Option<(Id, Vec<SocketAddr>)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!("dht: cannot read {}: {e}; starting afresh", path.display());
            return None;
        }
    };
    let state = decode_state(&bytes);
    match &state {
        Some((_, nodes)) => info!("dht: {} nodes from {}", nodes.len(), path.display()),
        None => warn!(
            "dht: {} is not a saved routing table; starting afresh",
            path.display()
        ),
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trips_both_families() {
        let nodes = vec![
            NodeInfo {
                id: [1; 20],
                addr: "10.0.0.1:6881".parse().unwrap(),
            },
            NodeInfo {
                id: [2; 20],
                addr: "[2001:db8::2]:6881".parse().unwrap(),
            },
        ];
        let bytes = encode_state(&[9; 20], &nodes);
        let (id, addrs) = decode_state(&bytes).unwrap();
        assert_eq!(id, [9; 20]);
        assert_eq!(addrs, vec![nodes[0].addr, nodes[1].addr]);
        assert!(decode_state(b"d2:id3:abce").is_none());
        assert!(decode_state(b"junk").is_none());
    }

    #[test]
    fn unspecified_listen_binds_both_families() {
        assert_eq!(bind_addrs("0.0.0.0".parse().unwrap(), 5).len(), 2);
        assert_eq!(
            bind_addrs("127.0.0.3".parse().unwrap(), 5),
            vec!["127.0.0.3:5".parse().unwrap()]
        );
    }

    /// `0.0.0.0` binds the DHT on both families but announces over IPv4 only: the TCP
    /// listener takes no IPv6 there.
    #[test]
    fn announces_go_where_the_tcp_listener_is_reachable() {
        let v = |ip: &str| reachable_families(ip.parse().unwrap());
        assert_eq!(v("0.0.0.0"), vec![Family::V4]);
        assert_eq!(v("::"), vec![Family::V4, Family::V6]);
        assert_eq!(v("127.0.0.3"), vec![Family::V4]);
        assert_eq!(v("::1"), vec![Family::V6]);
    }

    /// Two nodes on loopback find each other through a third, and one finds the peer the
    /// other announced.
    #[test]
    fn two_nodes_on_loopback_find_an_announced_peer() {
        find_an_announced_peer("127.0.0.1");
    }

    /// The same over IPv6 (BEP 32: `nodes6`, 18-byte peers), when the machine has `::1`.
    #[test]
    fn two_nodes_on_ipv6_loopback_find_an_announced_peer() {
        if UdpSocket::bind("[::1]:0").is_err() {
            eprintln!("no ::1 here; the IPv6 paths are covered by the core's unit tests");
            return;
        }
        find_an_announced_peer("::1");
    }

    fn find_an_announced_peer(ip: &str) {
        struct Collect(Sender<Vec<SocketAddr>>);
        impl PeerSink for Collect {
            fn deliver(&mut self, peers: Vec<SocketAddr>) -> bool {
                self.0.send(peers).is_ok()
            }
        }
        let _ = env_logger::builder().is_test(true).try_init();
        let config = |boot: Vec<String>| DhtConfig {
            port: 0,
            bootstrap: boot,
            state_file: None,
        };
        let ip: IpAddr = ip.parse().unwrap();
        let listen = SocketAddr::new(ip, 0);
        let router = Dht::start(&config(vec![]), listen).unwrap();
        let boot = vec![SocketAddr::new(ip, router.handle().port()).to_string()];
        let a = Dht::start(&config(boot.clone()), listen).unwrap();
        let b = Dht::start(&config(boot), listen).unwrap();
        let hash = InfoHash([0x42; 20]);
        let (tx, _rx) = crossbeam_channel::unbounded();
        a.handle().track(&hash, 4567, Box::new(Collect(tx)));
        let deadline = Instant::now() + Duration::from_secs(30);
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut found = Vec::new();
        while Instant::now() < deadline && found.is_empty() {
            b.handle()
                .search_once(&hash, None, Box::new(Collect(tx.clone())));
            if let Ok(peers) = rx.recv_timeout(Duration::from_secs(2)) {
                found = peers;
            }
        }
        assert_eq!(found, vec![SocketAddr::new(ip, 4567)]);
        assert!(router.handle().nodes() >= 2);
        for d in [a, b, router] {
            d.stop();
        }
    }
}
