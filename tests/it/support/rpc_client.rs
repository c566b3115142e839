//! A small Transmission RPC client for the tests: JSON over HTTP/1.1 with the
//! `X-Transmission-Session-Id` handshake (a 409 carries the id; the call is sent again with it),
//! through attohttpc. It talks to btd and to transmission-daemon alike, so a test can send both
//! the same request. [`exchange`] sends bytes as they are, for the requests no client would
//! send (wrong credentials, foreign `Host`, no session id, huge or garbage bodies), from a
//! chosen source address.

use super::{SHORT, connect_from};
use serde_json::{Map, Value, json};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

/// An HTTP reply read whole: status, headers in order, body.
#[derive(Clone, Debug)]
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawReply {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the reply is not JSON ({e}): {self:?}"))
    }

    /// Parses a whole reply (status line, headers, body); `None` when `bytes` hold none.
    pub fn parse(bytes: &[u8]) -> Option<RawReply> {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Some(RawReply {
            status,
            headers,
            body: body.to_owned(),
        })
    }
}

/// Sends `request` as it is to `to` (from `from`, else the kernel's choice of address) and
/// reads the reply until the server closes, each step within [`SHORT`]. `Err` when the
/// connection fails or is closed without a reply (as a server closes what it has no room for).
pub fn exchange(
    from: Option<Ipv4Addr>,
    to: SocketAddr,
    request: &[u8],
) -> Result<RawReply, String> {
    let mut s = match from {
        Some(ip) => connect_from(ip, to),
        None => TcpStream::connect_timeout(&to, SHORT),
    }
    .map_err(|e| format!("connect to {to}: {e}"))?;
    s.set_read_timeout(Some(SHORT)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(SHORT))
        .map_err(|e| e.to_string())?;
    // The server may answer and close before taking all of it.
    let _ = s.write_all(request);
    let mut reply = Vec::new();
    let read = s.read_to_end(&mut reply);
    RawReply::parse(&reply).ok_or_else(|| match read {
        Ok(_) => format!("{to} closed the connection without a reply"),
        Err(e) => format!("{to}: no reply: {e}"),
    })
}

/// A `POST /transmission/rpc` request: `Host` naming `to`, `headers` (`Name: value`) and `body`.
pub fn rpc_post(to: SocketAddr, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "POST /transmission/rpc HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// One RPC endpoint (`http://ADDR/transmission/rpc`) and the session id it gave last.
pub struct RpcClient {
    url: String,
    session_id: String,
    auth: Option<(String, String)>,
}

impl RpcClient {
    pub fn new(addr: SocketAddr) -> RpcClient {
        RpcClient {
            url: format!("http://{addr}/transmission/rpc"),
            session_id: String::new(),
            auth: None,
        }
    }

    /// With HTTP Basic credentials.
    pub fn with_auth(mut self, user: &str, password: &str) -> RpcClient {
        self.auth = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Sends `{"method", "arguments", "tag"}` (no `arguments` when they are `null`, as some
    /// clients send `session-get`) and returns the whole reply object (`result`, `arguments`,
    /// `tag`). Panics on a transport error, a status other than 200 once the session id is
    /// known, or a body that is not a JSON object.
    pub fn call(&mut self, method: &str, arguments: Value) -> Value {
        let text = self.call_text(method, arguments);
        let reply: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("rpc {method}: the reply is not JSON ({e}): {text}"));
        assert!(reply.is_object(), "rpc {method}: {text}");
        reply
    }

    /// [`call`](Self::call)'s reply as the text the server sent (what a parser would hide:
    /// a key twice, the order of keys).
    pub fn call_text(&mut self, method: &str, arguments: Value) -> String {
        let mut body = json!({"method": method, "tag": 7});
        if !arguments.is_null() {
            body["arguments"] = arguments;
        }
        let body = serde_json::to_vec(&body).expect("encode the request");
        for _ in 0..3 {
            let mut req = attohttpc::post(&self.url)
                .header("X-Transmission-Session-Id", self.session_id.as_str())
                .header("Content-Type", "application/json")
                .timeout(SHORT);
            if let Some((user, password)) = &self.auth {
                req = req.basic_auth(user, Some(password));
            }
            let resp = req
                .bytes(body.clone())
                .send()
                .unwrap_or_else(|e| panic!("rpc {method} to {}: {e}", self.url));
            let status = resp.status().as_u16();
            if status == 409 {
                self.session_id = resp
                    .headers()
                    .get("X-Transmission-Session-Id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_else(|| panic!("rpc {method}: a 409 without a session id"))
                    .to_owned();
                continue;
            }
            let text = resp
                .text()
                .unwrap_or_else(|e| panic!("rpc {method}: reading the reply: {e}"));
            assert_eq!(status, 200, "rpc {method} to {}: {text}", self.url);
            return text;
        }
        panic!("rpc {method} to {}: 409 three times", self.url)
    }

    /// The `result` string of a call.
    pub fn result(&mut self, method: &str, arguments: Value) -> String {
        let reply = self.call(method, arguments);
        reply["result"]
            .as_str()
            .unwrap_or_else(|| panic!("rpc {method}: no result string: {reply}"))
            .to_owned()
    }

    /// The `arguments` of a call that must succeed.
    pub fn ok(&mut self, method: &str, arguments: Value) -> Map<String, Value> {
        let reply = self.call(method, arguments);
        assert_eq!(
            reply["result"], "success",
            "rpc {method} to {} failed: {reply}",
            self.url
        );
        match &reply["arguments"] {
            Value::Object(args) => args.clone(),
            other => panic!("rpc {method}: arguments are not an object: {other}"),
        }
    }

    /// `torrent-get` of `fields` for the torrents `ids` names: the list of torrent objects.
    pub fn torrents(&mut self, ids: Value, fields: &[&str]) -> Vec<Map<String, Value>> {
        let args = self.ok("torrent-get", json!({"ids": ids, "fields": fields}));
        match &args["torrents"] {
            Value::Array(list) => list
                .iter()
                .map(|t| t.as_object().cloned().expect("a torrent is an object"))
                .collect(),
            other => panic!("torrent-get: torrents is not a list: {other}"),
        }
    }
}
