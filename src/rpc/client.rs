//! A blocking client of the Transmission RPC, as btd's own CLI (`remote.rs`) speaks it to a
//! daemon: one `POST` of JSON per call (attohttpc), the `X-Transmission-Session-Id` handshake
//! (a 409 carries the id; the call is sent again once with it), Basic auth, bounded time
//! ([`CONNECT_TIMEOUT`], [`TIMEOUT`]) and a bounded answer ([`MAX_ANSWER_BYTES`]). No proxy is
//! used: the RPC is the daemon's own, normally on loopback.
//!
//! Every error names the address and says why in words a user can act on: nothing listening,
//! credentials missing or wrong, an address or host the daemon refuses, or the daemon's own
//! `result` when it is not `success` (that text alone: it is the daemon's answer).

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use attohttpc::{Method, RequestBuilder, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{RPC_PATH, SESSION_ID_HEADER, Secret};

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one exchange may take once connected: the daemon answers within its own 10 s bound
/// (`rpc::ANSWER_TIMEOUT`) once the request is in, and a 16 MiB body leaves time to send it.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an answer read: a `torrent-get` of thousands of torrents with their files fits.
pub const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// Where a daemon's RPC answers: the URL posted to, and the `HOST:PORT` errors name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    shown: String,
}

impl Endpoint {
    /// `http://HOST:PORT` (or `https://`), with a path or without (then [`RPC_PATH`]); a bare
    /// `HOST:PORT` means `http://HOST:PORT`.
    ///
    /// # Errors
    /// Why `text` is not such a URL (user info is refused: credentials go in `BTD_RPC_AUTH` or
    /// the config, not in a URL that process lists show).
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let text = text.trim();
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("http".to_owned(), text),
        };
        if scheme != "http" && scheme != "https" {
            return Err(format!("{text:?}: the RPC URL must be http:// or https://"));
        }
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(format!(
                "{text:?}: give credentials in BTD_RPC_AUTH=user:pass, not in the URL"
            ));
        }
        if authority.is_empty() || authority.starts_with(':') {
            return Err(format!("{text:?}: no host"));
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
        if scheme == "http" && !has_port {
            return Err(format!(
                "{text:?}: give the port, e.g. http://{authority}:9091"
            ));
        }
        let path = if path.is_empty() || path == "/" {
            RPC_PATH
        } else {
            path
        };
        let url = format!("{scheme}://{authority}{path}");
        attohttpc::get(&url)
            .try_prepare()
            .map_err(|e| format!("{text:?}: not a URL: {e}"))?;
        Ok(Endpoint {
            url,
            shown: authority.to_owned(),
        })
    }

    /// The RPC of a daemon listening on `listen` (its `[rpc] listen`): an unspecified address
    /// (`0.0.0.0`, `::`) is reached on loopback.
    pub fn of_listen(listen: SocketAddr) -> Endpoint {
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let addr = SocketAddr::new(ip, listen.port());
        Endpoint {
            url: format!("http://{addr}{RPC_PATH}"),
            shown: addr.to_string(),
        }
    }

    /// The URL posted to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `HOST:PORT`, as errors name it.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// A username and password for Basic auth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    /// `user:pass` (the password may hold colons), as `BTD_RPC_AUTH` holds them.
    ///
    /// # Errors
    /// When there is no colon or no username.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        match text.split_once(':') {
            Some((user, pass)) if !user.is_empty() => Ok(Credentials {
                username: user.to_owned(),
                password: Secret::new(pass),
            }),
            _ => Err("want user:pass".to_owned()),
        }
    }
}

