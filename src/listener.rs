//! The listener: thread "listener" accepts incoming TCP connections and hands each to a new
//! peer thread, which reads the peer's handshake and finds the torrent by its info hash in the
//! registry. The listener itself never reads from a socket, so a slow peer cannot stall it.
//!
//! Connection floods are refused at `accept`, before a thread is spawned: when
//! [`MAX_HANDSHAKING`] connections are still in their handshake, or when the remote IP already
//! holds `peers.max_per_ip` incoming connections. A full peer budget does not refuse at accept:
//! the torrent may make room for the newcomer by dropping a peer that does nothing useful
//! (`torrent/admission.rs`), so the handshake goes on and the coordinator decides.
//!
//! The registry routes an info hash either to a running torrent or, while a magnet link's
//! metadata is being fetched, to that fetch's inbox ([`Route::Fetch`], opened with
//! [`FetchInbox::open`]): the connection, its handshake and its [`Slot`] go to the fetch, which
//! asks the peer for the metadata (`metadata_fetch.rs`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::{debug, warn};
use parking_lot::{Mutex, RwLock};

use crate::metainfo::InfoHash;
use crate::peer::conn::{self, PeerStream};
use crate::peer::mse::{self, Encryption};
use crate::peer::{self, TorrentContext};
use crate::profile::{self, Role};
use crate::ratelimit::Limits;
use crate::wire::Handshake;

/// Torrents that accept incoming peers, by info hash. Written when torrents start and stop and
/// when metadata fetches begin and end, read once per incoming connection.
pub type Registry = Arc<RwLock<HashMap<InfoHash, Route>>>;

/// Where an incoming connection for one info hash goes.
pub enum Route {
    /// A running torrent: the connection becomes one of its peers.
    Torrent(Arc<TorrentContext>),
    /// A magnet link whose metadata is being fetched: the connection is handed to the fetch.
    Fetch(Sender<Incoming>),
}

/// An accepted connection whose handshake named a magnet link being fetched: the fetch answers
/// the handshake and asks the peer for the metadata.
pub struct Incoming {
    pub stream: PeerStream,
    pub addr: SocketAddr,
    /// The peer's handshake, already read.
    pub handshake: Handshake,
    /// Counts the connection against the listener's per-IP limit until dropped: keep it as
    /// long as the connection.
    pub slot: Slot,
}

/// Connections handed over at once to a fetch that has not taken them yet; beyond, they are
/// closed.
const FETCH_INBOX: usize = 16;

/// A fetch's entry in the registry: incoming connections for its info hash arrive on
/// [`FetchInbox::receiver`] until it is dropped, which removes the entry (unless a running
/// torrent has replaced it meanwhile).
pub struct FetchInbox {
    registry: Registry,
    info_hash: InfoHash,
    sender: Sender<Incoming>,
    receiver: Receiver<Incoming>,
}

impl FetchInbox {
    /// Routes `info_hash` to a new inbox, unless a running torrent already has it (`None`).
    pub fn open(registry: &Registry, info_hash: InfoHash) -> Option<Self> {
        let (sender, receiver) = crossbeam_channel::bounded(FETCH_INBOX);
        let mut routes = registry.write();
        if matches!(routes.get(&info_hash), Some(Route::Torrent(_))) {
            return None;
        }
        routes.insert(info_hash, Route::Fetch(sender.clone()));
        Some(Self {
            registry: Arc::clone(registry),
            info_hash,
            sender,
            receiver,
        })
    }

    /// Where the connections arrive.
    pub fn receiver(&self) -> &Receiver<Incoming> {
        &self.receiver
    }
}

impl Drop for FetchInbox {
    fn drop(&mut self) {
        let mut routes = self.registry.write();
        if matches!(routes.get(&self.info_hash), Some(Route::Fetch(s)) if s.same_channel(&self.sender))
        {
            routes.remove(&self.info_hash);
        }
    }
}

/// Most incoming connections waiting for their handshake at once. Each holds a thread for up to
/// [`conn::HANDSHAKE_TIMEOUT`] (10 s), so silent connections must not spawn threads without end.
pub const MAX_HANDSHAKING: usize = 64;

