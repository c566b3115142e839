//! btd's own tracker: HTTP announce and scrape (BEP 3, 23, 7, 48) and UDP announce and scrape
//! (BEP 15) on one port number, peers kept in memory (`swarm.rs`) and expiring when they stop
//! announcing. `btd tracker` runs it in the foreground; a daemon can run it inside itself.
//!
//! Threads: the process's HTTP server (`http_server`) runs the HTTP front end: `tracker accept`
//! accepts TCP connections and hands them to a bounded queue; [`HTTP_WORKERS`] `tracker http N`
//! threads each serve one connection at a time (one request, then close); `tracker udp` answers
//! datagrams. They share one [`Mutex`] over the swarms and the config, held only while the swarm
//! logic runs, never across socket I/O.
//!
//! It answers strangers, so everything is bounded: request heads (8 KiB) and the time to send
//! them, connections in service (the workers) and waiting (the queue; beyond it connections are
//! closed unanswered), peers per torrent, torrents in total and peers per reply. Malformed
//! requests get a `failure reason` (HTTP) or an error packet (UDP), never a panic.
//!
//! [`TrackerServer::stop`] stops the HTTP server (which wakes its accept with a connection) and
//! wakes `tracker udp` with a datagram, after raising the stop flag.

mod http;
mod swarm;
mod udp;

pub use swarm::{InfoHash, PeerId, SwarmStats};

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http_server::{HttpServer, ServerConfig, wake_addrs};
use crate::profile::{Role, run_as};
use swarm::{Announce, AnnounceOutcome, Limits, Refusal, ScrapeEntry, Swarms};

/// Threads serving HTTP connections: at most this many requests are in service at once.
pub const HTTP_WORKERS: usize = 4;
/// Accepted connections waiting for a worker; more are closed at once.
pub const HTTP_QUEUE: usize = 64;
/// Peers in a reply when the client does not say (`numwant` absent, or -1 over UDP).
pub const DEFAULT_NUMWANT: usize = 50;
/// Peers in a reply at most, whatever the client asks.
pub const MAX_NUMWANT: usize = 200;
/// Torrents in a scrape without info hashes at most.
pub const SCRAPE_ALL_MAX: usize = 1000;
/// How often `start` tries port numbers free for both TCP and UDP when asked for port 0.
const BIND_ATTEMPTS: usize = 32;

/// What the tracker listens on and the limits it enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// HTTP (TCP) and UDP both listen on this address; port 0 picks a number free for both.
    pub listen: SocketAddr,
    /// `interval`: how long clients wait between announces.
    pub interval: Duration,
    /// `min interval`: clients never announce sooner than this, even when starved of peers.
    pub min_interval: Duration,
    /// Peers stored per torrent; a new peer in a full swarm gets peers but is not listed.
    pub max_peers_per_torrent: usize,
    /// Torrents tracked at once; an announce for a new one beyond this gets a failure reason.
    pub max_torrents: usize,
    /// A peer not heard from for this long is dropped; more than `interval`, so that a peer that
    /// misses one announce (a timeout, a restart) stays listed.
    pub peer_ttl: Duration,
}

/// The default announce interval: 30 minutes, as most public trackers use.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1800);

impl TrackerConfig {
    /// The defaults for `interval`, and the values derived from it: `min interval` is half of
    /// it (at least a second), the peer TTL is twice it plus a minute.
    pub fn with_interval(listen: SocketAddr, interval: Duration) -> TrackerConfig {
        TrackerConfig {
            listen,
            interval,
            min_interval: (interval / 2).max(Duration::from_secs(1)),
            max_peers_per_torrent: 1000,
            max_torrents: 1000,
            peer_ttl: interval
                .saturating_mul(2)
                .saturating_add(Duration::from_secs(60)),
        }
    }

    /// Refuses limits that make no sense.
    ///
    /// # Errors
    /// Which value is wrong and why: an interval of 0 or longer than UDP's 32-bit seconds, a
    /// min interval above the interval, limits of 0, a peer TTL not above the interval.
    pub fn validate(&self) -> Result<(), TrackerConfigError> {
        let bad = |reason: String| Err(TrackerConfigError(reason));
        if self.interval < Duration::from_secs(1) || self.interval.as_secs() > u64::from(u32::MAX) {
            return bad(format!(
                "interval must be 1 to {} seconds, got {:?}",
                u32::MAX,
                self.interval
            ));
        }
        if self.min_interval > self.interval {
            return bad(format!(
                "min interval ({:?}) must not exceed the interval ({:?})",
                self.min_interval, self.interval
            ));
        }
        if self.max_peers_per_torrent == 0 || self.max_torrents == 0 {
            return bad("max peers per torrent and max torrents must be at least 1".to_owned());
        }
        if self.peer_ttl <= self.interval {
            return bad(format!(
                "peer TTL ({:?}) must exceed the interval ({:?}), or peers expire between \
                 announces",
                self.peer_ttl, self.interval
            ));
        }
        Ok(())
    }

