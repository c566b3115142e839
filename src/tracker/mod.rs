//! Tracker client: the types of an announce and a scrape, the pure parts (reply parsing, URL
//! building, BEP 12 tiers), and below them the transports ([`http`] for BEP 3 / BEP 48, [`udp`]
//! for BEP 15) and the announce pool ([`announcer`]), which publishes the swarm's size and
//! each tracker's last announce outcome in [`SwarmStats`].
//!
//! This module itself opens no sockets and starts no threads: everything here is a function of its
//! arguments, so it is tested with hand-typed reply bodies. Tracker replies come from strangers:
//! nothing here panics on them; garbage becomes [`TrackerError::Malformed`].

pub mod announcer;
pub mod http;
pub mod udp;

use crate::peer::mse::Encryption;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use lava_torrent::bencode::BencodeElem;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::bencode::{self, WalkError};
use crate::percent;
use crate::wire::compact::{self, Family};

/// The `event` of an announce (BEP 3). Regular re-announces carry none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceEvent {
    /// The first announce of a session.
    Started,
    /// The download just finished; sent once.
    Completed,
    /// We are shutting down.
    Stopped,
}

impl AnnounceEvent {
    /// The value of the `event` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            AnnounceEvent::Started => "started",
            AnnounceEvent::Completed => "completed",
            AnnounceEvent::Stopped => "stopped",
        }
    }
}

/// What we tell a tracker in one announce.
#[derive(Clone, Debug)]
pub struct AnnounceRequest {
    /// The torrent's info hash (20 raw bytes).
    pub info_hash: [u8; 20],
    /// Our peer id (20 raw bytes).
    pub peer_id: [u8; 20],
    /// The port we accept peer connections on.
    pub port: u16,
    /// Payload bytes uploaded this session.
    pub uploaded: u64,
    /// Payload bytes downloaded this session.
    pub downloaded: u64,
    /// Payload bytes we still miss.
    pub left: u64,
    /// The event, or `None` for a regular re-announce.
    pub event: Option<AnnounceEvent>,
    /// How many peers we would like.
    pub numwant: u32,
    /// The `tracker id` this tracker gave us earlier, sent back as `trackerid`.
    pub tracker_id: Option<Vec<u8>>,
    /// A random number that stays the same for the session, so a UDP tracker can tell us apart
    /// from another client behind the same address (BEP 15 `key`). The HTTP query does not carry
    /// it.
    pub key: u32,
    /// Our addresses of each family, told to HTTP trackers (BEP 7 `ipv4=`, `ipv6=`).
    pub addrs: OurAddrs,
    /// Our encryption mode, told to HTTP trackers: `supportcrypto=1`, and `requirecrypto=1`
    /// when we take encrypted peers only (trackers that know the keys then list us only to
    /// peers that encrypt).
    pub encryption: Encryption,
}

/// Our addresses of each family that an HTTP announce carries (BEP 7 `ipv4=` and `ipv6=`), so
/// that a tracker reached over one family also lists us under the other. Set only while we
/// listen on both families; UDP announces (BEP 15) do not carry them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OurAddrs {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl OurAddrs {
    /// From the address we listen on and the addresses the system would send from to the
    /// internet (`v4`, `v6`, when it has a route): none unless `listen` is the IPv6 wildcard
    /// (which listens on both families), and of those only globally routable ones: a loopback,
    /// private, link-local or unique-local address means nothing to a tracker elsewhere.
    pub fn from_route_sources(listen: IpAddr, v4: Option<IpAddr>, v6: Option<IpAddr>) -> Self {
        if listen != IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
            return Self::default();
        }
        let ipv4 = match v4 {
            Some(IpAddr::V4(ip))
                if !(ip.is_loopback()
                    || ip.is_private()
                    || ip.is_link_local()
                    || ip.is_unspecified()
                    || ip.is_broadcast()
                    || ip.is_multicast()) =>
            {
                Some(ip)
            }
            _ => None,
        };
        let ipv6 = match v6 {
            Some(IpAddr::V6(ip))
                if !(ip.is_loopback()
                    || ip.is_unspecified()
                    || ip.is_multicast()
                    || ip.is_unicast_link_local()
                    || ip.is_unique_local()
                    || ip.to_ipv4_mapped().is_some()) =>
            {
                Some(ip)
            }
            _ => None,
        };
        Self { ipv4, ipv6 }
    }
}

/// A tracker's successful reply, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// When to announce again (`interval`, required).
    pub interval: Duration,
    /// The tracker's `min interval`: never announce sooner than this.
    pub min_interval: Option<Duration>,
    /// `tracker id`: send it back on later announces to this tracker.
    pub tracker_id: Option<Vec<u8>>,
    /// Seeders (`complete`), when the tracker says.
    pub complete: Option<u32>,
    /// Leechers (`incomplete`), when the tracker says.
    pub incomplete: Option<u32>,
    /// `warning message`: the announce worked, but the operator should see this.
    pub warning: Option<String>,
    /// Peers from `peers` (compact or dictionaries) then `peers6`, without duplicates, port 0 or
    /// unspecified addresses.
    pub peers: Vec<SocketAddr>,
    /// The compact IPv4 peers whose `crypto_flags` byte is 1: the tracker says they take
    /// encrypted connections only (the MSE tracker extension). Empty without `crypto_flags`, or
    /// when it does not have a byte per entry of `peers`.
    pub requires_encryption: Vec<SocketAddr>,
}

/// What an announcer hands its torrent from one reply: the peers, and those of them the tracker
/// says take encrypted connections only (dialled encrypted first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackerPeers {
    /// Every peer of the reply.
    pub peers: Vec<SocketAddr>,
    /// The ones flagged in `crypto_flags`.
    pub requires_encryption: Vec<SocketAddr>,
}

/// Why an announce or a scrape failed. Every variant names the tracker; the announcer backs off
/// and retries.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// The tracker answered with a `failure reason` (HTTP) or an error reply (UDP action 3).
    #[error("tracker {url}: refused the request: {reason}")]
    Failure {
        /// The tracker's announce URL.
        url: String,
        /// The tracker's `failure reason` or error message, as text.
        reason: String,
    },
    /// The exchange failed: name resolution, connect, TLS, I/O, a non-200 status, an oversized
    /// body, or (UDP) no answer before the deadline.
    #[error("tracker {url}: request failed: {error}")]
    Request {
        /// The tracker's announce URL.
        url: String,
        /// What went wrong, as text.
        error: String,
    },
    /// The tracker answered, but not with a valid announce reply.
    #[error("tracker {url}: malformed reply: {reason}")]
    Malformed {
        /// The tracker's announce URL.
        url: String,
        /// What is wrong with the reply.
        reason: String,
    },
    /// The URL's scheme is not one we speak (anything but `http://`, `https://` and `udp://`).
    #[error("tracker {url}: unsupported scheme")]
    UnsupportedScheme {
        /// The tracker's announce URL.
        url: String,
    },
    /// An HTTP tracker whose announce URL has no scrape URL (BEP 48: its last path component
    /// does not start with `announce`).
    #[error("tracker {url}: has no scrape URL")]
    NoScrape {
        /// The tracker's announce URL.
        url: String,
    },
}

