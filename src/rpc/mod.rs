//! The Transmission RPC's transport (legacy protocol, rpc-version 17, as transmission-daemon
//! serves it): `POST /transmission/rpc` on the process's HTTP server (`http_server`), with the
//! IP whitelist (403), Basic auth (401), the Host check against DNS rebinding (421) and the
//! `X-Transmission-Session-Id` handshake (409), bounded bodies (413), JSON in and out
//! (`protocol.rs`), and a web client's static files at `/transmission/web/` (`web.rs`); and
//! the other end, the blocking client btd's own CLI calls a daemon with (`client.rs`).
//!
//! What a method does is not decided here: each request becomes an [`RpcCall`] sent to the
//! channel made by [`channel`], whose receiver the daemon's main loop owns; the worker waits for
//! the [`RpcAnswer`] at most [`ANSWER_TIMEOUT`], then answers with a `result` saying the daemon
//! did not answer.
//!
//! Threads (the HTTP server's): `rpc accept`, which hands clients outside `allowed_ips` to
//! `rpc refuse` (403) and the rest to [`HTTP_WORKERS`] `rpc http N`, which check, read, decode,
//! send the call and wait for its answer. The settings (credentials, whitelists,
//! web directory) sit behind one lock that a request holds only to clone an `Arc` of them, so
//! [`RpcServer::set_config`] (SIGHUP) applies them to the next request.

pub mod client;
mod front;
pub mod protocol;
pub mod web;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde_json::{Map, Value};

use crate::http_server::{HttpServer, ServerConfig};
use crate::profile::Role;

/// Threads serving RPC and web requests: at most this many in service at once.
pub const HTTP_WORKERS: usize = 4;
/// Accepted connections waiting for a worker; more are closed at once.
pub const HTTP_QUEUE: usize = 64;
/// A request head over this gets 431 (browsers send cookies; 16 KiB leaves room).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A request body over this gets 413: a 10 MiB metainfo in base64 (13.4 MiB) and its JSON fit.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// A client has this long to send its head (and each write of a reply to progress).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A client has this long, from the end of its head, to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// A worker waits this long for the daemon's answer to a call.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The URL path of the RPC.
pub const RPC_PATH: &str = "/transmission/rpc";
/// The URL path prefix of the web client.
pub const WEB_PATH: &str = "/transmission/web/";
/// The header of the CSRF handshake.
pub const SESSION_ID_HEADER: &str = "X-Transmission-Session-Id";

/// A password, never printed (`Debug` shows its length only).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself, for comparing.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// An entry of `allowed_ips`: an address range in CIDR form (a plain address is a /32 or
/// /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `10.0.0.0/8`, `fd00::/8`, `127.0.0.1`, `::1`, or transmission's wildcards with
    /// trailing stars (`192.168.*.*`). Host bits after the prefix are ignored.
    ///
    /// # Errors
    /// Why `text` is none of these.
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let text = text.trim();
        if let Some(v4) = wildcard_v4(text) {
            return v4;
        }
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(IpRange { net, prefix })
    }

    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// `192.168.*.*` -> `192.168.0.0/16`; `None` when `text` has no star.
fn wildcard_v4(text: &str) -> Option<Result<IpRange, String>> {
    if !text.contains('*') {
        return None;
    }
    let bad = || {
        Err(format!(
            "{text:?}: only trailing parts may be `*` (e.g. 192.168.*.*)"
        ))
    };
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() != 4 {
        return Some(bad());
    }
    let fixed = parts.iter().take_while(|p| **p != "*").count();
    if parts[fixed..].iter().any(|p| *p != "*") {
        return Some(bad());
    }
    let mut octets = [0u8; 4];
    for (octet, part) in octets.iter_mut().zip(&parts[..fixed]) {
        match part.parse() {
            Ok(n) => *octet = n,
            Err(_) => return Some(bad()),
        }
    }
    let prefix = u8::try_from(fixed * 8).expect("at most 32");
    Some(Ok(IpRange {
        net: IpAddr::V4(Ipv4Addr::from(octets)),
        prefix,
    }))
}

/// The RPC's settings (`[rpc]`), validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcConfig {
    /// `enabled`: whether the daemon runs the RPC at all (the daemon's decision; the server
    /// itself ignores it).
    pub enabled: bool,
    /// Port 0 picks a free port (logged as `rpc serving HTTP on ADDR`).
    pub listen: SocketAddr,
    /// Both set: Basic auth is required, and the Host check is off (as in transmission).
    pub username: String,
    pub password: Secret,
    /// Clients from other addresses get 403.
    pub allowed_ips: Vec<IpRange>,
    /// Host names a request's `Host` may name besides IP literals and `localhost`, lower case;
    /// `*.example.com` matches its subdomains.
    pub allowed_hosts: Vec<String>,
    /// The web client's files, served at `/transmission/web/`.
    pub web_dir: Option<PathBuf>,
}

impl Default for RpcConfig {
    /// Enabled on `127.0.0.1:9091`, no auth, loopback clients only, no web client.
    fn default() -> RpcConfig {
        RpcConfig {
            enabled: true,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9091)),
            username: String::new(),
            password: Secret::default(),
            allowed_ips: vec![
                IpRange {
                    net: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    prefix: 32,
                },
                IpRange {
                    net: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    prefix: 128,
                },
            ],
            allowed_hosts: Vec::new(),
            web_dir: None,
        }
    }
}

