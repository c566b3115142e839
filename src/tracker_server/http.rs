//! The tracker's HTTP front end: `GET /announce?...` and `GET /scrape?...`, one request per
//! connection, bencoded replies (lava_torrent's writer).
//!
//! [`Front`] is the tracker's handler on the process's HTTP server (`http_server`), which reads
//! the bounded request on the `tracker http N` workers. Parsing the tracker request is pure and
//! hand-written: the query string and percent-decoding (`info_hash` and `peer_id` are raw bytes,
//! one `%XX` per byte or the unreserved character itself; `+` is a plus, not a space). Headers
//! are ignored: the peer's IP is the connection's source address, whatever an `ip` parameter or
//! a proxy header says.
//!
//! Tracker-level errors (a bad `info_hash`, a missing `port`, a full tracker) are `200 OK` with a
//! `failure reason`, which is what clients show to their users; requests that are not tracker
//! requests at all get 400, 404, 405 or 431 (and, from the HTTP server, 411 or 413 for a body
//! sent chunked or over 8 KiB).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lava_torrent::bencode::BencodeElem;

use super::swarm::{Announce, AnnounceOutcome, Crypto, InfoHash, PeerId, ScrapeEntry};
use super::{DEFAULT_NUMWANT, Intervals, MAX_NUMWANT, Shared};
use crate::http_server::{self, Handler, HeadError, Response};
use crate::tracker::AnnounceEvent;
use crate::wire::compact;
use crate::{hex, percent};

/// A request head (request line and headers) longer than this is refused with 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// A client has this long to send its request head, and the reply this long to be written.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A tracker request, parsed from its request line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /announce?...`
    Announce(AnnounceQuery),
    /// `GET /scrape?info_hash=...` (repeated); empty means every torrent.
    Scrape(Vec<InfoHash>),
}

/// The parameters of an announce that the tracker uses. `uploaded` and `downloaded` are checked
/// but not kept; `ip`, `key`, `trackerid` and unknown parameters are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceQuery {
    /// `info_hash`, 20 bytes.
    pub info_hash: InfoHash,
    /// `peer_id`, 20 bytes.
    pub peer_id: PeerId,
    /// `port`, not 0.
    pub port: u16,
    /// `left`.
    pub left: u64,
    /// `event`; `empty` and `paused` (BEP 21) count as none.
    pub event: Option<AnnounceEvent>,
    /// `numwant`, defaulted and capped.
    pub numwant: usize,
    /// `compact` unless `compact=0`.
    pub compact: bool,
    /// `no_peer_id=1`: leave `peer id` out of dictionary peers.
    pub no_peer_id: bool,
    /// `requirecrypto=1`, `supportcrypto=1`, or neither (plaintext only).
    pub crypto: Crypto,
}

/// Why a request gets no tracker answer, and what status it gets instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// A tracker request the tracker will not serve: `200 OK` with this `failure reason`.
    #[error("{0}")]
    Failure(String),
    /// Not `/announce` or `/scrape`: 404.
    #[error("not found")]
    NotFound,
    /// Not `GET`: 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Not an HTTP/1.x request line: 400.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

impl HttpError {
    fn status(&self) -> u16 {
        match self {
            HttpError::Failure(_) => 200,
            HttpError::NotFound => 404,
            HttpError::MethodNotAllowed => 405,
            HttpError::BadRequest(_) => 400,
        }
    }
}

fn failure(reason: impl Into<String>) -> HttpError {
    HttpError::Failure(reason.into())
}

/// A query's `key=value` pairs, percent-decoded, in order (keys may repeat).
type Params = Vec<(Vec<u8>, Vec<u8>)>;

/// Splits and decodes a query string.
fn parse_query(query: &[u8]) -> Result<Params, HttpError> {
    query
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = match pair.iter().position(|&b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            match (percent::decode(key, false), percent::decode(value, false)) {
                (Some(k), Some(v)) => Ok((k, v)),
                _ => Err(failure("malformed percent-encoding in the query")),
            }
        })
        .collect()
}