impl TrackerError {
    /// The announce URL of the tracker that failed.
    pub fn url(&self) -> &str {
        match self {
            TrackerError::Failure { url, .. }
            | TrackerError::Request { url, .. }
            | TrackerError::Malformed { url, .. }
            | TrackerError::UnsupportedScheme { url }
            | TrackerError::NoScrape { url } => url,
        }
    }
}

/// A bencoded dictionary as lava_torrent hands it over: keyed by `String`, or by raw bytes when
/// some key is not UTF-8.
#[derive(Clone, Copy)]
enum Dict<'a> {
    Text(&'a HashMap<String, BencodeElem>),
    Raw(&'a HashMap<Vec<u8>, BencodeElem>),
}

impl<'a> Dict<'a> {
    fn from_elem(elem: &'a BencodeElem) -> Option<Self> {
        match elem {
            BencodeElem::Dictionary(map) => Some(Dict::Text(map)),
            BencodeElem::RawDictionary(map) => Some(Dict::Raw(map)),
            _ => None,
        }
    }

    fn get(self, key: &str) -> Option<&'a BencodeElem> {
        self.get_bytes(key.as_bytes())
    }

    /// Looks up a key given as raw bytes (a `files` dictionary is keyed by raw info hashes).
    fn get_bytes(self, key: &[u8]) -> Option<&'a BencodeElem> {
        match self {
            Dict::Text(map) => map.get(std::str::from_utf8(key).ok()?),
            Dict::Raw(map) => map.get(key),
        }
    }
}

/// The raw bytes of a bencoded string. lava_torrent yields `String` for UTF-8 strings and `Bytes`
/// otherwise, so a compact peer list can arrive as either.
fn byte_string(elem: &BencodeElem) -> Option<&[u8]> {
    match elem {
        BencodeElem::String(s) => Some(s.as_bytes()),
        BencodeElem::Bytes(b) => Some(b),
        _ => None,
    }
}

fn text(elem: &BencodeElem) -> Option<String> {
    byte_string(elem).map(|b| String::from_utf8_lossy(b).into_owned())
}

