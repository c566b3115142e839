//! The RPC's handler on the HTTP server: the checks, in transmission's order, then the web
//! client's files or the call to the daemon. Runs on the `rpc http N` workers.
//!
//! Order: the client's IP (403, for every path; decided at accept, where `rpc refuse` answers
//! strangers without a worker, and again here in case a SIGHUP changed the whitelist since), Basic auth when required (401 with
//! `WWW-Authenticate`), redirects to the web client (301) and its files, then for the RPC the
//! Host check (421; skipped while auth is required, as in transmission), the path (404), the
//! session id (409 carrying the current id) and the method (405). All of that is decided from
//! the head, so a refused client never gets its body read; only then does the server read the
//! body (413 over [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES)).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use crossbeam_channel::{SendTimeoutError, Sender};
use parking_lot::Mutex;
use serde_json::{Map, Value};

use super::{RPC_PATH, RpcAnswer, RpcCall, RpcConfig, SESSION_ID_HEADER, WEB_PATH, protocol, web};
use crate::http_server::{Handler, Request, Response};

pub(super) struct Front {
    config: Mutex<Arc<RpcConfig>>,
    session_id: String,
    calls: Sender<RpcCall>,
    /// [`ANSWER_TIMEOUT`](super::ANSWER_TIMEOUT), shorter in tests.
    answer_timeout: Duration,
}

/// A random session id: 48 letters and digits, as transmission's.
fn new_session_id() -> String {
    use rand::RngExt;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..48)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// Equal bytes, in a time that does not depend on where they differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `Authorization` carries `username:password` as Basic credentials.
fn authorized(config: &RpcConfig, header: Option<&str>) -> bool {
    let Some((scheme, encoded)) = header.and_then(|h| h.split_once(' ')) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let want = format!("{}:{}", config.username, config.password.expose());
    same_bytes(&decoded, want.as_bytes())
}

/// Whether the `Host` header names us: an IP literal (with or without a port), `localhost`, or
/// one of `allowed_hosts`. Without a header: no.
pub(super) fn host_allowed(config: &RpcConfig, host: Option<&str>) -> bool {
    let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return false;
    };
    if let Some(bracketed) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        let Some((inside, rest)) = bracketed.split_once(']') else {
            return false;
        };
        let port_ok = rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port);
        return port_ok && inside.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name == "localhost" {
        return true;
    }
    config.allowed_hosts.iter().any(|pattern| {
        let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
        match pattern.strip_prefix("*.") {
            Some(domain) => name
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => name == pattern,
        }
    })
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// What to do with a request, decided from its head.
enum Route {
    /// Answer with this now.
    Reply(Response),
    /// Read the body and call the daemon.
    Rpc,
}

fn html(status: u16, text: &str) -> Response {
    Response::new(
        status,
        "text/html; charset=utf-8",
        format!("<h1>{status}</h1><p>{text}</p>\n"),
    )
}

impl Front {
    pub(super) fn new(
        config: RpcConfig,
        calls: Sender<RpcCall>,
        answer_timeout: Duration,
    ) -> Front {
        Front {
            config: Mutex::new(Arc::new(config)),
            session_id: new_session_id(),
            calls,
            answer_timeout,
        }
    }

    pub(super) fn session_id(&self) -> &str {
        &self.session_id
    }

    pub(super) fn config(&self) -> RpcConfig {
        RpcConfig::clone(&self.config.lock())
    }

    pub(super) fn set_config(&self, config: RpcConfig) {
        *self.config.lock() = Arc::new(config);
    }

    /// 403 for an address outside `allowed_ips`.
    fn refuse_stranger(&self, config: &RpcConfig, peer: SocketAddr) -> Option<Response> {
        if config.allowed_ips.iter().any(|r| r.contains(peer.ip())) {
            return None;
        }
        // Debug only, so that a scan cannot fill the log.
        log::debug!("rpc: {peer}: refused: not in allowed_ips");
        Some(html(403, "Your address is not in btd's [rpc] allowed_ips."))
    }