/// Parses a request from its method and target (the HTTP server parsed the request line).
///
/// # Errors
/// See [`HttpError`]: another method or path, or a tracker request whose parameters are missing
/// or malformed.
pub fn parse_request(method: &str, target: &[u8]) -> Result<Request, HttpError> {
    if method != "GET" {
        return Err(HttpError::MethodNotAllowed);
    }
    let target = strip_scheme_and_authority(target);
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(at) => (&target[..at], &target[at + 1..]),
        None => (target, &[][..]),
    };
    match path {
        b"/announce" => parse_announce(&parse_query(query)?).map(Request::Announce),
        b"/scrape" => parse_scrape(&parse_query(query)?).map(Request::Scrape),
        _ => Err(HttpError::NotFound),
    }
}

/// `http://host:port/announce?...` (absolute form, as sent to proxies) -> `/announce?...`.
fn strip_scheme_and_authority(target: &[u8]) -> &[u8] {
    let Some(rest) = target
        .strip_prefix(b"http://")
        .or_else(|| target.strip_prefix(b"https://"))
    else {
        return target;
    };
    match rest.iter().position(|&b| b == b'/') {
        Some(at) => &rest[at..],
        None => b"/",
    }
}

fn first<'a>(params: &'a Params, key: &str) -> Option<&'a [u8]> {
    params
        .iter()
        .find(|(k, _)| k == key.as_bytes())
        .map(|(_, v)| v.as_slice())
}

fn twenty_bytes(key: &str, value: &[u8]) -> Result<[u8; 20], HttpError> {
    value
        .try_into()
        .map_err(|_| failure(format!("{key} must be 20 bytes, got {}", value.len())))
}

fn number<T: std::str::FromStr>(key: &str, value: &[u8]) -> Result<T, HttpError> {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            failure(format!(
                "{key} must be a number in range, got {:?}",
                String::from_utf8_lossy(value)
            ))
        })
}

fn parse_announce(params: &Params) -> Result<AnnounceQuery, HttpError> {
    let required =
        |key: &'static str| first(params, key).ok_or_else(|| failure(format!("missing {key}")));
    let info_hash = twenty_bytes("info_hash", required("info_hash")?)?;
    let peer_id = twenty_bytes("peer_id", required("peer_id")?)?;
    let port: u16 = number("port", required("port")?)?;
    if port == 0 {
        return Err(failure("port must not be 0"));
    }
    let left: u64 = number("left", required("left")?)?;
    for key in ["uploaded", "downloaded"] {
        if let Some(value) = first(params, key) {
            number::<u64>(key, value)?;
        }
    }
    let event = match first(params, "event").unwrap_or(b"") {
        b"" | b"empty" | b"paused" => None,
        b"started" => Some(AnnounceEvent::Started),
        b"completed" => Some(AnnounceEvent::Completed),
        b"stopped" => Some(AnnounceEvent::Stopped),
        other => {
            return Err(failure(format!(
                "unknown event {:?}",
                String::from_utf8_lossy(other)
            )));
        }
    };
    let numwant = match first(params, "numwant") {
        None => DEFAULT_NUMWANT,
        Some(value) => {
            let n: i64 = number("numwant", value)?;
            usize::try_from(n).map_or(DEFAULT_NUMWANT, |n| n.min(MAX_NUMWANT))
        }
    };
    Ok(AnnounceQuery {
        info_hash,
        peer_id,
        port,
        left,
        event,
        numwant,
        compact: first(params, "compact") != Some(b"0"),
        no_peer_id: first(params, "no_peer_id") == Some(b"1"),
        crypto: if first(params, "requirecrypto") == Some(b"1") {
            Crypto::Required
        } else if first(params, "supportcrypto") == Some(b"1") {
            Crypto::Supported
        } else {
            Crypto::Plaintext
        },
    })
}

fn parse_scrape(params: &Params) -> Result<Vec<InfoHash>, HttpError> {
    params
        .iter()
        .filter(|(k, _)| k == b"info_hash")
        .map(|(_, v)| twenty_bytes("info_hash", v))
        .collect()
}

fn dict(entries: Vec<(&str, BencodeElem)>) -> BencodeElem {
    BencodeElem::Dictionary(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    )
}

fn int(n: impl Into<i64>) -> BencodeElem {
    BencodeElem::Integer(n.into())
}