fn non_negative(elem: &BencodeElem) -> Option<u64> {
    match elem {
        BencodeElem::Integer(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// Parses a bencoded announce reply.
///
/// `failure reason` wins over every other key. `interval` is required and must be a non-negative
/// integer. `peers` may be compact (6-byte entries: IPv4 and big-endian port) or a list of
/// dictionaries with `ip` (IPv4 or IPv6 text; host names are skipped) and `port`; `peers6` holds
/// 18-byte entries. A trailing partial compact entry, entries with port 0 or an unspecified address,
/// and list entries that are not valid dictionaries are skipped, so one bad entry does not cost the
/// rest. Optional keys of the wrong type are ignored. Trailing ASCII whitespace after the
/// dictionary is tolerated.
///
/// # Errors
/// [`TrackerError::Failure`] when the reply has a `failure reason`; [`TrackerError::Malformed`]
/// when the body is not one bencoded dictionary (lava_torrent also refuses unsorted keys, and we
/// refuse nesting deeper than 16 levels), `interval` is missing or negative, or `peers` / `peers6`
/// is neither a string nor a list.
pub fn parse_announce_response(url: &str, body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    let malformed = |reason: String| TrackerError::Malformed {
        url: url.to_owned(),
        reason,
    };
    let root = decode_reply(url, body)?;
    let dict = reply_dict(url, &root)?;

    let interval = match dict.get("interval") {
        None => return Err(malformed("no interval".to_owned())),
        Some(elem) => non_negative(elem)
            .ok_or_else(|| malformed(format!("interval is not a non-negative integer: {elem}")))?,
    };
    let count = |key: &str| {
        dict.get(key)
            .and_then(non_negative)
            .and_then(|n| u32::try_from(n).ok())
    };

    let mut peers = Vec::new();
    let requires_encryption = match (
        dict.get("peers").and_then(byte_string),
        dict.get("crypto_flags").and_then(byte_string),
    ) {
        (Some(v4), Some(flags)) if v4.len() == flags.len() * Family::V4.peer_len() => {
            compact::whole_peers(Family::V4, v4)
                .zip(flags)
                .filter(|(_, flag)| **flag == 1)
                .map(|(addr, _)| addr)
                .collect()
        }
        _ => Vec::new(),
    };
    if let Some(elem) = dict.get("peers") {
        parse_peers(elem, Family::V4, &mut peers)
            .map_err(|reason| malformed(format!("peers: {reason}")))?;
    }
    if let Some(elem) = dict.get("peers6") {
        parse_peers(elem, Family::V6, &mut peers)
            .map_err(|reason| malformed(format!("peers6: {reason}")))?;
    }
    retain_dialable(&mut peers);

    Ok(AnnounceResponse {
        interval: Duration::from_secs(interval),
        min_interval: dict
            .get("min interval")
            .and_then(non_negative)
            .map(Duration::from_secs),
        tracker_id: dict
            .get("tracker id")
            .and_then(byte_string)
            .filter(|id| !id.is_empty())
            .map(<[u8]>::to_vec),
        complete: count("complete"),
        incomplete: count("incomplete"),
        warning: dict.get("warning message").and_then(text),
        peers,
        requires_encryption,
    })
}

/// Decodes a reply body that must be exactly one bencoded value (trailing ASCII whitespace
/// tolerated), refusing hostile nesting before lava_torrent sees it.
fn decode_reply(url: &str, body: &[u8]) -> Result<BencodeElem, TrackerError> {
    let malformed = |reason: String| TrackerError::Malformed {
        url: url.to_owned(),
        reason,
    };
    let body = body.trim_ascii_end();
    check_nesting(body).map_err(|reason| malformed(format!("not bencode: {reason}")))?;
    let mut elems =
        BencodeElem::from_bytes(body).map_err(|e| malformed(format!("not bencode: {e}")))?;
    match elems.len() {
        0 => Err(malformed("empty body".to_owned())),
        1 => Ok(elems.remove(0)),
        _ => Err(malformed("data after the reply dictionary".to_owned())),
    }
}

/// The reply's top-level dictionary, or its `failure reason` as [`TrackerError::Failure`].
fn reply_dict<'a>(url: &str, root: &'a BencodeElem) -> Result<Dict<'a>, TrackerError> {
    let dict = Dict::from_elem(root).ok_or_else(|| TrackerError::Malformed {
        url: url.to_owned(),
        reason: "reply is not a dictionary".to_owned(),
    })?;
    if let Some(reason) = dict.get("failure reason") {
        return Err(TrackerError::Failure {
            url: url.to_owned(),
            reason: text(reason).unwrap_or_else(|| reason.to_string()),
        });
    }
    Ok(dict)
}

/// The deepest nesting of lists and dictionaries we hand to lava_torrent. An announce reply needs 3
/// (reply, peer list, peer).
const MAX_NESTING: u32 = 16;

/// Refuses a body nested deeper than [`MAX_NESTING`], or holding a byte that cannot start a
/// bencode token, before lava_torrent sees it.
///
/// lava_torrent's decoder recurses once per nested list or dictionary, so a reply of a few thousand
/// `l` bytes would overflow the announcer's stack and abort the whole daemon. [`bencode::walk`]
/// builds nothing and skips integers and strings exactly as lava_torrent does, so its depth at
/// each token is at least lava_torrent's recursion depth there. Each value of the body is walked
/// (lava_torrent reads them all before we refuse the second); a body cut short is left to
/// lava_torrent to refuse, since everything up to the cut was within the limit.
fn check_nesting(body: &[u8]) -> Result<(), String> {
    let mut pos = 0;
    while pos < body.len() {
        match bencode::walk(body, pos, MAX_NESTING) {
            Ok(end) => pos = end,
            Err(WalkError::Truncated) => break,
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Appends the peers of a `peers` or `peers6` value to `out`. Unusable entries are skipped here or
/// by the caller; only a value of the wrong type is an error.
fn parse_peers(
    elem: &BencodeElem,
    family: Family,
    out: &mut Vec<SocketAddr>,
) -> Result<(), String> {
    if let Some(bytes) = byte_string(elem) {
        // A trailing partial entry is ignored: the whole entries before it are still good.
        // Port 0, unspecified addresses and repeats go in `retain_dialable`.
        out.extend(compact::whole_peers(family, bytes));
        return Ok(());
    }
    match elem {
        BencodeElem::List(list) => {
            out.extend(list.iter().filter_map(dict_peer));
            Ok(())
        }
        other => Err(format!("neither a string nor a list: {other}")),
    }
}

/// Drops peers with port 0 or an unspecified address, and repeats (the first one stays).
pub(crate) fn retain_dialable(peers: &mut Vec<SocketAddr>) {
    let mut seen = HashSet::new();
    peers.retain(|addr| addr.port() != 0 && !addr.ip().is_unspecified() && seen.insert(*addr));
}

/// One peer of the non-compact form: a dictionary with `ip` (text) and `port`.
fn dict_peer(elem: &BencodeElem) -> Option<SocketAddr> {
    let dict = Dict::from_elem(elem)?;
    let ip = text(dict.get("ip")?)?;
    let ip = ip.trim();
    let ip = ip
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(ip);
    let ip = ip.parse::<IpAddr>().ok()?.to_canonical();
    let port = u16::try_from(non_negative(dict.get("port")?)?).ok()?;
    Some(SocketAddr::new(ip, port))
}

/// The announce URL: `base` with the announce query appended.
///
/// The query is `info_hash` and `peer_id` (percent-encoded byte by byte), `port`, `uploaded`,
/// `downloaded`, `left`, `compact=1`, `numwant`, `supportcrypto=1` (and `requirecrypto=1` in
/// `required` mode), `event` (omitted when `None`), `trackerid` (when known) and BEP 7's
/// `ipv4`/`ipv6`. It starts with `&` when `base` already has a query (a private tracker's passkey),
/// with `?` otherwise; a `#fragment` on `base` is dropped.
pub fn announce_url(base: &str, req: &AnnounceRequest) -> String {
    let base = base.split_once('#').map_or(base, |(before, _)| before);
    let mut url = String::with_capacity(base.len() + 200);
    url.push_str(base);
    if !base.contains('?') {
        url.push('?');
    } else if !(base.ends_with('?') || base.ends_with('&')) {
        url.push('&');
    }
    url.push_str("info_hash=");
    percent::encode_into(&mut url, &req.info_hash);
    url.push_str("&peer_id=");
    percent::encode_into(&mut url, &req.peer_id);
    write!(
        url,
        "&port={}&uploaded={}&downloaded={}&left={}&compact=1&numwant={}",
        req.port, req.uploaded, req.downloaded, req.left, req.numwant
    )
    .expect("writing to a String cannot fail");
    url.push_str("&supportcrypto=1");
    if req.encryption == Encryption::Required {
        url.push_str("&requirecrypto=1");
    }
    if let Some(event) = req.event {
        url.push_str("&event=");
        url.push_str(event.as_str());
    }
    if let Some(id) = &req.tracker_id {
        url.push_str("&trackerid=");
        percent::encode_into(&mut url, id);
    }
    if let Some(ip) = req.addrs.ipv4 {
        write!(url, "&ipv4={ip}").expect("writing to a String cannot fail");
    }
    if let Some(ip) = req.addrs.ipv6 {
        url.push_str("&ipv6=");
        percent::encode_into(&mut url, ip.to_string().as_bytes());
    }
    url
}

/// A tracker's counts for one torrent, from a scrape (BEP 48, BEP 15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrapeCounts {
    /// Peers with the whole torrent (`complete`).
    pub seeders: u32,
    /// Peers still downloading (`incomplete`).
    pub leechers: u32,
    /// How many times the download was completed (`downloaded`), when the tracker says.
    pub completed: Option<u32>,
}

/// The size of a torrent's swarm as its trackers last reported it, and how each tracker last
/// answered an announce, published by the announce pool for status displays.
///
/// Read `known` first (`Acquire`): it is set (`Release`) after the counts it covers, and stays
/// false until some tracker has reported any. Each count is written on its own (`Relaxed`), so a
/// reader may see one count from a newer report than another.
#[derive(Debug, Default)]
pub struct SwarmStats {
    /// Seeders (`complete`), the latest count any tracker gave.
    pub seeders: AtomicU32,
    /// Leechers (`incomplete`), the latest count any tracker gave.
    pub leechers: AtomicU32,
    /// Completed downloads (`downloaded`), the latest count a scrape gave; 0 until one did.
    pub completed: AtomicU32,
    /// Whether any count above comes from a tracker.
    pub known: AtomicBool,
    /// Each tracker's last announce outcome, in the order they were first tried. Held only to
    /// replace one entry or to copy them, never across I/O.
    pub outcomes: parking_lot::Mutex<Vec<AnnounceOutcome>>,
}

/// How one tracker last answered an announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceOutcome {
    /// The tracker's announce URL.
    pub url: String,
    /// When, in seconds since the Unix epoch.
    pub at_unix: u64,
    pub result: Result<(), AnnounceFailure>,
}

/// Why an announce got no usable answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnnounceFailure {
    /// The tracker refused it with a `failure reason` (HTTP) or an error reply (UDP):
    /// "unregistered torrent", "torrent not found". The tracker's words.
    Refused(String),
    /// No answer, an HTTP error status or a reply that is not one: the error.
    Failed(String),
}

impl AnnounceFailure {
    /// The failure of `err`: a refusal for [`TrackerError::Failure`], else what went wrong.
    pub fn of(err: &TrackerError) -> Self {
        match err {
            TrackerError::Failure { reason, .. } => AnnounceFailure::Refused(reason.clone()),
            other => AnnounceFailure::Failed(other.to_string()),
        }
    }
}

impl SwarmStats {
    /// Stores the counts an announce reply gave, when it gave any.
    pub fn on_announced(&self, seeders: Option<u32>, leechers: Option<u32>) {
        if let Some(n) = seeders {
            self.seeders.store(n, Ordering::Relaxed);
        }
        if let Some(n) = leechers {
            self.leechers.store(n, Ordering::Relaxed);
        }
        if seeders.is_some() || leechers.is_some() {
            self.known.store(true, Ordering::Release);
        }
    }

    /// Stores how the tracker at `url` answered an announce at `at_unix`, in place of its
    /// previous outcome.
    pub fn on_outcome(&self, url: &str, at_unix: u64, result: Result<(), AnnounceFailure>) {
        let outcome = AnnounceOutcome {
            url: url.to_owned(),
            at_unix,
            result,
        };
        let mut outcomes = self.outcomes.lock();
        match outcomes.iter_mut().find(|o| o.url == url) {
            Some(old) => *old = outcome,
            None => outcomes.push(outcome),
        }
    }

    /// A copy of each tracker's last announce outcome.
    pub fn outcomes(&self) -> Vec<AnnounceOutcome> {
        self.outcomes.lock().clone()
    }

    /// The first tracker whose last answer was a refusal, and its words, if one was.
    pub fn refusal(&self) -> Option<(String, String)> {
        self.outcomes.lock().iter().find_map(|o| match &o.result {
            Err(AnnounceFailure::Refused(reason)) => Some((o.url.clone(), reason.clone())),
            _ => None,
        })
    }

    /// Stores the counts of a scrape.
    pub fn on_scraped(&self, counts: ScrapeCounts) {
        self.seeders.store(counts.seeders, Ordering::Relaxed);
        self.leechers.store(counts.leechers, Ordering::Relaxed);
        if let Some(n) = counts.completed {
            self.completed.store(n, Ordering::Relaxed);
        }
        self.known.store(true, Ordering::Release);
    }
}

/// The scrape URL of an HTTP(S) announce URL for one torrent (BEP 48), or `None` when it has none.
///
/// The last component of the URL's path must start with `announce`; that word becomes `scrape`
/// (`/x/announce.php?passkey=k` -> `/x/scrape.php?passkey=k`), and `info_hash` (percent-encoded
/// byte by byte) is appended to the query. A `#fragment` is dropped.
pub fn scrape_url(base: &str, info_hash: &[u8; 20]) -> Option<String> {
    let base = base.split_once('#').map_or(base, |(before, _)| before);
    let (before_query, query) = match base.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (base, None),
    };
    let after_scheme = before_query.find("://").map_or(0, |i| i + 3);
    // The path starts at the first `/` after the authority; without one there is no component.
    let path_start = after_scheme + before_query[after_scheme..].find('/')?;
    let last_slash = path_start + before_query[path_start..].rfind('/')?;
    let component = &before_query[last_slash + 1..];
    let rest = component.strip_prefix("announce")?;
    let mut url = String::with_capacity(base.len() + 80);
    url.push_str(&before_query[..=last_slash]);
    url.push_str("scrape");
    url.push_str(rest);
    url.push('?');
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        url.push_str(query);
        if !query.ends_with('&') {
            url.push('&');
        }
    }
    url.push_str("info_hash=");
    percent::encode_into(&mut url, info_hash);
    Some(url)
}