/// Why a call got no `success`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientError {
    /// Nothing accepts connections there.
    #[error("no btd RPC at {addr}: is the daemon running with [rpc] enabled? ({reason})")]
    NoDaemon { addr: String, reason: String },
    /// 401 without credentials.
    #[error(
        "the btd RPC at {addr} wants credentials (401): set [rpc] username and password in the \
         config, or BTD_RPC_AUTH=user:pass"
    )]
    NeedsCredentials { addr: String },
    /// 401 with credentials.
    #[error("the btd RPC at {addr} refused the credentials of user {user:?} (401)")]
    BadCredentials { addr: String, user: String },
    /// Any other failure of the exchange: a timeout, a reset, an HTTP status, not JSON.
    #[error("btd RPC at {addr}: {reason}")]
    Failed { addr: String, reason: String },
    /// The daemon answered, and its `result` is not `success`: that text.
    #[error("{0}")]
    Refused(String),
}

/// A client of one daemon's RPC; it keeps the session id between calls.
pub struct RpcClient {
    endpoint: Endpoint,
    credentials: Option<Credentials>,
    session_id: Option<String>,
}

impl RpcClient {
    pub fn new(endpoint: Endpoint, credentials: Option<Credentials>) -> RpcClient {
        RpcClient {
            endpoint,
            credentials,
            session_id: None,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Calls `method` with `arguments` (a JSON object) and returns the answer's `arguments`.
    ///
    /// # Errors
    /// [`ClientError`]: `Refused` with the daemon's `result` when it is not `success`; the
    /// others name the address.
    pub fn call(
        &mut self,
        method: &str,
        arguments: Value,
    ) -> Result<Map<String, Value>, ClientError> {
        Ok(self.call_as(method, arguments)?.unwrap_or_default())
    }

    /// [`call`](Self::call), with the answer's `arguments` read straight into `T` (a
    /// `torrent-get` of 10,000 torrents as typed rows, not a tree of maps); `None` when the
    /// answer has none.
    ///
    /// # Errors
    /// As [`call`](Self::call); `Failed` also when the `arguments` are not a `T`.
    pub fn call_as<T: DeserializeOwned>(
        &mut self,
        method: &str,
        arguments: Value,
    ) -> Result<Option<T>, ClientError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "method": method,
            "arguments": arguments,
        }))
        .expect("a JSON value always serialises");
        let (mut status, mut answer) = self.post(&body)?;
        if status == StatusCode::CONFLICT {
            // The handshake: the 409 carries the session id to send.
            (status, answer) = self.post(&body)?;
        }
        let addr = || self.endpoint.shown.clone();
        let failed = |reason: String| ClientError::Failed {
            addr: addr(),
            reason,
        };
        match status {
            StatusCode::OK => {}
            StatusCode::CONFLICT => {
                return Err(failed(format!(
                    "409 twice: the {SESSION_ID_HEADER} handshake did not settle"
                )));
            }
            StatusCode::UNAUTHORIZED => {
                return Err(match &self.credentials {
                    None => ClientError::NeedsCredentials { addr: addr() },
                    Some(c) => ClientError::BadCredentials {
                        addr: addr(),
                        user: c.username.clone(),
                    },
                });
            }
            StatusCode::FORBIDDEN => {
                return Err(failed(
                    "403: the daemon does not take RPC calls from this address (its [rpc] \
                     allowed_ips)"
                        .into(),
                ));
            }
            StatusCode::MISDIRECTED_REQUEST => {
                return Err(failed(
                    "421: the daemon refuses this host name (its [rpc] allowed_hosts)".into(),
                ));
            }
            other => {
                let text = String::from_utf8_lossy(&answer);
                let text: String = text.trim().chars().take(200).collect();
                return Err(failed(format!("HTTP {other}: {text}")));
            }
        }
        // The result first, the arguments skipped: a refusal's arguments need not be a `T`.
        #[derive(Deserialize)]
        struct Head {
            result: Option<String>,
        }
        #[derive(Deserialize)]
        struct Body<T> {
            arguments: Option<T>,
        }
        let head: Head = serde_json::from_slice(&answer)
            .map_err(|e| failed(format!("the answer is not a JSON object: {e}")))?;
        match head.result {
            Some(result) if result == "success" => {
                let body: Body<T> = serde_json::from_slice(&answer)
                    .map_err(|e| failed(format!("the answer's arguments: {e}")))?;
                Ok(body.arguments)
            }
            Some(result) => Err(ClientError::Refused(result)),
            None => Err(failed("the answer has no `result`".into())),
        }
    }

    /// One POST; a 409's session id is kept for the next.
    fn post(&mut self, body: &[u8]) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let addr = &self.endpoint.shown;
        let mut request = RequestBuilder::try_new(Method::POST, &self.endpoint.url)
            .map_err(|e| ClientError::Failed {
                addr: addr.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .follow_redirects(false)
            .proxy_settings(attohttpc::ProxySettings::builder().build())
            .header(
                attohttpc::header::USER_AGENT,
                concat!("btd/", env!("CARGO_PKG_VERSION")),
            )
            .header(attohttpc::header::CONTENT_TYPE, "application/json");
        if let Some(id) = &self.session_id {
            request = request.header(SESSION_ID_HEADER, id.as_str());
        }
        if let Some(c) = &self.credentials {
            request = request.basic_auth(&c.username, Some(c.password.expose()));
        }
        let response = request
            .bytes(body)
            .send()
            .map_err(|e| transport_error(addr, &e))?;
        let (status, headers, reader) = response.split();
        if status == StatusCode::CONFLICT
            && let Some(id) = headers.get(SESSION_ID_HEADER).and_then(|v| v.to_str().ok())
        {
            self.session_id = Some(id.to_owned());
        }
        let mut answer = Vec::new();
        reader
            .take(MAX_ANSWER_BYTES + 1)
            .read_to_end(&mut answer)
            .map_err(|e| ClientError::Failed {
                addr: addr.clone(),
                reason: format!("reading the answer: {e}"),
            })?;
        if u64::try_from(answer.len()).map_or(true, |len| len > MAX_ANSWER_BYTES) {
            return Err(ClientError::Failed {
                addr: addr.clone(),
                reason: format!("an answer over {MAX_ANSWER_BYTES} bytes"),
            });
        }
        Ok((status, answer))
    }
}

