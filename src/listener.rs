//! The listener: thread "listener" accepts incoming TCP connections and hands each to a new
//! peer thread, which reads the peer's handshake and finds the torrent by its info hash in the
//! registry. The listener itself never reads from a socket, so a slow peer cannot stall it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, warn};
use parking_lot::RwLock;

use crate::metainfo::InfoHash;
use crate::peer::{self, TorrentContext};

/// Torrents that accept incoming peers, by info hash. Written when torrents start and stop,
/// read once per incoming connection.
pub type Registry = Arc<RwLock<HashMap<InfoHash, Arc<TorrentContext>>>>;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    pub fn bind(addr: SocketAddr, registry: Registry) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("listener".into())
                .spawn(move || accept_loop(&listener, &registry, &stop))?
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

fn accept_loop(listener: &TcpListener, registry: &Registry, stop: &AtomicBool) {
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
        let registry = Arc::clone(registry);
        let spawned = std::thread::Builder::new()
            .name(format!("peer {addr}"))
            .stack_size(peer::PEER_STACK_BYTES)
            .spawn(move || route(stream, addr, &registry));
        if let Err(e) = spawned {
            warn!("listener: cannot spawn a thread for {addr}: {e}");
        }
    }
}

/// Reads the handshake of an accepted connection and runs it as a peer of the torrent it names.
fn route(mut stream: TcpStream, addr: SocketAddr, registry: &Registry) {
    if stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).is_err() {
        return;
    }
    let theirs = match peer::read_handshake(&mut stream) {
        Ok(h) => h,
        Err(e) => {
            debug!("peer {addr}: incoming handshake: {e}");
            return;
        }
    };
    let ctx = registry.read().get(&InfoHash(theirs.info_hash)).cloned();
    match ctx {
        Some(ctx) => peer::run_incoming(&ctx, stream, addr, theirs),
        None => debug!(
            "peer {addr}: handshake for unknown torrent {}",
            InfoHash(theirs.info_hash)
        ),
    }
}