    fn route(&self, request: &Request) -> Route {
        let config = Arc::clone(&self.config.lock());
        let peer = request.peer;
        if let Some(refusal) = self.refuse_stranger(&config, peer) {
            // The whitelist changed (SIGHUP) since the connection was taken.
            return Route::Reply(refusal);
        }
        if config.auth_required() && !authorized(&config, request.header("authorization")) {
            log::warn!("rpc: {peer}: refused: wrong or missing credentials");
            return Route::Reply(
                html(401, "Unauthorized: give btd's [rpc] username and password.")
                    .with_header("WWW-Authenticate", "Basic realm=\"btd\""),
            );
        }
        let path = request.path();
        if matches!(
            path,
            b"/" | b"/transmission" | b"/transmission/" | b"/transmission/web"
        ) {
            return Route::Reply(
                html(301, "Moved to /transmission/web/.").with_header("Location", WEB_PATH),
            );
        }
        if let Some(sub) = path.strip_prefix(WEB_PATH.as_bytes()) {
            if request.method != "GET" {
                return Route::Reply(html(405, "Use GET.").with_header("Allow", "GET"));
            }
            return Route::Reply(match &config.web_dir {
                Some(dir) => web::serve(dir, sub, peer),
                None => html(404, "No web client: btd's [rpc] web_dir is not set."),
            });
        }
        // transmission-remote 3.0 posts to `/transmission/rpc/`.
        if path.strip_suffix(b"/").unwrap_or(path) != RPC_PATH.as_bytes() {
            return Route::Reply(html(404, "Not found."));
        }
        if !config.auth_required() && !host_allowed(&config, request.header("host")) {
            log::warn!(
                "rpc: {peer}: refused: Host {:?} is not an IP address, localhost or in \
                 allowed_hosts",
                request.header("host").unwrap_or("")
            );
            return Route::Reply(html(
                421,
                "Misdirected request: the Host header names no address of btd. Add the name to \
                 [rpc] allowed_hosts, or require a password (protection against DNS rebinding).",
            ));
        }
        let sent = request.header(SESSION_ID_HEADER);
        if !sent.is_some_and(|id| same_bytes(id.as_bytes(), self.session_id.as_bytes())) {
            return Route::Reply(
                html(
                    409,
                    &format!(
                        "Send the {SESSION_ID_HEADER} header of this reply with your requests \
                         (protection against cross-site request forgery): \
                         <code>{SESSION_ID_HEADER}: {}</code>",
                        self.session_id
                    ),
                )
                .with_header(SESSION_ID_HEADER, self.session_id.clone()),
            );
        }
        if request.method != "POST" {
            return Route::Reply(html(405, "Use POST.").with_header("Allow", "POST"));
        }
        Route::Rpc
    }

    /// Sends the call to the daemon and waits for its answer, at most the answer timeout in all.
    fn call(&self, request: &Request, method: String, arguments: Map<String, Value>) -> RpcAnswer {
        let deadline = Instant::now() + self.answer_timeout;
        let (reply, answer) = crossbeam_channel::bounded(1);
        let call = RpcCall {
            method: method.clone(),
            arguments,
            peer: request.peer,
            reply,
        };
        let failed = |why: String| RpcAnswer { result: Err(why) };
        match self.calls.send_deadline(call, deadline) {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => {
                return failed(format!(
                    "btd is busy: {method} was not taken within {:.1} s",
                    self.answer_timeout.as_secs_f32()
                ));
            }
            Err(SendTimeoutError::Disconnected(_)) => {
                return failed("btd is shutting down".into());
            }
        }
        answer.recv_deadline(deadline).unwrap_or_else(|e| {
            log::warn!(
                "rpc: {}: {method}: no answer from the daemon: {e}",
                request.peer
            );
            failed(if e.is_timeout() {
                format!(
                    "btd did not answer {method} within {:.1} s",
                    self.answer_timeout.as_secs_f32()
                )
            } else {
                "btd is shutting down".into()
            })
        })
    }
}

impl Handler for Front {
    fn check_peer(&self, peer: SocketAddr) -> Option<Response> {
        let config = Arc::clone(&self.config.lock());
        self.refuse_stranger(&config, peer)
    }

    fn check_head(&self, request: &Request) -> Option<Response> {
        match self.route(request) {
            Route::Reply(response) => Some(response),
            Route::Rpc => None,
        }
    }

    fn handle(&self, request: Request) -> Response {
        let decoded = protocol::decode(&request.body);
        let result = match decoded.call {
            Ok((method, arguments)) => {
                log::debug!("rpc: {}: {method}", request.peer);
                self.call(&request, method, arguments).result
            }
            Err(reason) => {
                log::debug!("rpc: {}: {reason}", request.peer);
                Err(reason)
            }
        };
        Response::new(
            200,
            "application/json; charset=UTF-8",
            protocol::encode(result, decoded.tag),
        )
        .with_header(SESSION_ID_HEADER, self.session_id.clone())
    }
}