fn secs(d: Duration) -> BencodeElem {
    int(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `d14:failure reason...e`.
pub fn failure_body(reason: &str) -> Vec<u8> {
    dict(vec![("failure reason", reason.into())]).encode()
}

/// The bencoded announce reply: IPv4 peers in `peers` and IPv6 peers in `peers6` (compact), or
/// every peer as a dictionary in `peers` (`compact=0`). A client that encrypts also gets
/// `crypto_flags` with compact peers: a byte per entry of `peers`, 1 for a peer that requires
/// encryption (the MSE tracker extension; IPv6 peers have no such list).
fn announce_body(
    outcome: &AnnounceOutcome,
    query: &AnnounceQuery,
    intervals: Intervals,
) -> Vec<u8> {
    let mut entries = vec![
        ("interval", secs(intervals.interval)),
        ("min interval", secs(intervals.min_interval)),
        ("complete", int(outcome.complete)),
        ("incomplete", int(outcome.incomplete)),
    ];
    if query.compact {
        let (v4, v6) = compact::encode_peers(outcome.peers.iter().map(|peer| &peer.addr));
        if matches!(query.crypto, Crypto::Supported | Crypto::Required) {
            let flags = outcome
                .peers
                .iter()
                .filter(|peer| compact::Family::of(&peer.addr) == compact::Family::V4)
                .map(|peer| u8::from(peer.requires_crypto))
                .collect();
            entries.push(("crypto_flags", BencodeElem::Bytes(flags)));
        }
        entries.push(("peers", BencodeElem::Bytes(v4)));
        if !v6.is_empty() {
            entries.push(("peers6", BencodeElem::Bytes(v6)));
        }
    } else {
        let peers = outcome
            .peers
            .iter()
            .map(|peer| {
                let mut fields = vec![
                    ("ip", BencodeElem::String(peer.addr.ip().to_string())),
                    ("port", int(peer.addr.port())),
                ];
                if !query.no_peer_id {
                    fields.push(("peer id", BencodeElem::Bytes(peer.peer_id.to_vec())));
                }
                dict(fields)
            })
            .collect();
        entries.push(("peers", BencodeElem::List(peers)));
    }
    if !outcome.listed && query.event != Some(AnnounceEvent::Stopped) {
        entries.push((
            "warning message",
            "this torrent's swarm is full: you are not listed".into(),
        ));
    }
    dict(entries).encode()
}

/// BEP 48: `files`, keyed by raw info hash, each with `complete`, `downloaded`, `incomplete`.
fn scrape_body(entries: &[(InfoHash, ScrapeEntry)]) -> Vec<u8> {
    let files: HashMap<Vec<u8>, BencodeElem> = entries
        .iter()
        .map(|(hash, e)| {
            let counts = dict(vec![
                ("complete", int(e.complete)),
                ("downloaded", int(e.downloaded)),
                ("incomplete", int(e.incomplete)),
            ]);
            (hash.to_vec(), counts)
        })
        .collect();
    dict(vec![("files", BencodeElem::RawDictionary(files))]).encode()
}

/// Answers `request` from `source` against the shared swarms: the body of a `200 OK`.
fn answer(request: Request, source: SocketAddr, shared: &Shared, now: Instant) -> Vec<u8> {
    match request {
        Request::Announce(query) => {
            let announce = Announce {
                info_hash: query.info_hash,
                peer_id: query.peer_id,
                addr: SocketAddr::new(source.ip().to_canonical(), query.port),
                left: query.left,
                event: query.event,
                numwant: query.numwant,
                same_family_only: false,
                crypto: query.crypto,
            };
            match shared.announce(&announce, now) {
                Ok((outcome, intervals)) => {
                    log::trace!(
                        "tracker: {} announced {:?} for {}; peers given: {}",
                        announce.addr,
                        announce.event,
                        hex::encode(&announce.info_hash),
                        outcome.peers.len()
                    );
                    announce_body(&outcome, &query, intervals)
                }
                Err(refusal) => {
                    log::debug!("tracker: {source}: announce refused: {refusal}");
                    failure_body(&refusal.to_string())
                }
            }
        }
        Request::Scrape(hashes) => scrape_body(&shared.scrape(&hashes, now)),
    }
}

/// The tracker's handler on the HTTP server: tracker requests get `200 OK` with a bencoded
/// body (a `failure reason` when refused); anything else 400, 404, 405, 411, 413 or 431.
pub(super) struct Front {
    shared: Arc<Shared>,
}

impl Front {
    pub(super) fn new(shared: Arc<Shared>) -> Front {
        Front { shared }
    }
}

impl Handler for Front {
    fn handle(&self, request: http_server::Request) -> Response {
        let peer = request.peer;
        match parse_request(&request.method, &request.target) {
            Ok(parsed) => {
                let body = answer(parsed, peer, &self.shared, Instant::now());
                Response::text(200, body)
            }
            Err(e) => {
                log::debug!("tracker: {peer}: {e}");
                let body = match &e {
                    HttpError::Failure(reason) => failure_body(reason),
                    other => format!("{other}\n").into_bytes(),
                };
                Response::text(e.status(), body)
            }
        }
    }

    fn refused(&self, error: &HeadError) -> Response {
        let body = match error {
            HeadError::HeadTooLarge(_) => failure_body("request head too large"),
            HeadError::BadRequest(why) => format!("{}\n", HttpError::BadRequest(why)).into_bytes(),
            other => format!("{other}\n").into_bytes(),
        };
        Response::text(error.status(), body)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{HTTP_WORKERS, TrackerConfig, TrackerServer};
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, Ipv6Addr, TcpStream};

    /// A request head as the HTTP server and then the tracker parse it.
    fn parse_head(head: &[u8]) -> Result<Request, HttpError> {
        match http_server::parse_head(head) {
            Ok((method, target, _)) => parse_request(&method, &target),
            Err(HeadError::BadRequest(why)) => Err(HttpError::BadRequest(why)),
            Err(other) => panic!("{other}"),
        }
    }

    const HASH: &str = "%aa%bb%CC%dd%ee%ff%00%01%02%03%04%05%06%07%08%09%10%11%12%13";
    const HASH_BYTES: [u8; 20] = [
        0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x10, 0x11, 0x12, 0x13,
    ];

    fn head(target: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: tracker\r\n\r\n").into_bytes()
    }

    fn announce_target(extra: &str) -> String {
        format!("/announce?info_hash={HASH}&peer_id=-XX0001-abcdefghijkl&port=6881&left=0{extra}")
    }

    fn parse_failure(target: &str) -> String {
        match parse_head(&head(target)) {
            Err(HttpError::Failure(reason)) => reason,
            other => panic!("{target}: want a failure reason, got {other:?}"),
        }
    }

    #[test]
    fn parses_an_announce_with_raw_and_escaped_bytes() {
        // A peer id with unreserved characters sent raw and the rest escaped, as clients do.
        let target = "/announce?info_hash=%aa%bb%CC%dd%ee%ff%00%01%02%03%04%05%06%07%08%09%10%11%12%13\
                      &peer_id=-lt2080-%00%ff~.AbCdEfGh&port=51413&uploaded=10&downloaded=20\
                      &left=3000&event=started&numwant=80&compact=1&key=99&ip=10.9.9.9&corrupt=0";
        let Request::Announce(q) = parse_head(&head(target)).unwrap() else {
            panic!("not an announce");
        };
        assert_eq!(
            q,
            AnnounceQuery {
                info_hash: HASH_BYTES,
                peer_id: *b"-lt2080-\x00\xff~.AbCdEfGh",
                port: 51413,
                left: 3000,
                event: Some(AnnounceEvent::Started),
                numwant: 80,
                compact: true,
                no_peer_id: false,
                crypto: Crypto::Plaintext,
            }
        );
    }

    #[test]
    fn announce_defaults_caps_and_flags() {
        let parse = |extra: &str| match parse_head(&head(&announce_target(extra))).unwrap() {
            Request::Announce(q) => q,
            other => panic!("{other:?}"),
        };
        let q = parse("");
        assert_eq!(
            (q.numwant, q.compact, q.no_peer_id, q.event),
            (50, true, false, None)
        );
        assert_eq!(parse("&numwant=1000").numwant, 200);
        assert_eq!(parse("&numwant=0").numwant, 0);
        assert_eq!(parse("&numwant=-1").numwant, 50);
        assert!(!parse("&compact=0").compact);
        assert!(parse("&no_peer_id=1").no_peer_id);
        assert_eq!(parse("&event=empty").event, None);
        assert_eq!(parse("&event=paused").event, None);
        assert_eq!(
            parse("&event=completed").event,
            Some(AnnounceEvent::Completed)
        );
        assert_eq!(parse("&event=stopped").event, Some(AnnounceEvent::Stopped));
        assert_eq!(parse("").crypto, Crypto::Plaintext);
        assert_eq!(parse("&supportcrypto=1").crypto, Crypto::Supported);
        assert_eq!(
            parse("&supportcrypto=1&requirecrypto=1").crypto,
            Crypto::Required
        );
        assert_eq!(parse("&requirecrypto=1").crypto, Crypto::Required);
        assert_eq!(parse("&supportcrypto=0").crypto, Crypto::Plaintext);
    }

    #[test]
    fn malformed_announces_get_a_failure_reason() {
        let id = "peer_id=-XX0001-abcdefghijkl";
        let cases = [
            (format!("/announce?{id}&port=1&left=0"), "missing info_hash"),
            (
                format!("/announce?info_hash=abc&{id}&port=1&left=0"),
                "info_hash must be 20 bytes, got 3",
            ),
            (
                format!("/announce?info_hash={HASH}%14&{id}&port=1&left=0"),
                "info_hash must be 20 bytes, got 21",
            ),
            (
                format!("/announce?info_hash={HASH}&port=1&left=0"),
                "missing peer_id",
            ),
            (
                format!("/announce?info_hash={HASH}&peer_id=short&port=1&left=0"),
                "peer_id must be 20 bytes",
            ),
            (
                format!("/announce?info_hash={HASH}&{id}&left=0"),
                "missing port",
            ),
            (
                format!("/announce?info_hash={HASH}&{id}&port=&left=0"),
                "port must be a number",
            ),
            (
                format!("/announce?info_hash={HASH}&{id}&port=http&left=0"),
                "port must be a number",
            ),
            (
                format!("/announce?info_hash={HASH}&{id}&port=65536&left=0"),
                "port must be a number",
            ),
            (
                format!("/announce?info_hash={HASH}&{id}&port=0&left=0"),
                "port must not be 0",
            ),
            (
                format!("/announce?info_hash={HASH}&{id}&port=1"),
                "missing left",
            ),
            (
                format!("/announce?info_hash={HASH}&{id}&port=1&left=-1"),
                "left must be a number",
            ),
            (
                format!("/announce?info_hash={HASH}&{id}&port=1&left=1e9"),
                "left must be a number",
            ),
            (
                announce_target("&uploaded=1.5"),
                "uploaded must be a number",
            ),
            (
                announce_target("&downloaded=%31%"),
                "malformed percent-encoding",
            ),
            (announce_target("&numwant=many"), "numwant must be a number"),
            (announce_target("&event=finished"), "unknown event"),
        ];
        for (target, want) in cases {
            let reason = parse_failure(&target);
            assert!(reason.contains(want), "{target}: {reason:?} lacks {want:?}");
        }
    }

    #[test]
    fn parses_scrapes_with_none_one_or_many_hashes() {
        assert_eq!(
            parse_head(&head("/scrape")).unwrap(),
            Request::Scrape(vec![])
        );
        assert_eq!(
            parse_head(&head(&format!(
                "/scrape?info_hash={HASH}&info_hash={HASH}&peer_id=x"
            )))
            .unwrap(),
            Request::Scrape(vec![HASH_BYTES, HASH_BYTES])
        );
        assert!(parse_failure("/scrape?info_hash=%aa").contains("20 bytes"));
    }

    #[test]
    fn other_requests_get_http_errors() {
        let cases: [(&[u8], HttpError); 8] = [
            (b"GET / HTTP/1.1\r\n\r\n", HttpError::NotFound),
            (
                b"GET /announce/x?info_hash=a HTTP/1.1\r\n\r\n",
                HttpError::NotFound,
            ),
            (b"GET /favicon.ico HTTP/1.0\r\n\r\n", HttpError::NotFound),
            (
                b"POST /announce HTTP/1.1\r\n\r\n",
                HttpError::MethodNotAllowed,
            ),
            (
                b"GET /announce\r\n\r\n",
                HttpError::BadRequest("not an HTTP request line"),
            ),
            (
                b"GET /announce HTTP/2\r\n\r\n",
                HttpError::BadRequest("not HTTP/1.x"),
            ),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                HttpError::BadRequest("not an HTTP request line"),
            ),
            (b"", HttpError::BadRequest("not an HTTP request line")),
        ];
        for (head, want) in cases {
            assert_eq!(
                parse_head(head),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        // The absolute form a proxy would get, and a bare \n line end, both work.
        assert!(matches!(
            parse_head(
                format!(
                    "GET http://t.example:6969{} HTTP/1.0\n\n",
                    announce_target("")
                )
                .as_bytes()
            ),
            Ok(Request::Announce(_))
        ));
    }

    // ---- end to end, against a server on loopback ----

    fn start(config: impl FnOnce(&mut TrackerConfig)) -> TrackerServer {
        start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config)
    }

    fn start_on(listen: SocketAddr, config: impl FnOnce(&mut TrackerConfig)) -> TrackerServer {
        let mut c = TrackerConfig::with_interval(listen, Duration::from_secs(120));
        config(&mut c);
        TrackerServer::start(c).unwrap()
    }

    /// One raw HTTP/1.0 exchange: (status code, body).
    fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap();
        let split = reply
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no head end in {:?}", String::from_utf8_lossy(&reply)));
        let status = std::str::from_utf8(&reply[9..12]).unwrap().parse().unwrap();
        (status, reply[split + 4..].to_vec())
    }

    fn get(addr: SocketAddr, target: &str) -> (u16, Vec<u8>) {
        exchange(addr, &head(target))
    }

    fn decode(body: &[u8]) -> BencodeElem {
        let mut elems = BencodeElem::from_bytes(body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(body)));
        assert_eq!(elems.len(), 1);
        elems.remove(0)
    }

    fn key<'a>(elem: &'a BencodeElem, key: &[u8]) -> Option<&'a BencodeElem> {
        match elem {
            BencodeElem::Dictionary(d) => d.get(std::str::from_utf8(key).ok()?),
            BencodeElem::RawDictionary(d) => d.get(key),
            other => panic!("not a dictionary: {other}"),
        }
    }

    fn int_at(elem: &BencodeElem, k: &str) -> i64 {
        match key(elem, k.as_bytes()) {
            Some(BencodeElem::Integer(n)) => *n,
            other => panic!("{k}: {other:?}"),
        }
    }

    fn bytes_at(elem: &BencodeElem, k: &str) -> Vec<u8> {
        match key(elem, k.as_bytes()) {
            Some(BencodeElem::Bytes(b)) => b.clone(),
            Some(BencodeElem::String(s)) => s.clone().into_bytes(),
            other => panic!("{k}: {other:?}"),
        }
    }

    fn compact_v4(bytes: &[u8]) -> Vec<SocketAddr> {
        compact::decode_peers(compact::Family::V4, bytes).unwrap()
    }

    fn compact_v6(bytes: &[u8]) -> Vec<SocketAddr> {
        compact::decode_peers(compact::Family::V6, bytes).unwrap()
    }

    fn announce_as(port: u16, left: u64, extra: &str) -> String {
        format!(
            "/announce?info_hash={HASH}&peer_id=-XX0001-0000000{port:05}&port={port}&left={left}{extra}"
        )
    }

    #[test]
    fn compact_announces_over_http_find_each_other() {
        let server = start(|_| {});
        let addr = server.local_addr();
        let (status, body) = get(addr, &announce_as(7001, 100, "&event=started"));
        assert_eq!(status, 200);
        let first = decode(&body);
        assert_eq!(int_at(&first, "interval"), 120);
        assert_eq!(int_at(&first, "min interval"), 60);
        assert_eq!(
            (int_at(&first, "complete"), int_at(&first, "incomplete")),
            (0, 1)
        );
        assert_eq!(bytes_at(&first, "peers"), Vec::<u8>::new());
        assert!(key(&first, b"peers6").is_none());

        let reply = decode(&get(addr, &announce_as(7002, 0, "&compact=1")).1);
        assert_eq!(
            (int_at(&reply, "complete"), int_at(&reply, "incomplete")),
            (1, 1)
        );
        assert_eq!(
            compact_v4(&bytes_at(&reply, "peers")),
            vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 7001))]
        );
        // The leecher's next announce lists the seeder; `ip=` does not change its address.
        let reply = decode(&get(addr, &announce_as(7001, 100, "&ip=10.1.2.3")).1);
        assert_eq!(
            compact_v4(&bytes_at(&reply, "peers")),
            vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 7002))]
        );
        server.stop();
    }

    #[test]
    fn crypto_keys_keep_required_and_plaintext_peers_apart_and_flag_who_requires_it() {
        let server = start(|_| {});
        let addr = server.local_addr();
        let peer = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        get(
            addr,
            &announce_as(7001, 100, "&supportcrypto=1&requirecrypto=1"),
        );
        get(addr, &announce_as(7002, 100, ""));
        get(addr, &announce_as(7003, 100, "&supportcrypto=1"));
        // An encrypting client gets everyone it can talk to, flagged byte by byte.
        let reply = decode(&get(addr, &announce_as(7004, 100, "&supportcrypto=1")).1);
        let peers = compact_v4(&bytes_at(&reply, "peers"));
        let flags = bytes_at(&reply, "crypto_flags");
        assert_eq!(flags.len(), peers.len());
        let mut flagged: Vec<(SocketAddr, u8)> = peers.into_iter().zip(flags).collect();
        flagged.sort();
        assert_eq!(
            flagged,
            vec![(peer(7001), 1), (peer(7002), 0), (peer(7003), 0)]
        );
        // A plaintext-only client never gets the one that requires encryption, and no flags.
        let reply = decode(&get(addr, &announce_as(7002, 100, "")).1);
        let mut peers = compact_v4(&bytes_at(&reply, "peers"));
        peers.sort();
        assert_eq!(peers, vec![peer(7003), peer(7004)]);
        assert!(key(&reply, b"crypto_flags").is_none());
        // And one that requires encryption never gets the plaintext-only one.
        let reply = decode(&get(addr, &announce_as(7001, 100, "&requirecrypto=1")).1);
        let mut peers = compact_v4(&bytes_at(&reply, "peers"));
        peers.sort();
        assert_eq!(peers, vec![peer(7003), peer(7004)]);
        assert_eq!(bytes_at(&reply, "crypto_flags"), vec![0, 0]);
        server.stop();
    }

    #[test]
    fn dictionary_replies_carry_ip_port_and_peer_id() {
        let server = start(|_| {});
        let addr = server.local_addr();
        get(addr, &announce_as(7001, 100, ""));
        let reply = decode(&get(addr, &announce_as(7002, 100, "&compact=0")).1);
        let Some(BencodeElem::List(peers)) = key(&reply, b"peers") else {
            panic!("peers is not a list: {reply}");
        };
        assert_eq!(peers.len(), 1);
        assert_eq!(bytes_at(&peers[0], "ip"), b"127.0.0.1");
        assert_eq!(int_at(&peers[0], "port"), 7001);
        assert_eq!(bytes_at(&peers[0], "peer id"), b"-XX0001-000000007001");
        let reply = decode(&get(addr, &announce_as(7002, 100, "&compact=0&no_peer_id=1")).1);
        let Some(BencodeElem::List(peers)) = key(&reply, b"peers") else {
            panic!("peers is not a list: {reply}");
        };
        assert!(key(&peers[0], b"peer id").is_none());
        server.stop();
    }

    #[test]
    fn scrape_reports_counts_per_info_hash_and_all_without_one() {
        let server = start(|_| {});
        let addr = server.local_addr();
        get(addr, &announce_as(7001, 100, "&event=started"));
        get(addr, &announce_as(7001, 0, "&event=completed"));
        get(addr, &announce_as(7002, 5, ""));
        let other = "%ff".repeat(20);
        let check = |body: &[u8], want_other: bool| {
            let reply = decode(body);
            let files = key(&reply, b"files").expect("files");
            let entry = key(files, &HASH_BYTES).expect("our torrent");
            assert_eq!(
                (
                    int_at(entry, "complete"),
                    int_at(entry, "downloaded"),
                    int_at(entry, "incomplete")
                ),
                (1, 1, 1)
            );
            assert_eq!(key(files, &[0xff; 20]).is_some(), want_other);
        };
        check(
            &get(addr, &format!("/scrape?info_hash={HASH}&info_hash={other}")).1,
            false,
        );
        check(&get(addr, "/scrape").1, false);
        server.stop();
    }

    #[test]
    fn a_full_tracker_refuses_new_torrents_with_a_failure_reason() {
        let server = start(|c| c.max_torrents = 1);
        let addr = server.local_addr();
        get(addr, &announce_as(7001, 100, ""));
        let other = announce_as(7001, 100, "").replace(HASH, &"%ee".repeat(20));
        let (status, body) = get(addr, &other);
        assert_eq!(status, 200);
        let reason = bytes_at(&decode(&body), "failure reason");
        assert!(
            String::from_utf8_lossy(&reason).contains("tracker is full"),
            "{reason:?}"
        );
        server.stop();
    }

    #[test]
    fn garbage_gets_errors_and_the_server_keeps_serving() {
        let server = start(|_| {});
        let addr = server.local_addr();
        let (status, body) = get(addr, &announce_as(7001, 100, "").replace(HASH, "%aa"));
        assert_eq!(status, 200);
        assert_eq!(
            String::from_utf8_lossy(&body),
            "d14:failure reason33:info_hash must be 20 bytes, got 1e"
        );
        assert_eq!(get(addr, "/").0, 404);
        assert_eq!(exchange(addr, b"PUT /announce HTTP/1.1\r\n\r\n").0, 405);
        assert_eq!(exchange(addr, b"hello\r\n\r\n").0, 400);
        // A head over 8 KiB: 431, and the server still answers the next request.
        let huge = format!(
            "GET /announce HTTP/1.1\r\nX-Junk: {}\r\n\r\n",
            "j".repeat(64 * 1024)
        );
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(huge.as_bytes()); // the server may close before taking it all
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        assert!(
            reply.starts_with(b"HTTP/1.1 431 "),
            "{:?}",
            String::from_utf8_lossy(&reply)
        );
        assert_eq!(get(addr, &announce_as(7001, 100, "")).0, 200);
        server.stop();
    }

    #[test]
    fn silent_connections_are_dropped_after_the_timeout_and_others_wait_their_turn() {
        let server = start(|_| {});
        let addr = server.local_addr();
        // Occupy every worker with a connection that never sends a byte.
        let idle: Vec<TcpStream> = (0..HTTP_WORKERS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        // This one waits in the queue until a worker gives up on an idle connection.
        let (status, _) = get(addr, &announce_as(7001, 100, ""));
        let waited = started.elapsed();
        assert_eq!(status, 200);
        assert!(
            waited > REQUEST_TIMEOUT - Duration::from_secs(1) && waited < REQUEST_TIMEOUT * 2,
            "waited {waited:?}"
        );
        for mut s in idle {
            s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            assert_eq!(s.read(&mut [0u8; 16]).unwrap(), 0, "closed by the server");
        }
        server.stop();
    }

    #[test]
    fn ipv6_peers_come_in_peers6_and_dual_stack_sources_are_plain_ipv4() {
        // Listening on [::] takes IPv4 too (as IPv4-mapped addresses, stored as plain IPv4).
        let server = start_on(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)), |_| {});
        let port = server.local_addr().port();
        let via4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let via6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        get(via6, &announce_as(7006, 100, ""));
        let reply = decode(&get(via4, &announce_as(7004, 100, "")).1);
        assert_eq!(bytes_at(&reply, "peers"), Vec::<u8>::new());
        assert_eq!(
            compact_v6(&bytes_at(&reply, "peers6")),
            vec![SocketAddr::from((Ipv6Addr::LOCALHOST, 7006))]
        );
        let reply = decode(&get(via6, &announce_as(7006, 100, "")).1);
        assert_eq!(
            compact_v4(&bytes_at(&reply, "peers")),
            vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 7004))]
        );
        let reply = decode(&get(via6, &announce_as(7006, 100, "&compact=0")).1);
        let Some(BencodeElem::List(peers)) = key(&reply, b"peers") else {
            panic!("{reply}");
        };
        assert_eq!(bytes_at(&peers[0], "ip"), b"127.0.0.1");
        server.stop();

        // And a tracker on [::1] alone.
        let server = start_on(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)), |_| {});
        let addr = server.local_addr();
        get(addr, &announce_as(7001, 0, ""));
        let reply = decode(&get(addr, &announce_as(7002, 100, "&compact=0")).1);
        let Some(BencodeElem::List(peers)) = key(&reply, b"peers") else {
            panic!("{reply}");
        };
        assert_eq!(bytes_at(&peers[0], "ip"), b"::1");
        server.stop();
    }
}