impl RpcConfig {
    /// Whether Basic auth is required.
    pub fn auth_required(&self) -> bool {
        !self.username.is_empty() && !self.password.is_empty()
    }
}

/// One RPC request for the daemon: a method and its arguments, and where the answer goes.
#[derive(Debug)]
pub struct RpcCall {
    /// As the client sent it (`torrent-get`); the daemon answers unknown ones.
    pub method: String,
    pub arguments: Map<String, Value>,
    /// The client's address, for the log.
    pub peer: SocketAddr,
    /// Where the answer goes; the worker stops waiting after [`ANSWER_TIMEOUT`].
    pub reply: Sender<RpcAnswer>,
}

impl RpcCall {
    /// Sends the answer; a worker that gave up waiting is not an error.
    pub fn answer(self, result: Result<Arguments, String>) {
        let _ = self.reply.send(RpcAnswer { result });
    }
}

/// The daemon's answer to an [`RpcCall`]: the reply's `arguments` (`result` is `success`), or
/// the `result` string saying why not (`method name not recognized`, `torrent not found`, ...).
#[derive(Clone, Debug, PartialEq)]
pub struct RpcAnswer {
    pub result: Result<Arguments, String>,
}

/// A reply's `arguments`.
#[derive(Clone, Debug, PartialEq)]
pub enum Arguments {
    Map(Map<String, Value>),
    /// The `arguments` object already as JSON text: `torrent-get` of thousands of torrents
    /// as values is tens of MiB of small allocations (10,000 torrents, `btd list`: 60 MiB that
    /// the allocator kept), as text a few MiB.
    Json(String),
}

impl From<Map<String, Value>> for Arguments {
    fn from(map: Map<String, Value>) -> Self {
        Self::Map(map)
    }
}

/// The channel from the RPC workers to the daemon: at most one call per worker waits in it.
pub fn channel() -> (Sender<RpcCall>, Receiver<RpcCall>) {
    crossbeam_channel::bounded(HTTP_WORKERS)
}

/// A running RPC server. Dropping it stops it too, like [`RpcServer::stop`].
pub struct RpcServer {
    front: Arc<front::Front>,
    http: HttpServer,
    listen: SocketAddr,
}

impl RpcServer {
    /// Binds `config.listen`, starts the threads and logs `rpc serving HTTP on ADDR`. Calls go
    /// to `calls` (the sender of [`channel`]).
    ///
    /// # Errors
    /// The bind error, naming the address; a thread that cannot be spawned.
    pub fn start(config: RpcConfig, calls: Sender<RpcCall>) -> io::Result<RpcServer> {
        RpcServer::start_with(config, calls, ANSWER_TIMEOUT)
    }

    fn start_with(
        config: RpcConfig,
        calls: Sender<RpcCall>,
        answer_timeout: Duration,
    ) -> io::Result<RpcServer> {
        let listen = config.listen;
        let front = Arc::new(front::Front::new(config, calls, answer_timeout));
        let http = serve(listen, &front)?;
        Ok(RpcServer {
            front,
            http,
            listen,
        })
    }

    /// The address it listens on (the real port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// The current `X-Transmission-Session-Id` (new for each server).
    pub fn session_id(&self) -> &str {
        self.front.session_id()
    }

    /// The config in force.
    pub fn config(&self) -> RpcConfig {
        self.front.config()
    }

    /// Applies a new config (SIGHUP): credentials, whitelists and the web directory apply to the
    /// next request; a new `listen` address binds it first and then stops the old one (requests
    /// in service there are abandoned). The session id stays.
    ///
    /// # Errors
    /// The new address cannot be bound; the old server and config stay in force.
    pub fn set_config(&mut self, config: RpcConfig) -> io::Result<()> {
        if config.listen != self.listen {
            let http = serve(config.listen, &self.front)?;
            let old = std::mem::replace(&mut self.http, http);
            log::info!(
                "rpc on {}: moved to {}",
                old.local_addr(),
                self.local_addr()
            );
            old.stop();
            self.listen = config.listen;
        }
        self.front.set_config(config);
        Ok(())
    }

    /// Stops accepting, wakes and joins every thread.
    pub fn stop(self) {
        let addr = self.local_addr();
        self.http.stop();
        log::info!("rpc on {addr}: stopped");
    }
}

fn serve(listen: SocketAddr, front: &Arc<front::Front>) -> io::Result<HttpServer> {
    let listener = TcpListener::bind(listen)
        .map_err(|e| io::Error::new(e.kind(), format!("rpc: cannot listen on {listen}: {e}")))?;
    let http = HttpServer::start(
        listener,
        ServerConfig {
            name: "rpc",
            role: Role::Rpc,
            workers: HTTP_WORKERS,
            queue: HTTP_QUEUE,
            max_head_bytes: MAX_HEAD_BYTES,
            max_body_bytes: MAX_BODY_BYTES,
            head_timeout: HEAD_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            refuses_peers: true,
        },
        Arc::clone(front) as Arc<dyn crate::http_server::Handler>,
    )?;
    log::info!("rpc serving HTTP on {}", http.local_addr());
    Ok(http)
}

#[cfg(test)]
mod tests;