/// Parses a bencoded scrape reply (BEP 48) and returns the counts for `info_hash`.
///
/// The reply is a dictionary whose `files` dictionary is keyed by raw 20-byte info hashes; our
/// entry needs `complete` and `incomplete`, and may have `downloaded`. Counts beyond `u32` are
/// clamped. Other torrents' entries and other keys are ignored. `url` is the announce URL, for
/// errors.
///
/// # Errors
/// [`TrackerError::Failure`] when the reply has a `failure reason`; [`TrackerError::Malformed`]
/// when the body is not one bencoded dictionary (same limits as [`parse_announce_response`]),
/// `files` is missing or not a dictionary, our info hash is not in it, or its `complete` or
/// `incomplete` is missing or not a non-negative integer.
pub fn parse_scrape_response(
    url: &str,
    body: &[u8],
    info_hash: &[u8; 20],
) -> Result<ScrapeCounts, TrackerError> {
    let malformed = |reason: &str| TrackerError::Malformed {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let root = decode_reply(url, body)?;
    let dict = reply_dict(url, &root)?;
    let files = dict
        .get("files")
        .and_then(Dict::from_elem)
        .ok_or_else(|| malformed("no files dictionary"))?;
    let entry = files
        .get_bytes(info_hash)
        .ok_or_else(|| malformed("our info hash is not in files"))?;
    let entry = Dict::from_elem(entry).ok_or_else(|| malformed("our entry is not a dictionary"))?;
    let count = |key: &str| {
        entry
            .get(key)
            .and_then(non_negative)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    Ok(ScrapeCounts {
        seeders: count("complete").ok_or_else(|| malformed("no complete count"))?,
        leechers: count("incomplete").ok_or_else(|| malformed("no incomplete count"))?,
        completed: count("downloaded"),
    })
}

/// The trackers of a torrent as BEP 12 tiers, in the order to try them.
///
/// Built from `announce-list`, or from `announce` as the only tier when the list is absent or holds
/// no URL. URLs are trimmed; empty ones and repeats (across all tiers) are dropped, and so are the
/// tiers left empty. Each tier is shuffled once, at construction; after that the order changes only
/// through [`Tiers::promote`], which moves a tracker that answered to the front of its tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tiers {
    tiers: Vec<Vec<String>>,
}

impl Tiers {
    /// Builds the tiers and shuffles each one with the thread's random generator.
    pub fn new(announce: Option<&str>, announce_list: Option<&[Vec<String>]>) -> Self {
        Self::with_rng(announce, announce_list, &mut rand::rng())
    }

    /// Like [`Tiers::new`], shuffling with `rng` (tests pass a seeded one).
    pub fn with_rng<R: Rng + ?Sized>(
        announce: Option<&str>,
        announce_list: Option<&[Vec<String>]>,
        rng: &mut R,
    ) -> Self {
        let mut seen = HashSet::new();
        let mut tiers: Vec<Vec<String>> = announce_list
            .unwrap_or_default()
            .iter()
            .map(|tier| {
                tier.iter()
                    .map(|url| url.trim())
                    .filter(|url| !url.is_empty() && seen.insert(url.to_owned()))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|tier| !tier.is_empty())
            .collect();
        if tiers.is_empty()
            && let Some(url) = announce.map(str::trim).filter(|url| !url.is_empty())
        {
            tiers.push(vec![url.to_owned()]);
        }
        for tier in &mut tiers {
            tier.shuffle(rng);
        }
        Tiers { tiers }
    }

    /// Whether there is no tracker at all (a trackerless torrent).
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// How many trackers there are, over all tiers.
    pub fn len(&self) -> usize {
        self.tiers.iter().map(Vec::len).sum()
    }

    /// The tiers, each in its current order.
    pub fn tiers(&self) -> &[Vec<String>] {
        &self.tiers
    }

    /// Every tracker in the order to try them: tier by tier, front to back within a tier.
    pub fn urls(&self) -> impl Iterator<Item = &str> + '_ {
        self.tiers.iter().flatten().map(String::as_str)
    }

    /// Moves `url` to the front of its tier, shifting the ones before it back by one; the other
    /// tiers do not change. Returns whether `url` is one of ours.
    pub fn promote(&mut self, url: &str) -> bool {
        for tier in &mut self.tiers {
            if let Some(i) = tier.iter().position(|u| u == url) {
                tier[..=i].rotate_right(1);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const URL: &str = "http://tracker.example/announce";

    fn parse(body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
        parse_announce_response(URL, body)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn malformed_reason(body: &[u8]) -> String {
        match parse(body) {
            Err(TrackerError::Malformed { url, reason }) => {
                assert_eq!(url, URL);
                reason
            }
            other => panic!("expected Malformed for {body:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_refusal_is_kept_per_tracker_until_that_tracker_answers() {
        let stats = SwarmStats::default();
        assert_eq!(stats.refusal(), None);
        let refused = TrackerError::Failure {
            url: "http://a/announce".into(),
            reason: "unregistered torrent".into(),
        };
        stats.on_outcome("http://a/announce", 10, Err(AnnounceFailure::of(&refused)));
        stats.on_outcome(
            "http://b/announce",
            11,
            Err(AnnounceFailure::Failed("no answer".into())),
        );
        assert_eq!(
            stats.refusal(),
            Some(("http://a/announce".into(), "unregistered torrent".into()))
        );
        stats.on_outcome("http://a/announce", 20, Ok(()));
        assert_eq!(stats.refusal(), None);
        let outcomes = stats.outcomes();
        assert_eq!(outcomes.len(), 2);
        assert_eq!((outcomes[0].at_unix, &outcomes[0].result), (20, &Ok(())));
    }

    #[test]
    fn parses_compact_peers_and_counts() {
        let mut body =
            b"d8:completei5e10:incompletei3e8:intervali1800e12:min intervali60e5:peers12:".to_vec();
        body.extend_from_slice(&[10, 0, 0, 1, 0x1A, 0xE1, 192, 168, 1, 200, 0x00, 0x50]);
        body.push(b'e');
        let reply = parse(&body).unwrap();
        assert_eq!(
            reply,
            AnnounceResponse {
                interval: Duration::from_secs(1800),
                min_interval: Some(Duration::from_secs(60)),
                tracker_id: None,
                complete: Some(5),
                incomplete: Some(3),
                warning: None,
                peers: vec![addr("10.0.0.1:6881"), addr("192.168.1.200:80")],
                requires_encryption: Vec::new(),
            }
        );
    }

    #[test]
    fn crypto_flags_mark_the_compact_peers_that_require_encryption() {
        let mut body = b"d12:crypto_flags2:\x00\x018:intervali60e5:peers12:".to_vec();
        body.extend_from_slice(&[10, 0, 0, 1, 0x1A, 0xE1, 10, 0, 0, 2, 0x1A, 0xE1]);
        body.push(b'e');
        let reply = parse(&body).unwrap();
        assert_eq!(reply.peers.len(), 2);
        assert_eq!(reply.requires_encryption, vec![addr("10.0.0.2:6881")]);
        // A byte short: the flags cannot be matched to peers, so none is taken.
        let mut body = b"d12:crypto_flags1:\x018:intervali60e5:peers12:".to_vec();
        body.extend_from_slice(&[10, 0, 0, 1, 0x1A, 0xE1, 10, 0, 0, 2, 0x1A, 0xE1]);
        body.push(b'e');
        let reply = parse(&body).unwrap();
        assert_eq!((reply.peers.len(), reply.requires_encryption.len()), (2, 0));
    }

    #[test]
    fn parses_compact_peers_that_happen_to_be_valid_utf8() {
        // lava_torrent yields a String for these bytes rather than Bytes.
        let body = b"d8:intervali900e5:peers6:ABCDPQe";
        assert_eq!(parse(body).unwrap().peers, vec![addr("65.66.67.68:20561")]);
    }

    #[test]
    fn parses_dictionary_peers_with_ipv4_and_ipv6_text() {
        let body = b"d8:intervali600e5:peersl\
            d2:ip8:10.1.2.37:peer id20:AAAAAAAAAAAAAAAAAAAA4:porti51413ee\
            d2:ip11:2001:db8::14:porti6881ee\
            d2:ip5:[::2]4:porti7000ee\
            d2:ip15:::ffff:10.9.8.74:porti7001ee\
            ee";
        assert_eq!(
            parse(body).unwrap().peers,
            vec![
                addr("10.1.2.3:51413"),
                addr("[2001:db8::1]:6881"),
                addr("[::2]:7000"),
                addr("10.9.8.7:7001"),
            ]
        );
    }

    #[test]
    fn skips_dictionary_peers_that_cannot_be_dialled() {
        let body = b"d8:intervali600e5:peersl\
            d2:ip12:tracker.host4:porti1ee\
            d2:ip7:1.2.3.44:porti0ee\
            d2:ip7:1.2.3.44:porti70000ee\
            d2:ip7:1.2.3.44:porti-1ee\
            d2:ip7:1.2.3.4e\
            d4:porti5ee\
            i42e\
            d2:ipi7e4:porti5ee\
            d2:ip7:0.0.0.04:porti5ee\
            d2:ip7:5.6.7.84:porti9ee\
            ee";
        assert_eq!(parse(body).unwrap().peers, vec![addr("5.6.7.8:9")]);
    }

    #[test]
    fn parses_peers6() {
        let mut body = b"d8:intervali60e6:peers636:".to_vec();
        body.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1A, 0xE1,
        ]);
        body.extend_from_slice(&[
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd, 0xc3, 0x50,
        ]);
        body.push(b'e');
        assert_eq!(
            parse(&body).unwrap().peers,
            vec![addr("[2001:db8::1]:6881"), addr("[fe80::abcd]:50000")]
        );
    }

    #[test]
    fn parses_peers_and_peers6_together_without_duplicates() {
        let mut body = b"d8:intervali60e5:peers12:".to_vec();
        body.extend_from_slice(&[1, 2, 3, 4, 0, 80, 1, 2, 3, 4, 0, 80]);
        body.extend_from_slice(b"6:peers618:");
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1A, 0xE1]);
        body.push(b'e');
        assert_eq!(
            parse(&body).unwrap().peers,
            vec![addr("1.2.3.4:80"), addr("[::1]:6881")]
        );
    }

    #[test]
    fn skips_compact_entries_with_port_zero_and_a_trailing_partial_entry() {
        let mut body = b"d8:intervali60e5:peers16:".to_vec();
        body.extend_from_slice(&[1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 0x1A, 0xE1, 3, 3, 3, 3]);
        body.extend_from_slice(b"6:peers620:");
        body.extend_from_slice(&[
            0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 9, 9,
        ]);
        body.push(b'e');
        assert_eq!(parse(&body).unwrap().peers, vec![addr("2.2.2.2:6881")]);
    }

    #[test]
    fn accepts_a_reply_without_peers() {
        let reply = parse(b"d8:intervali1800ee").unwrap();
        assert_eq!(reply.peers, vec![]);
        assert_eq!(reply.interval, Duration::from_secs(1800));
        assert_eq!(reply.min_interval, None);
    }

    #[test]
    fn failure_reason_wins_over_everything_else() {
        let body = b"d14:failure reason22:torrent not registered8:intervali1800e5:peers6:\x01\x02\x03\x04\x00\x50e";
        match parse(body) {
            Err(TrackerError::Failure { url, reason }) => {
                assert_eq!(url, URL);
                assert_eq!(reason, "torrent not registered");
            }
            other => panic!("expected Failure, got {other:?}"),
        }
        let err = parse(b"d14:failure reasoni7ee").unwrap_err();
        assert!(matches!(&err, TrackerError::Failure { reason, .. } if reason == "7"));
        assert_eq!(
            err.to_string(),
            format!("tracker {URL}: refused the request: 7")
        );
    }

    #[test]
    fn rejects_a_missing_or_negative_interval() {
        assert_eq!(malformed_reason(b"d5:peers0:e"), "no interval");
        assert!(malformed_reason(b"d8:intervali-5ee").contains("interval"));
        assert!(malformed_reason(b"d8:interval4:1800e").contains("interval"));
    }

    #[test]
    fn rejects_garbage_non_dictionary_and_truncated_bodies() {
        for body in [
            &b""[..],
            b"   \r\n",
            b"<html><body>502 Bad Gateway</body></html>",
            b"i42e",
            b"l8:intervali60ee",
            b"4:spam",
            b"d8:intervali60e",
            b"d8:intervali60e5:peers12:\x01\x02",
            b"d8:intervali1800",
            b"d8:intervali18",
            b"d8:interv",
            b"d8:intervali60eed8:intervali60ee",
            b"d8:intervali60ee trailing",
            b"d8:intervali60e5:peersi7ee",
            b"d8:intervali60e5:peersd2:ip7:1.2.3.4ee",
            b"d8:intervali60e6:peers6i7ee",
        ] {
            let reason = malformed_reason(body);
            assert!(!reason.is_empty());
        }
    }

    #[test]
    fn rejects_a_reply_with_unsorted_keys_as_lava_torrent_does() {
        // lava_torrent enforces BEP 3's sorted keys; a tracker that breaks the rule fails loudly.
        let reason = malformed_reason(b"d5:peers0:8:intervali60ee");
        assert!(reason.contains("sorted"), "{reason}");
    }

    #[test]
    fn refuses_deep_nesting_without_overflowing_the_stack() {
        for body in [
            vec![b'l'; 1 << 20],
            [&b"d8:intervali60e5:peersl"[..], &[b'd'; 100_000]].concat(),
            [&b"l"[..], &b"1:xd".repeat(50_000)].concat(),
        ] {
            let reason = malformed_reason(&body);
            assert!(reason.contains("nested deeper"), "{reason}");
        }
        let mut ok = b"d8:intervali60e5:peers".to_vec();
        let lists = usize::try_from(MAX_NESTING).unwrap() - 1;
        ok.extend_from_slice(&b"l".repeat(lists));
        ok.extend_from_slice(&b"e".repeat(lists));
        ok.push(b'e');
        assert_eq!(parse(&ok).unwrap().peers, vec![]);
        // A byte lava_torrent would take as the start of a string length is refused outright.
        assert!(malformed_reason(b"l+1:xllllee").contains("unexpected byte"));
    }

    #[test]
    fn compact_peers_may_contain_bencode_delimiters() {
        let body = b"d8:intervali60e5:peers12:ldei:edl9e\x00\x01e";
        assert_eq!(
            parse(body).unwrap().peers,
            vec![addr("108.100.101.105:14949"), addr("100.108.57.101:1")]
        );
    }

    #[test]
    fn tolerates_a_trailing_newline() {
        assert_eq!(
            parse(b"d8:intervali60ee\r\n").unwrap().interval,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn keeps_the_warning_message_and_binary_tracker_id() {
        let body =
            b"d8:intervali60e10:tracker id4:\xff\x00ab15:warning message18:ratio is too low!!e";
        let reply = parse(body).unwrap();
        assert_eq!(reply.tracker_id, Some(vec![0xff, 0x00, b'a', b'b']));
        assert_eq!(reply.warning.as_deref(), Some("ratio is too low!!"));
        let reply = parse(b"d8:intervali60e10:tracker id5:abc12e").unwrap();
        assert_eq!(reply.tracker_id, Some(b"abc12".to_vec()));
        assert_eq!(
            parse(b"d8:intervali60e10:tracker id0:e")
                .unwrap()
                .tracker_id,
            None
        );
    }

    #[test]
    fn ignores_optional_keys_of_the_wrong_type_or_range() {
        let body = b"d8:completei-1e10:incompletei99999999999e8:intervali60e12:min interval2:xx15:warning messagei3ee";
        let reply = parse(body).unwrap();
        assert_eq!(
            (
                reply.complete,
                reply.incomplete,
                reply.min_interval,
                reply.warning
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn reads_a_reply_with_a_non_utf8_key() {
        // lava_torrent turns this into a RawDictionary.
        let body = b"d8:intervali60e5:peers6:\x7f\x00\x00\x01\x1a\xe12:\xff\xffi1ee";
        assert_eq!(parse(body).unwrap().peers, vec![addr("127.0.0.1:6881")]);
    }

    fn request() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: *b"\x00\x01\x7f\x80\xff -._~%&?=+/Az9\xab",
            peer_id: *b"-BT0001-abcdefghijkl",
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: Some(AnnounceEvent::Started),
            numwant: 50,
            tracker_id: None,
            key: 7,
            addrs: OurAddrs::default(),
            encryption: Encryption::Preferred,
        }
    }

    #[test]
    fn announce_url_says_requirecrypto_only_in_required_mode() {
        let mut req = request();
        req.encryption = Encryption::Required;
        assert!(
            announce_url("http://t/a", &req).contains("&supportcrypto=1&requirecrypto=1&event=")
        );
        req.encryption = Encryption::Tolerated;
        assert!(!announce_url("http://t/a", &req).contains("requirecrypto"));
    }

    #[test]
    fn announce_url_tells_our_address_of_each_family() {
        let mut req = request();
        req.addrs = OurAddrs {
            ipv4: Some(Ipv4Addr::new(203, 0, 113, 5)),
            ipv6: Some("2001:db8:1::5".parse().unwrap()),
        };
        assert_eq!(
            announce_url("http://t.example/announce", &req),
            format!(
                "http://t.example/announce?{QUERY}&event=started&ipv4=203.0.113.5\
                 &ipv6=2001%3Adb8%3A1%3A%3A5"
            )
        );
    }

    #[test]
    fn our_addresses_only_when_listening_on_both_families_and_only_global_ones() {
        let v4 = |s: &str| Some(IpAddr::V4(s.parse().unwrap()));
        let v6 = |s: &str| Some(IpAddr::V6(s.parse().unwrap()));
        let both = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        assert_eq!(
            OurAddrs::from_route_sources(both, v4("203.0.113.5"), v6("2001:db8::5")),
            OurAddrs {
                ipv4: Some(Ipv4Addr::new(203, 0, 113, 5)),
                ipv6: Some("2001:db8::5".parse().unwrap()),
            }
        );
        // One family only: the tracker sees that address itself.
        for listen in ["0.0.0.0", "203.0.113.5", "2001:db8::5"] {
            let listen: IpAddr = listen.parse().unwrap();
            assert_eq!(
                OurAddrs::from_route_sources(listen, v4("203.0.113.5"), v6("2001:db8::5")),
                OurAddrs::default(),
                "{listen}"
            );
        }
        for local in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.2",
            "169.254.0.1",
            "0.0.0.0",
        ] {
            assert_eq!(
                OurAddrs::from_route_sources(both, v4(local), None),
                OurAddrs::default(),
                "{local}"
            );
        }
        for local in [
            "::1",
            "fe80::1",
            "fd00::1",
            "::",
            "::ffff:203.0.113.5",
            "ff02::1",
        ] {
            assert_eq!(
                OurAddrs::from_route_sources(both, None, v6(local)),
                OurAddrs::default(),
                "{local}"
            );
        }
    }

    const QUERY: &str = "info_hash=%00%01%7F%80%FF%20-._~%25%26%3F%3D%2B%2FAz9%AB\
        &peer_id=-BT0001-abcdefghijkl&port=6881&uploaded=1&downloaded=2&left=3&compact=1&numwant=50&supportcrypto=1";

    #[test]
    fn announce_url_escapes_every_kind_of_byte() {
        assert_eq!(
            announce_url("http://t.example:6969/announce", &request()),
            format!("http://t.example:6969/announce?{QUERY}&event=started")
        );
    }

    #[test]
    fn announce_url_escapes_all_256_byte_values() {
        let mut encoded = String::new();
        let all: Vec<u8> = (0..=255).collect();
        percent::encode_into(&mut encoded, &all);
        let mut expected = String::new();
        for b in 0u16..=255 {
            let c = char::from(u8::try_from(b).unwrap());
            if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                expected.push(c);
            } else {
                expected.push_str(&format!("%{b:02X}"));
            }
        }
        assert_eq!(encoded, expected);
        assert_eq!(encoded.len(), 66 + 190 * 3);
    }

    #[test]
    fn announce_url_appends_to_an_existing_query_with_an_ampersand() {
        let req = request();
        assert_eq!(
            announce_url("https://t.example/a?passkey=abc", &req),
            format!("https://t.example/a?passkey=abc&{QUERY}&event=started")
        );
        assert_eq!(
            announce_url("https://t.example/a?passkey=abc&", &req),
            format!("https://t.example/a?passkey=abc&{QUERY}&event=started")
        );
        assert_eq!(
            announce_url("https://t.example/a?", &req),
            format!("https://t.example/a?{QUERY}&event=started")
        );
        assert_eq!(
            announce_url("https://t.example/a#frag", &req),
            format!("https://t.example/a?{QUERY}&event=started")
        );
    }

    #[test]
    fn announce_url_omits_a_missing_event_and_sends_the_tracker_id() {
        let mut req = request();
        req.event = None;
        assert_eq!(
            announce_url("http://t/a", &req),
            format!("http://t/a?{QUERY}")
        );
        req.event = Some(AnnounceEvent::Stopped);
        req.tracker_id = Some(b"id 1\xff".to_vec());
        assert_eq!(
            announce_url("http://t/a", &req),
            format!("http://t/a?{QUERY}&event=stopped&trackerid=id%201%FF")
        );
        req.event = Some(AnnounceEvent::Completed);
        assert!(announce_url("http://t/a", &req).contains("&event=completed&"));
    }

    const HASH: [u8; 20] = *b"\x00\x01\x7f\x80\xff -._~%&?=+/Az9\xab";
    const HASH_QUERY: &str = "info_hash=%00%01%7F%80%FF%20-._~%25%26%3F%3D%2B%2FAz9%AB";

    #[test]
    fn scrape_url_replaces_announce_in_the_last_path_component() {
        for (announce, scrape) in [
            ("http://t.example/announce", "http://t.example/scrape?"),
            (
                "http://t.example:6969/x/announce",
                "http://t.example:6969/x/scrape?",
            ),
            (
                "http://t.example/announce.php",
                "http://t.example/scrape.php?",
            ),
            (
                "http://t.example/a/announce?passkey=k",
                "http://t.example/a/scrape?passkey=k&",
            ),
            (
                "https://t.example/announce?passkey=k&",
                "https://t.example/scrape?passkey=k&",
            ),
            (
                "https://t.example/announce?#frag",
                "https://t.example/scrape?",
            ),
            ("http://t.example/announce#frag", "http://t.example/scrape?"),
        ] {
            assert_eq!(
                scrape_url(announce, &HASH),
                Some(format!("{scrape}{HASH_QUERY}")),
                "{announce}"
            );
        }
    }

    #[test]
    fn scrape_url_is_none_without_announce_at_the_start_of_the_last_component() {
        for announce in [
            "http://t.example/a",
            "http://t.example/x/announce/",
            "http://t.example/announce/x",
            "http://t.example/a/xannounce",
            "http://t.example/",
            "http://announce",
            "http://t.example?announce",
            "http://t.example/x?y=/announce",
        ] {
            assert_eq!(scrape_url(announce, &HASH), None, "{announce}");
        }
    }

    fn scrape_reply(entries: &[(&[u8; 20], &str)]) -> Vec<u8> {
        let mut body = b"d5:filesd".to_vec();
        for (hash, entry) in entries {
            body.extend_from_slice(b"20:");
            body.extend_from_slice(*hash);
            body.extend_from_slice(entry.as_bytes());
        }
        body.extend_from_slice(b"ee");
        body
    }

    #[test]
    fn parses_our_entry_of_a_scrape_reply_keyed_by_the_raw_info_hash() {
        // Keys sorted as raw bytes: \x00... < ZZZ... ; the reply is a RawDictionary for lava_torrent.
        let body = scrape_reply(&[
            (&HASH, "d8:completei5e10:downloadedi50e10:incompletei10ee"),
            (b"ZZZZZZZZZZZZZZZZZZZZ", "d8:completei1e10:incompletei1ee"),
        ]);
        assert_eq!(
            parse_scrape_response(URL, &body, &HASH).unwrap(),
            ScrapeCounts {
                seeders: 5,
                leechers: 10,
                completed: Some(50),
            }
        );
        // A hash that happens to be UTF-8 (lava_torrent gives a Dictionary keyed by String), with
        // a `name`, no `downloaded`, and a count beyond u32.
        let hash = *b"abcdefghijklmnopqrst";
        let body = scrape_reply(&[(
            &hash,
            "d8:completei99999999999e10:incompletei0e4:name3:fooe",
        )]);
        assert_eq!(
            parse_scrape_response(URL, &body, &hash).unwrap(),
            ScrapeCounts {
                seeders: u32::MAX,
                leechers: 0,
                completed: None,
            }
        );
    }

    #[test]
    fn parses_a_scrape_reply_with_flags_and_a_trailing_newline() {
        let mut body = b"d5:filesd20:".to_vec();
        body.extend_from_slice(&[0xEE; 20]);
        body.extend_from_slice(
            b"d8:completei0e10:downloadedi0e10:incompletei1eee5:flagsd20:min_request_intervali900eee\n",
        );
        assert_eq!(
            parse_scrape_response(URL, &body, &[0xEE; 20]).unwrap(),
            ScrapeCounts {
                seeders: 0,
                leechers: 1,
                completed: Some(0),
            }
        );
    }

    #[test]
    fn reports_a_scrape_failure_or_a_reply_without_our_counts() {
        let err = parse_scrape_response(URL, b"d14:failure reason9:no scrapee", &HASH).unwrap_err();
        assert!(
            matches!(&err, TrackerError::Failure { reason, .. } if reason == "no scrape"),
            "{err:?}"
        );
        for (body, why) in [
            (b"d5:filesdee".to_vec(), "our info hash"),
            (b"d5:filesi1ee".to_vec(), "files"),
            (b"de".to_vec(), "files"),
            (b"le".to_vec(), "not a dictionary"),
            (b"d5:filesd".to_vec(), "bencode"),
            (
                scrape_reply(&[(&[0xEE; 20], "d8:completei1e10:incompletei1ee")]),
                "our info hash",
            ),
            (scrape_reply(&[(&HASH, "i5e")]), "not a dictionary"),
            (scrape_reply(&[(&HASH, "d8:completei1ee")]), "incomplete"),
            (
                scrape_reply(&[(&HASH, "d8:completei-1e10:incompletei1ee")]),
                "complete",
            ),
            (
                [&b"d5:filesd"[..], &[b'l'; 100], &[b'e'; 102]].concat(),
                "nested",
            ),
        ] {
            match parse_scrape_response(URL, &body, &HASH) {
                Err(TrackerError::Malformed { url, reason }) => {
                    assert_eq!(url, URL);
                    assert!(reason.contains(why), "{reason:?} for {body:?}");
                }
                other => panic!("expected Malformed for {body:?}, got {other:?}"),
            }
        }
    }

    fn list(tiers: &[&[&str]]) -> Vec<Vec<String>> {
        tiers
            .iter()
            .map(|tier| tier.iter().map(|s| (*s).to_owned()).collect())
            .collect()
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn tier_shuffling_keeps_every_url_in_its_tier() {
        let announce_list = list(&[
            &["a1", "a2", "a3", "a4", "a5"],
            &["b1"],
            &["c1", "c2", "c3"],
        ]);
        let mut orders = HashSet::new();
        for seed in 0..50 {
            let tiers = Tiers::with_rng(
                Some("ignored"),
                Some(&announce_list),
                &mut StdRng::seed_from_u64(seed),
            );
            assert_eq!(tiers.len(), 9);
            let got = tiers.tiers();
            assert_eq!(got.len(), 3);
            for (tier, original) in got.iter().zip(&announce_list) {
                assert_eq!(sorted(tier.clone()), sorted(original.clone()));
            }
            orders.insert(got[0].clone());
        }
        assert!(orders.len() > 1, "50 seeds gave one order: not shuffled");
    }

    #[test]
    fn tiers_fall_back_to_announce_and_drop_empty_and_repeated_urls() {
        let tiers = Tiers::new(Some(" http://a/announce "), None);
        assert_eq!(tiers.tiers(), list(&[&["http://a/announce"]]).as_slice());
        let tiers = Tiers::new(Some("http://a"), Some(&list(&[&[], &[" "]])));
        assert_eq!(tiers.tiers(), list(&[&["http://a"]]).as_slice());
        let tiers = Tiers::new(
            Some("http://a"),
            Some(&list(&[&["x", " "], &["x"], &["y"]])),
        );
        assert_eq!(tiers.tiers(), list(&[&["x"], &["y"]]).as_slice());
        assert!(Tiers::new(None, None).is_empty());
        assert!(Tiers::new(Some(""), Some(&[])).is_empty());
        assert!(!Tiers::new(Some("http://a"), None).is_empty());
    }

    #[test]
    fn promotion_moves_the_answering_tracker_to_the_front_of_its_tier_only() {
        let mut tiers = Tiers::new(None, Some(&list(&[&["a1"], &["b1"], &["c1"]])));
        tiers.tiers = list(&[&["a1", "a2"], &["b1", "b2", "b3", "b4"]]);
        assert!(tiers.promote("b3"));
        assert_eq!(
            tiers.tiers(),
            list(&[&["a1", "a2"], &["b3", "b1", "b2", "b4"]]).as_slice()
        );
        assert!(tiers.promote("b3"));
        assert_eq!(
            tiers.tiers(),
            list(&[&["a1", "a2"], &["b3", "b1", "b2", "b4"]]).as_slice()
        );
        assert!(tiers.promote("a2"));
        assert_eq!(
            tiers.urls().collect::<Vec<_>>(),
            ["a2", "a1", "b3", "b1", "b2", "b4"]
        );
        assert!(!tiers.promote("zz"));
    }
}