/// A running listener thread.
pub struct Listener {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port) and starts accepting.
    ///
    /// # Errors
    /// When the address cannot be bound or the thread cannot be spawned.
    pub fn bind(
        addr: SocketAddr,
        registry: Registry,
        limits: Arc<Limits>,
    ) -> std::io::Result<Self> {
        let listener = if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
            bind_both_families(addr)?
        } else {
            TcpListener::bind(addr)?
        };
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("listener".into())
                .spawn(move || {
                    profile::run_as(Role::Listener, || {
                        accept_loop(&listener, &registry, &limits, &stop);
                    });
                })?
        };
        Ok(Self {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address actually bound (with the port the kernel picked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and joins the thread.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept() with a connection of our own.
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_and_join();
        }
    }
}

/// Incoming connections open now: per remote IP (from accept until their thread ends), and how
/// many of them are still in their handshake.
#[derive(Default)]
struct OpenConnections {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    handshaking: AtomicUsize,
}

impl OpenConnections {
    /// Counts a new connection from `ip`, or says why it is refused.
    fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &Limits,
        max_handshaking: usize,
    ) -> Result<Slot, String> {
        let mut per_ip = self.per_ip.lock();
        let n = per_ip.get(&ip).copied().unwrap_or(0);
        if n >= limits.peers.max_per_ip() {
            return Err(format!("{n} connections from this address already"));
        }
        self.handshaking
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h < max_handshaking).then_some(h + 1)
            })
            .map_err(|h| format!("{h} connections in their handshake already"))?;
        per_ip.insert(ip, n + 1);
        Ok(Slot {
            open: Arc::clone(self),
            ip,
            handshaking: true,
        })
    }
}

/// One counted incoming connection; uncounted on `Drop`.
pub struct Slot {
    open: Arc<OpenConnections>,
    ip: IpAddr,
    handshaking: bool,
}