    fn limits(&self) -> Limits {
        Limits {
            max_peers_per_torrent: self.max_peers_per_torrent,
            max_torrents: self.max_torrents,
            peer_ttl: self.peer_ttl,
        }
    }
}

impl Default for TrackerConfig {
    /// `0.0.0.0:6969` (the port trackers traditionally use), interval 30 min, min interval
    /// 15 min, 1,000 peers per torrent, 1,000 torrents, peers expire after 61 min.
    fn default() -> TrackerConfig {
        TrackerConfig::with_interval(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 6969)),
            DEFAULT_INTERVAL,
        )
    }
}

/// A tracker config that cannot work; the text says which value and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tracker config: {0}")]
pub struct TrackerConfigError(String);

/// What `btd tracker` was given on its command line; absent values take the defaults of
/// [`TrackerConfig::with_interval`].
#[derive(Clone, Debug)]
pub struct TrackerOptions {
    /// `--listen`.
    pub listen: SocketAddr,
    /// `--interval` in seconds.
    pub interval_secs: Option<u64>,
    /// `--min-interval` in seconds.
    pub min_interval_secs: Option<u64>,
    /// `--max-peers-per-torrent`.
    pub max_peers_per_torrent: Option<usize>,
    /// `--max-torrents`.
    pub max_torrents: Option<usize>,
}

impl TrackerOptions {
    /// The config these options describe (not yet validated: [`TrackerServer::start`] does).
    pub fn to_config(&self) -> TrackerConfig {
        let interval = self
            .interval_secs
            .map_or(DEFAULT_INTERVAL, Duration::from_secs);
        let mut config = TrackerConfig::with_interval(self.listen, interval);
        if let Some(secs) = self.min_interval_secs {
            config.min_interval = Duration::from_secs(secs);
        }
        if let Some(n) = self.max_peers_per_torrent {
            config.max_peers_per_torrent = n;
        }
        if let Some(n) = self.max_torrents {
            config.max_torrents = n;
        }
        config
    }
}

/// Runs a tracker for `options` until `stop` delivers (or its sender is dropped), then stops it.
///
/// # Errors
/// `InvalidInput` for a config that fails [`TrackerConfig::validate`]; otherwise the error of
/// binding the sockets or starting the threads.
pub fn run_until(
    options: &TrackerOptions,
    stop: &crossbeam_channel::Receiver<()>,
) -> io::Result<()> {
    let server = TrackerServer::start(options.to_config())?;
    let _ = stop.recv();
    log::info!("tracker on {}: stopping", server.local_addr());
    server.stop();
    Ok(())
}

/// Intervals to put in a reply, read under the same lock as the swarm.
#[derive(Clone, Copy, Debug)]
struct Intervals {
    interval: Duration,
    min_interval: Duration,
}

struct State {
    swarms: Swarms,
    config: TrackerConfig,
}

/// What the threads share: the swarms and config behind one lock, and the stop flag.
struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn new(config: TrackerConfig) -> Shared {
        Shared {
            state: Mutex::new(State {
                swarms: Swarms::new(),
                config,
            }),
            stop: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn announce(
        &self,
        announce: &Announce,
        now: Instant,
    ) -> Result<(AnnounceOutcome, Intervals), Refusal> {
        let mut rng = rand::rng();
        let mut state = self.lock();
        let limits = state.config.limits();
        let intervals = Intervals {
            interval: state.config.interval,
            min_interval: state.config.min_interval,
        };
        let outcome = state.swarms.announce(announce, &limits, now, &mut rng)?;
        Ok((outcome, intervals))
    }

    fn scrape(&self, hashes: &[InfoHash], now: Instant) -> Vec<(InfoHash, ScrapeEntry)> {
        let mut state = self.lock();
        let ttl = state.config.peer_ttl;
        if hashes.is_empty() {
            state.swarms.scrape_all(SCRAPE_ALL_MAX, ttl, now)
        } else {
            state.swarms.scrape(hashes, ttl, now)
        }
    }
}

/// A running tracker. Dropping it stops it too, like [`TrackerServer::stop`].
pub struct TrackerServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    http: Option<HttpServer>,
    threads: Vec<JoinHandle<()>>,
}