/// An error of attohttpc's in words: refused connections mean no daemon there.
fn transport_error(addr: &str, e: &attohttpc::Error) -> ClientError {
    use std::io::ErrorKind;
    if let attohttpc::ErrorKind::Io(io) = e.kind() {
        match io.kind() {
            ErrorKind::ConnectionRefused => {
                return ClientError::NoDaemon {
                    addr: addr.to_owned(),
                    reason: io.to_string(),
                };
            }
            ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                return ClientError::Failed {
                    addr: addr.to_owned(),
                    reason: format!(
                        "no answer within {}s ({io})",
                        CONNECT_TIMEOUT.max(TIMEOUT).as_secs()
                    ),
                };
            }
            _ => {}
        }
    }
    ClientError::Failed {
        addr: addr.to_owned(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{RpcCall, RpcConfig, RpcServer, channel};
    use crossbeam_channel::Receiver;
    use serde_json::json;
    use std::net::TcpListener;

    /// Echoes `echo`'s arguments, refuses everything else with a result naming the method.
    fn fake_daemon(calls: Receiver<RpcCall>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for call in calls {
                if call.method == "echo" {
                    let args = call.arguments.clone();
                    call.answer(Ok(args.into()));
                } else {
                    let reason = format!("no such method: {}", call.method);
                    call.answer(Err(reason));
                }
            }
        })
    }

    fn server(auth: Option<(&str, &str)>) -> RpcServer {
        let mut config = RpcConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ..RpcConfig::default()
        };
        if let Some((user, pass)) = auth {
            config.username = user.into();
            config.password = Secret::new(pass);
        }
        let (tx, rx) = channel();
        fake_daemon(rx);
        RpcServer::start(config, tx).unwrap()
    }

    fn client(server: &RpcServer, auth: Option<&str>) -> RpcClient {
        RpcClient::new(
            Endpoint::of_listen(server.local_addr()),
            auth.map(|a| Credentials::parse(a).unwrap()),
        )
    }

    #[test]
    fn a_call_passes_the_session_handshake_and_returns_the_arguments() {
        let server = server(None);
        let mut c = client(&server, None);
        let args = c.call("echo", json!({"n": 1})).unwrap();
        assert_eq!(Value::Object(args), json!({"n": 1}));
        assert_eq!(c.session_id.as_deref(), Some(server.session_id()));
        // The id is kept: the next call needs no 409.
        assert_eq!(c.call("echo", json!({})).unwrap(), Map::new());
        assert_eq!(
            c.call("torrent-frob", json!({})),
            Err(ClientError::Refused("no such method: torrent-frob".into()))
        );
        server.stop();
    }

    #[test]
    fn credentials_missing_or_wrong_are_told_apart() {
        let server = server(Some(("admin", "pw:with:colons")));
        let addr = server.local_addr().to_string();
        assert_eq!(
            client(&server, None).call("echo", json!({})),
            Err(ClientError::NeedsCredentials { addr: addr.clone() })
        );
        assert_eq!(
            client(&server, Some("admin:wrong")).call("echo", json!({})),
            Err(ClientError::BadCredentials {
                addr,
                user: "admin".into()
            })
        );
        let mut good = client(&server, Some("admin:pw:with:colons"));
        assert!(good.call("echo", json!({})).is_ok());
        server.stop();
    }

    #[test]
    fn nothing_listening_says_no_daemon_at_that_address() {
        let free = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let err = RpcClient::new(Endpoint::of_listen(addr), None)
            .call("echo", json!({}))
            .unwrap_err();
        assert!(matches!(err, ClientError::NoDaemon { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "no btd RPC at {addr}: is the daemon running with [rpc] enabled?"
            )),
            "{text}"
        );
    }

    #[test]
    fn endpoints_from_urls_and_listen_addresses() {
        for (text, url, shown) in [
            (
                "http://127.0.0.1:9091",
                "http://127.0.0.1:9091/transmission/rpc",
                "127.0.0.1:9091",
            ),
            (
                "127.0.0.1:9091/",
                "http://127.0.0.1:9091/transmission/rpc",
                "127.0.0.1:9091",
            ),
            (
                "HTTP://[::1]:9091/transmission/rpc/",
                "http://[::1]:9091/transmission/rpc/",
                "[::1]:9091",
            ),
            (
                "https://box.lan:443/rpc",
                "https://box.lan:443/rpc",
                "box.lan:443",
            ),
            (
                "https://box.lan",
                "https://box.lan/transmission/rpc",
                "box.lan",
            ),
        ] {
            let e = Endpoint::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((e.url(), e.shown()), (url, shown), "{text}");
        }
        for (text, why) in [
            ("ftp://127.0.0.1:9091", "http:// or https://"),
            ("http://u:p@127.0.0.1:9091", "BTD_RPC_AUTH"),
            ("http://127.0.0.1", "give the port"),
            ("http://:9091", "no host"),
            ("", "no host"),
        ] {
            let e = Endpoint::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        let any: SocketAddr = "0.0.0.0:9091".parse().unwrap();
        assert_eq!(Endpoint::of_listen(any).shown(), "127.0.0.1:9091");
        let any6: SocketAddr = "[::]:9091".parse().unwrap();
        assert_eq!(
            Endpoint::of_listen(any6).url(),
            "http://[::1]:9091/transmission/rpc"
        );
        assert_eq!(Credentials::parse("u:").unwrap().password, Secret::new(""));
        assert!(Credentials::parse(":p").is_err() && Credentials::parse("up").is_err());
    }
}