impl Slot {
    fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.open.handshaking.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.handshake_done();
        let mut per_ip = self.open.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// The IPv6 wildcard `addr` listening on IPv4 too (`IPV6_V6ONLY` off, whatever the system's
/// default), so `::` means both families, which HTTP announces then tell trackers (BEP 7).
fn bind_both_families(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn accept_loop(listener: &TcpListener, registry: &Registry, limits: &Limits, stop: &AtomicBool) {
    let open = Arc::new(OpenConnections::default());
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match conn {
            Ok(stream) => stream,
            Err(e) => {
                warn!("listener: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Ok(addr) = stream.peer_addr() else {
            continue;
        };
        let slot = match open.admit(addr.ip().to_canonical(), limits, MAX_HANDSHAKING) {
            Ok(slot) => slot,
            Err(why) => {
                debug!("peer {addr}: refused: {why}");
                continue; // dropping the stream closes it
            }
        };
        let registry = Arc::clone(registry);
        let mode = limits.encryption.get();
        let spawned = std::thread::Builder::new()
            .name(format!("peer {addr}"))
            .stack_size(peer::PEER_STACK_BYTES)
            .spawn(move || {
                profile::run_as(Role::Peer, || route(stream, addr, &registry, slot, mode));
            });
        if let Err(e) = spawned {
            warn!("listener: cannot spawn a thread for {addr}: {e}");
        }
    }
}

/// Reads the handshakes of an accepted connection (encryption, as `mode` allows, then
/// BitTorrent) and runs it as a peer of the torrent it names. `slot` counts the connection until
/// the session ends.
fn route(
    stream: TcpStream,
    addr: SocketAddr,
    registry: &Registry,
    mut slot: Slot,
    mode: Encryption,
) {
    // An encrypting peer names its torrent by HASH("req2", info hash): one hash per torrent
    // served, a few milliseconds for ten thousand.
    let find_torrent = |req2: &[u8; 20]| {
        registry
            .read()
            .keys()
            .find(|ih| mse::obfuscated_hash(&ih.0) == *req2)
            .map(|ih| ih.0)
    };
    let (stream, theirs) = match conn::accept(stream, mode, find_torrent) {
        Ok(accepted) => accepted,
        Err(e) => {
            debug!("peer {addr}: incoming handshake: {e}");
            return;
        }
    };
    slot.handshake_done();
    let info_hash = InfoHash(theirs.info_hash);
    let route = registry.read().get(&info_hash).map(|route| match route {
        Route::Torrent(ctx) => Route::Torrent(Arc::clone(ctx)),
        Route::Fetch(inbox) => Route::Fetch(inbox.clone()),
    });
    match route {
        Some(Route::Torrent(ctx)) => peer::run_incoming(&ctx, stream, addr, theirs),
        Some(Route::Fetch(inbox)) => {
            let handed = inbox.try_send(Incoming {
                stream,
                addr,
                handshake: theirs,
                slot,
            });
            match handed {
                Ok(()) => debug!("peer {addr}: handed to the metadata fetch of {info_hash}"),
                Err(TrySendError::Full(_)) => {
                    debug!("peer {addr}: the metadata fetch of {info_hash} is busy; closed");
                }
                Err(TrySendError::Disconnected(_)) => {
                    debug!("peer {addr}: the metadata fetch of {info_hash} ended; closed");
                }
            }
        }
        None => debug!("peer {addr}: handshake for unknown torrent {info_hash}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    /// A loopback connection: our end, and theirs as the listener hands it over.
    fn incoming(open: &Arc<OpenConnections>, limits: &Limits) -> (TcpStream, Incoming) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, addr) = listener.accept().unwrap();
        let conn = Incoming {
            stream: PeerStream::Plain(stream),
            addr,
            handshake: Handshake::new([7; 20], [1; 20]),
            slot: open.admit(addr.ip(), limits, 10).unwrap(),
        };
        (ours, conn)
    }

    #[test]
    fn a_fetch_inbox_routes_its_info_hash_until_dropped_and_removes_only_its_own_route() {
        let registry: Registry = Arc::new(RwLock::new(HashMap::new()));
        let hash = InfoHash([7; 20]);
        let first = FetchInbox::open(&registry, hash).expect("opened");
        assert!(matches!(registry.read().get(&hash), Some(Route::Fetch(_))));
        // A second fetch of the same hash (a retry racing the first's end) takes the route;
        // the first one's end leaves it alone.
        let second = FetchInbox::open(&registry, hash).expect("opened");
        drop(first);
        let routed = match registry.read().get(&hash) {
            Some(Route::Fetch(inbox)) => inbox.clone(),
            _ => panic!("the second fetch's route is gone"),
        };
        let limits = Limits::new(0, 0, 100);
        let open = Arc::new(OpenConnections::default());
        let (_ours, conn) = incoming(&open, &limits);
        let addr = conn.addr;
        assert!(routed.try_send(conn).is_ok());
        assert_eq!(second.receiver().try_recv().unwrap().addr, addr);
        drop(second);
        assert!(registry.read().get(&hash).is_none());
        let (_ours, conn) = incoming(&open, &limits);
        assert!(
            matches!(routed.try_send(conn), Err(TrySendError::Disconnected(_))),
            "the inbox is closed"
        );
    }

    #[test]
    fn refuses_a_connection_over_the_per_ip_limit_until_one_ends() {
        let limits = Limits::new(0, 0, 100);
        limits.peers.set_max_per_ip(2);
        let open = Arc::new(OpenConnections::default());
        let mut a = open.admit(V4, &limits, 10).unwrap();
        let _b = open.admit(V4, &limits, 10).unwrap();
        assert!(open.admit(V4, &limits, 10).is_err());
        let _other = open.admit(OTHER, &limits, 10).unwrap();
        a.handshake_done();
        assert!(
            open.admit(V4, &limits, 10).is_err(),
            "a session still counts"
        );
        drop(a);
        assert!(open.admit(V4, &limits, 10).is_ok());
    }

    #[test]
    fn refuses_past_the_handshaking_cap_but_not_for_a_full_peer_budget() {
        let limits = Arc::new(Limits::new(0, 0, 100));
        let open = Arc::new(OpenConnections::default());
        let mut first = open.admit(V4, &limits, 2).unwrap();
        let _second = open.admit(OTHER, &limits, 2).unwrap();
        assert!(open.admit(OTHER, &limits, 2).is_err());
        first.handshake_done();
        let _third = open.admit(OTHER, &limits, 2).unwrap();
        assert_eq!(open.per_ip.lock().get(&OTHER), Some(&2));
        limits.peers.set_max(1);
        let _taken = limits.try_peer_permit().expect("the one slot");
        assert!(
            open.admit(IpAddr::V4(Ipv4Addr::LOCALHOST), &limits, 100)
                .is_ok(),
            "a full budget is the torrent's to judge: it may make room"
        );
    }
}