impl TrackerServer {
    /// Binds HTTP and UDP on `config.listen` (port 0: a number free for both), starts the
    /// threads and logs `tracker serving HTTP and UDP on ADDR` (not "listening on", which names
    /// the peer port in every log).
    ///
    /// # Errors
    /// `InvalidInput` for a config that fails [`TrackerConfig::validate`]; the bind error (naming
    /// the address) when either socket cannot be bound; a thread that cannot be spawned.
    pub fn start(config: TrackerConfig) -> io::Result<TrackerServer> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (listener, socket) = bind_pair(config.listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("tracker: cannot listen on {}: {e}", config.listen),
            )
        })?;
        let local_addr = listener.local_addr()?;
        let mut server = TrackerServer {
            local_addr,
            shared: Arc::new(Shared::new(config)),
            http: None,
            threads: Vec::new(),
        };
        if let Err(e) = server.spawn_threads(listener, socket) {
            server.shutdown();
            return Err(e);
        }
        log::info!("tracker serving HTTP and UDP on {local_addr}");
        Ok(server)
    }

    fn spawn_threads(&mut self, listener: TcpListener, socket: UdpSocket) -> io::Result<()> {
        let front = http::Front::new(Arc::clone(&self.shared));
        self.http = Some(HttpServer::start(
            listener,
            ServerConfig {
                name: "tracker",
                role: Role::Tracker,
                workers: HTTP_WORKERS,
                queue: HTTP_QUEUE,
                max_head_bytes: http::MAX_HEAD_BYTES,
                // Tracker requests have no body; one sent anyway is read (so closing does not
                // reset the connection under the reply) and ignored.
                max_body_bytes: http::MAX_HEAD_BYTES,
                head_timeout: http::REQUEST_TIMEOUT,
                body_timeout: http::REQUEST_TIMEOUT,
                refuses_peers: false,
            },
            Arc::new(front),
        )?);
        let shared = Arc::clone(&self.shared);
        let ids = udp::ConnectionIds::new(rand::random(), Instant::now());
        self.threads.push(
            std::thread::Builder::new()
                .name("tracker udp".into())
                .spawn(move || run_as(Role::Tracker, || udp::serve(&socket, &shared, &ids)))?,
        );
        Ok(())
    }

    /// The address HTTP and UDP listen on (the real port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The config in force.
    pub fn config(&self) -> TrackerConfig {
        self.shared.lock().config
    }

    /// Changes intervals and limits in place, without dropping peers. `listen` is ignored: the
    /// sockets stay where they are (a new address needs a new server). Lower limits apply to new
    /// torrents and peers; those already tracked stay until they stop or expire.
    ///
    /// # Errors
    /// The config fails [`TrackerConfig::validate`]; the old one stays in force.
    pub fn set_config(&self, config: TrackerConfig) -> Result<(), TrackerConfigError> {
        config.validate()?;
        let mut state = self.shared.lock();
        state.config = TrackerConfig {
            listen: state.config.listen,
            ..config
        };
        Ok(())
    }

    /// How many torrents and peers are tracked.
    pub fn stats(&self) -> SwarmStats {
        self.shared.lock().swarms.stats()
    }

    /// Stops accepting, wakes and joins every thread. Requests in service are abandoned within a
    /// fraction of a second.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.threads.is_empty() && self.http.is_none() {
            return;
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(http) = self.http.take() {
            http.stop();
        }
        // Wake `recv_from()` with an empty datagram.
        for wake in wake_addrs(self.local_addr) {
            let any: SocketAddr = match wake.ip() {
                IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            if UdpSocket::bind(any)
                .and_then(|s| s.send_to(&[], wake))
                .is_ok()
            {
                break;
            }
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        log::info!("tracker on {}: stopped", self.local_addr);
    }
}

impl Drop for TrackerServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A TCP listener and a UDP socket on the same address and port. For port 0 the kernel picks a
/// TCP port and UDP takes the same number; when that number is taken for UDP, try again.
fn bind_pair(addr: SocketAddr) -> io::Result<(TcpListener, UdpSocket)> {
    if addr.port() != 0 {
        let listener = TcpListener::bind(addr)?;
        return Ok((listener, UdpSocket::bind(addr)?));
    }
    for _ in 0..BIND_ATTEMPTS {
        let listener = TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        match UdpSocket::bind(SocketAddr::new(addr.ip(), port)) {
            Ok(socket) => return Ok((listener, socket)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no port free for both TCP and UDP after {BIND_ATTEMPTS} tries"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    #[test]
    fn default_config_is_valid_and_derives_from_the_interval() {
        let c = TrackerConfig::default();
        c.validate().unwrap();
        assert_eq!(c.interval, Duration::from_secs(1800));
        assert_eq!(c.min_interval, Duration::from_secs(900));
        assert_eq!(c.peer_ttl, Duration::from_secs(3660));
        let short = TrackerConfig::with_interval(local(0), Duration::from_secs(1));
        short.validate().unwrap();
        assert_eq!(short.min_interval, Duration::from_secs(1));
    }

    #[test]
    fn validate_refuses_impossible_values() {
        let ok = TrackerConfig::with_interval(local(0), Duration::from_secs(60));
        let bad = [
            TrackerConfig {
                interval: Duration::ZERO,
                ..ok
            },
            TrackerConfig {
                min_interval: Duration::from_secs(61),
                ..ok
            },
            TrackerConfig {
                max_torrents: 0,
                ..ok
            },
            TrackerConfig {
                max_peers_per_torrent: 0,
                ..ok
            },
            TrackerConfig {
                peer_ttl: Duration::from_secs(60),
                ..ok
            },
            TrackerConfig {
                interval: Duration::from_secs(1 << 33),
                peer_ttl: Duration::from_secs(1 << 35),
                ..ok
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        let e = TrackerServer::start(bad_config()).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    fn bad_config() -> TrackerConfig {
        TrackerConfig {
            max_torrents: 0,
            ..TrackerConfig::with_interval(local(0), Duration::from_secs(60))
        }
    }

    #[test]
    fn options_fill_in_the_defaults() {
        let opts = TrackerOptions {
            listen: local(0),
            interval_secs: Some(10),
            min_interval_secs: None,
            max_peers_per_torrent: Some(7),
            max_torrents: None,
        };
        let c = opts.to_config();
        assert_eq!(
            (c.interval, c.min_interval, c.peer_ttl),
            (
                Duration::from_secs(10),
                Duration::from_secs(5),
                Duration::from_secs(80)
            )
        );
        assert_eq!((c.max_peers_per_torrent, c.max_torrents), (7, 1000));
        // An absurd interval is refused, not an overflow.
        let opts = TrackerOptions {
            interval_secs: Some(u64::MAX),
            ..opts
        };
        assert!(opts.to_config().validate().is_err());
    }

    #[test]
    fn port_zero_gives_tcp_and_udp_the_same_number_and_stop_joins_quickly() {
        let server = TrackerServer::start(TrackerConfig::with_interval(
            local(0),
            Duration::from_secs(60),
        ))
        .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        // Both are taken: binding either again fails.
        assert!(TcpListener::bind(addr).is_err());
        assert!(UdpSocket::bind(addr).is_err());
        let started = Instant::now();
        server.stop();
        assert!(started.elapsed() < Duration::from_secs(2));
        // Everything is closed: both can be bound again.
        TcpListener::bind(addr).unwrap();
        UdpSocket::bind(addr).unwrap();
    }

    #[test]
    fn an_explicit_port_taken_for_udp_is_an_error_naming_the_address() {
        let udp = UdpSocket::bind(local(0)).unwrap();
        let addr = udp.local_addr().unwrap();
        if TcpListener::bind(addr).is_err() {
            return; // the TCP port happens to be taken too: nothing to learn here
        }
        let e = TrackerServer::start(TrackerConfig::with_interval(addr, Duration::from_secs(60)))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }

    #[test]
    fn set_config_changes_limits_and_keeps_the_address() {
        let server = TrackerServer::start(TrackerConfig::with_interval(
            local(0),
            Duration::from_secs(60),
        ))
        .unwrap();
        let mut next = TrackerConfig::with_interval(local(1), Duration::from_secs(120));
        next.max_torrents = 3;
        server.set_config(next).unwrap();
        let now = server.config();
        assert_eq!(
            (now.interval, now.max_torrents),
            (Duration::from_secs(120), 3)
        );
        assert_eq!(now.listen, local(0));
        assert!(server.set_config(bad_config()).is_err());
        assert_eq!(server.config().max_torrents, 3);
        server.stop();
    }
}
