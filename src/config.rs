//! Configuration: the TOML file (`config/btd.toml` documents every key) read into
//! `ConfigFile` with serde defaults, then checked into `Config`. Every key has a default,
//! so an empty file is valid; an unknown key, a wrong type or an impossible value is a
//! `ConfigError` naming the file, the line, the key and the reason.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::engine::EngineConfig;
use crate::magnet::Magnet;
use crate::peer::mse::Encryption;
use crate::rpc::{IpRange, RpcConfig, Secret};
use crate::torrent::TorrentLimits;
use crate::tracker_server::TrackerConfig;

/// A config file that cannot be used. Fatal at start.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {}{key}: {reason}", line_prefix(*.line))]
pub struct ConfigError {
    pub path: PathBuf,
    /// The line the error is on (1-based), when the file says where.
    pub line: Option<usize>,
    /// The key (`disk.hash_threads`, `torrent[0].path`), or the text of the line for a TOML
    /// syntax error or an unknown key.
    pub key: String,
    pub reason: String,
}

fn line_prefix(line: Option<usize>) -> String {
    line.map_or_else(String::new, |n| format!("line {n}: "))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ConfigFile {
    paths: Paths,
    watch: Watch,
    log: Log,
    network: Network,
    peers: Peers,
    rates: Rates,
    seeding: Seeding,
    queue: Queue,
    status: Status,
    disk: Disk,
    announce: Announce,
    tracker: Tracker,
    rpc: Rpc,
    dht: Dht,
    lsd: Lsd,
    torrent: Vec<TorrentEntryFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Dht {
    #[serde(deserialize_with = "boolean")]
    enabled: bool,
    #[serde(deserialize_with = "integer")]
    port: u16,
    #[serde(deserialize_with = "strings")]
    bootstrap: Vec<String>,
}

/// The bootstrap nodes of `[dht]` when the file names none.
pub const DHT_BOOTSTRAP: [&str; 3] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
];

impl Default for Dht {
    fn default() -> Self {
        Self {
            enabled: true,
            port: 0,
            bootstrap: DHT_BOOTSTRAP.iter().map(|s| (*s).to_string()).collect(),
        }
    }
}

/// Checks a DHT bootstrap node, `HOST:PORT` (the name is resolved when the DHT starts).
///
/// # Errors
/// Why it is no `HOST:PORT`.
pub fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match port.parse::<u16>() {
        Ok(p) if p != 0 && !host.is_empty() => Ok(()),
        _ => Err(format!("{s:?} is not HOST:PORT (a port from 1 to 65535)")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Paths {
    #[serde(deserialize_with = "path")]
    state_dir: PathBuf,
    #[serde(deserialize_with = "path")]
    download_dir: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            state_dir: "state".into(),
            download_dir: "downloads".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Watch {
    #[serde(deserialize_with = "path")]
    dir: PathBuf,
    #[serde(deserialize_with = "integer")]
    scan_interval_secs: u64,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            scan_interval_secs: 10,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Log {
    #[serde(deserialize_with = "string")]
    level: String,
    #[serde(deserialize_with = "path")]
    file: PathBuf,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
            file: PathBuf::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Network {
    #[serde(deserialize_with = "string")]
    listen_address: String,
    #[serde(deserialize_with = "integer")]
    listen_port: u16,
    #[serde(deserialize_with = "integer")]
    connect_timeout_secs: u64,
    #[serde(deserialize_with = "integer")]
    write_timeout_secs: u64,
    #[serde(deserialize_with = "string")]
    encryption: String,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            listen_address: "0.0.0.0".into(),
            listen_port: 6881,
            connect_timeout_secs: 10,
            write_timeout_secs: 60,
            encryption: Encryption::default().as_str().into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Peers {
    #[serde(deserialize_with = "integer")]
    max_per_torrent: usize,
    #[serde(deserialize_with = "integer")]
    max_global: usize,
    #[serde(deserialize_with = "integer")]
    max_per_ip: usize,
    #[serde(deserialize_with = "integer")]
    max_per_prefix: usize,
    #[serde(deserialize_with = "integer")]
    upload_slots: usize,
}

impl Default for Peers {
    fn default() -> Self {
        Self {
            max_per_torrent: 50,
            max_global: 500,
            max_per_ip: 8,
            max_per_prefix: 32,
            upload_slots: 8,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Rates {
    #[serde(deserialize_with = "integer")]
    download_kib_per_sec: u64,
    #[serde(deserialize_with = "integer")]
    upload_kib_per_sec: u64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Seeding {
    #[serde(deserialize_with = "number")]
    ratio_limit: f64,
    #[serde(deserialize_with = "integer")]
    time_limit_mins: u64,
    #[serde(deserialize_with = "integer")]
    idle_limit_mins: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Queue {
    #[serde(deserialize_with = "integer")]
    max_active_downloads: usize,
    #[serde(deserialize_with = "integer")]
    max_active_seeds: usize,
    #[serde(deserialize_with = "boolean")]
    start_added_torrents: bool,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            max_active_downloads: 5,
            max_active_seeds: 20,
            start_added_torrents: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Status {
    #[serde(deserialize_with = "integer")]
    interval_secs: u64,
}

impl Default for Status {
    fn default() -> Self {
        Self { interval_secs: 5 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Disk {
    #[serde(deserialize_with = "integer")]
    hash_threads: usize,
    #[serde(deserialize_with = "integer")]
    min_free_mib: u64,
}

impl Default for Disk {
    fn default() -> Self {
        Self {
            hash_threads: 2,
            min_free_mib: 1024,
        }
    }
}

/// The most `announce.stop_timeout_secs` may be: the whole stop, `stopped` announces included,
/// fits in the 5 s a service manager gives (`TimeoutStopSec`).
pub const MAX_STOP_TIMEOUT_SECS: u64 = 4;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Announce {
    #[serde(deserialize_with = "integer")]
    numwant: u32,
    #[serde(deserialize_with = "integer")]
    timeout_secs: u64,
    #[serde(deserialize_with = "integer")]
    stop_timeout_secs: u64,
    #[serde(deserialize_with = "integer")]
    udp_retransmit_base_ms: u64,
}

impl Default for Announce {
    fn default() -> Self {
        Self {
            numwant: 50,
            timeout_secs: 15,
            stop_timeout_secs: 3,
            udp_retransmit_base_ms: 15_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Tracker {
    #[serde(deserialize_with = "boolean")]
    enabled: bool,
    #[serde(deserialize_with = "string")]
    listen: String,
    #[serde(deserialize_with = "integer")]
    interval_secs: u64,
    #[serde(deserialize_with = "integer")]
    min_interval_secs: u64,
    #[serde(deserialize_with = "integer")]
    max_peers_per_torrent: usize,
    #[serde(deserialize_with = "integer")]
    max_torrents: usize,
}

impl Default for Tracker {
    fn default() -> Self {
        let d = TrackerConfig::default();
        Self {
            enabled: false,
            listen: d.listen.to_string(),
            interval_secs: d.interval.as_secs(),
            min_interval_secs: 0,
            max_peers_per_torrent: d.max_peers_per_torrent,
            max_torrents: d.max_torrents,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Lsd {
    #[serde(deserialize_with = "boolean")]
    enabled: bool,
}

impl Default for Lsd {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Rpc {
    #[serde(deserialize_with = "boolean")]
    enabled: bool,
    #[serde(deserialize_with = "string")]
    listen: String,
    #[serde(deserialize_with = "string")]
    username: String,
    #[serde(deserialize_with = "string")]
    password: String,
    #[serde(deserialize_with = "path")]
    password_file: PathBuf,
    #[serde(deserialize_with = "strings")]
    allowed_ips: Vec<String>,
    #[serde(deserialize_with = "strings")]
    allowed_hosts: Vec<String>,
    #[serde(deserialize_with = "path")]
    web_dir: PathBuf,
}

impl Default for Rpc {
    fn default() -> Self {
        let d = RpcConfig::default();
        Self {
            enabled: d.enabled,
            listen: d.listen.to_string(),
            username: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            allowed_ips: vec!["127.0.0.1".into(), "::1".into()],
            allowed_hosts: Vec::new(),
            web_dir: PathBuf::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TorrentEntryFile {
    #[serde(default, deserialize_with = "some_path")]
    path: Option<PathBuf>,
    #[serde(default, deserialize_with = "some_string")]
    magnet: Option<String>,
    #[serde(default, deserialize_with = "path")]
    download_dir: PathBuf,
    #[serde(default, deserialize_with = "boolean")]
    paused: bool,
    #[serde(default, deserialize_with = "strings")]
    peers: Vec<String>,
}

// ---- type checks in words -------------------------------------------------------------------
// Each key's `deserialize_with` function takes the TOML value and fails with what the key takes
// ("expected an integer from 0 to 65535"); `toml_error` adds the dotted key, the line and what
// the file has instead. So no Rust or serde type name reaches the admin.

/// An integer type of the config and its range in words (TOML integers are i64).
trait Integer: TryFrom<i64> {
    const RANGE: &'static str;
}

impl Integer for u16 {
    const RANGE: &'static str = "an integer from 0 to 65535";
}

impl Integer for u32 {
    const RANGE: &'static str = "an integer from 0 to 4294967295";
}

impl Integer for u64 {
    const RANGE: &'static str = "an integer >= 0";
}

impl Integer for usize {
    const RANGE: &'static str = "an integer >= 0";
}

fn expected<E: serde::de::Error>(what: &str) -> E {
    E::custom(format!("expected {what}"))
}

fn integer<'de, D: Deserializer<'de>, T: Integer>(d: D) -> Result<T, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::Integer(i) => T::try_from(i).map_err(|_| expected(T::RANGE)),
        _ => Err(expected(T::RANGE)),
    }
}

/// A float; an integer is taken as one.
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::Float(f) => Ok(f),
        // A ratio: precision beyond 2^53 does not matter.
        toml::Value::Integer(i) => Ok(i as f64),
        _ => Err(expected("a number")),
    }
}

fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::Boolean(b) => Ok(b),
        _ => Err(expected("true or false")),
    }
}

fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) => Ok(s),
        _ => Err(expected("a string")),
    }
}

fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(s) => Ok(s.into()),
        _ => Err(expected("a string (a path)")),
    }
}

fn some_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    string(d).map(Some)
}

fn some_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    path(d).map(Some)
}

fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let items = match toml::Value::deserialize(d)? {
        toml::Value::Array(items) => items,
        _ => return Err(expected("an array of strings")),
    };
    items
        .into_iter()
        .map(|item| match item {
            toml::Value::String(s) => Ok(s),
            _ => Err(expected("an array of strings")),
        })
        .collect()
}

/// A `toml::from_str` error as a `ConfigError`. A wrong value is named by its dotted key, with
/// what the key takes and what the file has (`network.listen_port: expected an integer from 0 to
/// 65535, got the string "6881"`); anything else (a syntax error, an unknown key) by the text of
/// its line, with the parser's message.
fn toml_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let Some(span) = e.span() else {
        return ConfigError {
            path: path.to_owned(),
            line: None,
            key: "-".into(),
            reason: e.message().trim().to_owned(),
        };
    };
    let (line, line_text) = line_at(text, span.start);
    let root = toml::de::DeTable::parse(text).ok();
    let Some((key, value)) = root.as_ref().and_then(|r| value_at(r.get_ref(), &span, "")) else {
        return ConfigError {
            path: path.to_owned(),
            line: Some(line),
            key: format!("`{line_text}`"),
            reason: e.message().trim().to_owned(),
        };
    };
    let reason = wrong_shape(&key, value).unwrap_or_else(|| e.message().trim().to_owned());
    ConfigError {
        path: path.to_owned(),
        line: Some(line),
        reason: format!("{reason}, got {}", describe(value)),
        key,
    }
}

/// What a section (a top-level key), `torrent` or a `[[torrent]]` entry must be, when `value`
/// at `key` is not that; `None` for other keys, whose functions above say what they take.
fn wrong_shape(key: &str, value: &toml::de::DeValue<'_>) -> Option<String> {
    let entry = key
        .strip_prefix("torrent[")
        .is_some_and(|rest| !rest.contains('.'));
    if key == "torrent" {
        let tables = matches!(value, toml::de::DeValue::Array(items)
            if items.iter().all(|i| i.get_ref().is_table()));
        (!tables).then(|| "expected an array of tables ([[torrent]] entries)".into())
    } else if entry {
        (!value.is_table()).then(|| "expected a table (a [[torrent]] entry)".into())
    } else if !key.contains(['.', '[']) {
        (!value.is_table()).then(|| format!("expected a table ([{key}])"))
    } else {
        None
    }
}

/// The dotted key (`network.listen_port`, `torrent[0].peers[1]`) and the value whose span is
/// `span`, under `table` at `prefix`.
fn value_at<'a, 'i>(
    table: &'a toml::de::DeTable<'i>,
    span: &std::ops::Range<usize>,
    prefix: &str,
) -> Option<(String, &'a toml::de::DeValue<'i>)> {
    table.iter().find_map(|(k, v)| {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        within(v, span, key)
    })
}

fn within<'a, 'i>(
    value: &'a toml::Spanned<toml::de::DeValue<'i>>,
    span: &std::ops::Range<usize>,
    key: String,
) -> Option<(String, &'a toml::de::DeValue<'i>)> {
    if value.span() == *span {
        return Some((key, value.get_ref()));
    }
    match value.get_ref() {
        toml::de::DeValue::Table(t) => value_at(t, span, &key),
        toml::de::DeValue::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| within(item, span, format!("{key}[{i}]"))),
        _ => None,
    }
}

/// A TOML value in words: `the string "6881"`, `the integer 70000`, `an array of tables`.
fn describe(value: &toml::de::DeValue<'_>) -> String {
    use toml::de::DeValue;
    match value {
        DeValue::String(s) => format!("the string {s:?}"),
        DeValue::Integer(i) => format!("the integer {}", i.as_str()),
        DeValue::Float(f) => format!("the float {}", f.as_str()),
        DeValue::Boolean(b) => format!("the boolean {b}"),
        DeValue::Datetime(d) => format!("the date-time {d}"),
        DeValue::Array(items) if items.is_empty() => "an empty array".into(),
        DeValue::Array(items) => {
            let mut kinds: Vec<&str> = Vec::new();
            for item in items.iter() {
                let kind = match item.get_ref() {
                    DeValue::String(_) => "strings",
                    DeValue::Integer(_) => "integers",
                    DeValue::Float(_) => "floats",
                    DeValue::Boolean(_) => "booleans",
                    DeValue::Datetime(_) => "date-times",
                    DeValue::Array(_) => "arrays",
                    DeValue::Table(_) => "tables",
                };
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
            format!("an array of {}", kinds.join(" and "))
        }
        DeValue::Table(_) => "a table".into(),
    }
}

/// Which torrent a `[[torrent]]` entry means: exactly one of its `path` and `magnet` keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TorrentRef {
    /// `path`: a `.torrent` file, resolved.
    File(PathBuf),
    /// `magnet`: a magnet link, parsed.
    Magnet(Magnet),
}

/// One `[[torrent]]` entry, paths resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct TorrentEntry {
    pub torrent: TorrentRef,
    /// The entry's own `download_dir`; `None`: `[paths] download_dir` when it is first added.
    pub download_dir: Option<PathBuf>,
    pub paused: bool,
    pub peers: Vec<SocketAddr>,
}

/// The validated configuration. Relative paths are resolved against the config file's
/// directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from (None for built-in defaults).
    pub source: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub download_dir: PathBuf,
    pub watch_dir: Option<PathBuf>,
    pub watch_interval: Duration,
    pub log_level: log::LevelFilter,
    pub log_file: Option<PathBuf>,
    pub listen_address: IpAddr,
    pub listen_port: u16,
    /// Message stream encryption of peer connections (`[network] encryption`).
    pub encryption: Encryption,
    pub max_peers_global: usize,
    /// Incoming connections at once from one IP address.
    pub max_peers_per_ip: usize,
    /// Bytes per second, 0 = unlimited.
    pub download_rate: u64,
    /// Bytes per second, 0 = unlimited.
    pub upload_rate: u64,
    /// 0 = no limit.
    pub ratio_limit: f64,
    /// Zero = no limit.
    pub seed_time_limit: Duration,
    /// Seeding this long without uploading finishes a torrent; zero = no limit.
    pub seed_idle_limit: Duration,
    pub max_active_downloads: usize,
    pub max_active_seeds: usize,
    /// Torrents added over the RPC without `paused` start at once (Transmission's
    /// `start-added-torrents`); false: they are added paused.
    pub start_added_torrents: bool,
    pub status_interval: Duration,
    /// `disk.min_free_mib` in bytes: a downloading torrent pauses (`low-space`) before the
    /// free space of its download directory's file system falls below it; 0 = off.
    pub min_free_bytes: u64,
    pub limits: TorrentLimits,
    /// The embedded tracker (`[tracker]`), when enabled.
    pub tracker: Option<TrackerConfig>,
    /// The Transmission RPC (`[rpc]`), checked even when disabled.
    pub rpc: RpcConfig,
    /// The DHT (`[dht]`), when enabled; its `state_file` is the daemon's to set.
    pub dht: Option<crate::dht::DhtConfig>,
    /// Local service discovery (BEP 14, `[lsd] enabled`): announce public torrents on the
    /// local network's multicast group and take the peers announced there.
    pub lsd: bool,
    pub torrents: Vec<TorrentEntry>,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_file(ConfigFile::default(), None).expect("defaults are valid")
    }
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// A `ConfigError` naming the file, the key (or the TOML position) and the reason.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            line: None,
            key: "-".into(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Only `[paths] state_dir` of the config file at `path`, read leniently and resolved as
    /// [`load`](Self::load) resolves it: for `btd status` while the rest of the file is broken
    /// (a wrong value, a TOML syntax error elsewhere), which is when the admin is fixing it.
    /// `None` when the file cannot tell: unreadable, a `state_dir` that is not a non-empty string
    /// or has a syntax error on its lines, or none set while the file has syntax errors (which
    /// may hide it).
    #[must_use]
    pub fn state_dir_only(path: &Path) -> Option<PathBuf> {
        state_dir_in(&std::fs::read_to_string(path).ok()?, path)
    }

    /// Parses and validates config text that came from `path`.
    ///
    /// # Errors
    /// A `ConfigError` naming `path`, the line, the key (or the line's text) and the reason.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
        Self::from_file(file, Some(path)).map_err(|mut e| {
            e.line = key_line(text, &e.key);
            e
        })
    }

    fn from_file(file: ConfigFile, path: Option<&Path>) -> Result<Self, ConfigError> {
        let shown = path.unwrap_or(Path::new("<defaults>"));
        let err = |key: &str, reason: String| ConfigError {
            path: shown.to_owned(),
            line: None,
            key: key.into(),
            reason,
        };
        let resolve = |p: &Path| resolve_in(path, p);
        let non_empty = |key: &str, p: &Path| {
            if p.as_os_str().is_empty() {
                Err(err(key, "must not be empty".into()))
            } else {
                Ok(resolve(p))
            }
        };
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(err(key, "must be at least 1".into()))
            } else {
                Ok(v)
            }
        };
        let listen_address = file
            .network
            .listen_address
            .parse()
            .map_err(|e| err("network.listen_address", format!("{e}")))?;
        positive(
            "network.connect_timeout_secs",
            file.network.connect_timeout_secs,
        )?;
        positive("peers.max_per_torrent", file.peers.max_per_torrent as u64)?;
        positive("peers.max_global", file.peers.max_global as u64)?;
        positive("peers.max_per_ip", file.peers.max_per_ip as u64)?;
        positive("peers.max_per_prefix", file.peers.max_per_prefix as u64)?;
        positive(
            "network.write_timeout_secs",
            file.network.write_timeout_secs,
        )?;
        positive("disk.hash_threads", file.disk.hash_threads as u64)?;
        positive("announce.timeout_secs", file.announce.timeout_secs)?;
        positive(
            "announce.udp_retransmit_base_ms",
            file.announce.udp_retransmit_base_ms,
        )?;
        if file.announce.stop_timeout_secs > MAX_STOP_TIMEOUT_SECS {
            return Err(err(
                "announce.stop_timeout_secs",
                format!(
                    "{} does not fit: a stop (SIGTERM) takes at most 5 s in all, so the `stopped` \
                     announces get at most {MAX_STOP_TIMEOUT_SECS}",
                    file.announce.stop_timeout_secs
                ),
            ));
        }
        positive("watch.scan_interval_secs", file.watch.scan_interval_secs)?;
        positive("status.interval_secs", file.status.interval_secs)?;
        positive(
            "queue.max_active_downloads",
            file.queue.max_active_downloads as u64,
        )?;
        positive("queue.max_active_seeds", file.queue.max_active_seeds as u64)?;
        if !(file.seeding.ratio_limit.is_finite() && file.seeding.ratio_limit >= 0.0) {
            return Err(err("seeding.ratio_limit", "must be a number >= 0".into()));
        }
        let log_level = file.log.level.parse().map_err(|_| {
            err(
                "log.level",
                format!(
                    "{:?} is not one of off, error, warn, info, debug, trace",
                    file.log.level
                ),
            )
        })?;
        let encryption = file
            .network
            .encryption
            .parse()
            .map_err(|e| err("network.encryption", e))?;
        let rate = |key: &str, kib: u64| {
            kib.checked_mul(1024)
                .ok_or_else(|| err(key, "too large".into()))
        };
        let download_dir = non_empty("paths.download_dir", &file.paths.download_dir)?;
        let tracker = tracker_config(&file.tracker).map_err(|(key, reason)| err(key, reason))?;
        let rpc = rpc_config(&file.rpc, &resolve).map_err(|(key, reason)| err(key, reason))?;
        for (i, node) in file.dht.bootstrap.iter().enumerate() {
            check_host_port(node).map_err(|reason| err(&format!("dht.bootstrap[{i}]"), reason))?;
        }
        let dht = file.dht.enabled.then(|| crate::dht::DhtConfig {
            port: file.dht.port,
            bootstrap: file.dht.bootstrap.clone(),
            state_file: None,
        });
        let mut torrents = Vec::new();
        for (i, entry) in file.torrent.into_iter().enumerate() {
            let key = |k: &str| format!("torrent[{i}].{k}");
            let mut peers = Vec::new();
            for peer in &entry.peers {
                let addrs = std::net::ToSocketAddrs::to_socket_addrs(peer.as_str())
                    .map_err(|e| err(&key("peers"), format!("{peer:?}: {e}")))?;
                peers.extend(addrs);
            }
            let torrent = match (&entry.path, &entry.magnet) {
                (Some(path), None) => TorrentRef::File(non_empty(&key("path"), path)?),
                (None, Some(uri)) => TorrentRef::Magnet(
                    Magnet::parse(uri).map_err(|e| err(&key("magnet"), e.to_string()))?,
                ),
                (Some(_), Some(_)) => {
                    return Err(err(
                        &key("magnet"),
                        "`path` is set too: give `path` or `magnet`, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(err(
                        &key("path"),
                        "missing: give `path` (a .torrent file) or `magnet` (a magnet link)".into(),
                    ));
                }
            };
            torrents.push(TorrentEntry {
                torrent,
                download_dir: (!entry.download_dir.as_os_str().is_empty())
                    .then(|| resolve(&entry.download_dir)),
                paused: entry.paused,
                peers,
            });
        }
        Ok(Self {
            source: path.map(Path::to_path_buf),
            state_dir: non_empty("paths.state_dir", &file.paths.state_dir)?,
            download_dir,
            watch_dir: (!file.watch.dir.as_os_str().is_empty()).then(|| resolve(&file.watch.dir)),
            watch_interval: Duration::from_secs(file.watch.scan_interval_secs),
            log_level,
            log_file: (!file.log.file.as_os_str().is_empty()).then(|| resolve(&file.log.file)),
            listen_address,
            listen_port: file.network.listen_port,
            encryption,
            max_peers_global: file.peers.max_global,
            max_peers_per_ip: file.peers.max_per_ip,
            download_rate: rate(
                "rates.download_kib_per_sec",
                file.rates.download_kib_per_sec,
            )?,
            upload_rate: rate("rates.upload_kib_per_sec", file.rates.upload_kib_per_sec)?,
            ratio_limit: file.seeding.ratio_limit,
            seed_time_limit: Duration::from_secs(file.seeding.time_limit_mins.saturating_mul(60)),
            seed_idle_limit: Duration::from_secs(file.seeding.idle_limit_mins.saturating_mul(60)),
            max_active_downloads: file.queue.max_active_downloads,
            max_active_seeds: file.queue.max_active_seeds,
            start_added_torrents: file.queue.start_added_torrents,
            status_interval: Duration::from_secs(file.status.interval_secs),
            min_free_bytes: file
                .disk
                .min_free_mib
                .checked_mul(1024 * 1024)
                .ok_or_else(|| err("disk.min_free_mib", "too large".into()))?,
            limits: TorrentLimits {
                max_peers: file.peers.max_per_torrent,
                max_per_prefix: file.peers.max_per_prefix,
                upload_slots: file.peers.upload_slots,
                connect_timeout: Duration::from_secs(file.network.connect_timeout_secs),
                write_timeout: Duration::from_secs(file.network.write_timeout_secs),
                disk_threads: file.disk.hash_threads,
                numwant: file.announce.numwant,
                announce_timeout: Duration::from_secs(file.announce.timeout_secs),
                stop_timeout: Duration::from_secs(file.announce.stop_timeout_secs),
                udp_retransmit_base: Duration::from_millis(file.announce.udp_retransmit_base_ms),
            },
            tracker,
            rpc,
            dht,
            lsd: file.lsd.enabled,
            torrents,
        })
    }

    /// The engine settings, with the command line's overrides of address and port.
    pub fn engine(&self, bind: Option<IpAddr>, port: Option<u16>) -> EngineConfig {
        EngineConfig {
            listen: SocketAddr::new(
                bind.unwrap_or(self.listen_address),
                port.unwrap_or(self.listen_port),
            ),
            limits: self.limits.clone(),
            download_rate: self.download_rate,
            upload_rate: self.upload_rate,
            max_peers: self.max_peers_global,
            max_peers_per_ip: self.max_peers_per_ip,
            lsd: self.lsd,
            encryption: self.encryption,
            dht: self.dht.clone(),
        }
    }
}

/// `p` as a config file at `config` means it: relative paths are relative to the file's
/// directory (to the working directory for the built-in defaults).
fn resolve_in(config: Option<&Path>, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_owned();
    }
    config
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        .join(p)
}

/// See [`Config::state_dir_only`]; `text` is the file at `path`.
fn state_dir_in(text: &str, path: &Path) -> Option<PathBuf> {
    let (root, errors) = toml::de::DeTable::parse_recoverable(text);
    let paths = root.get_ref().get("paths").map(toml::Spanned::get_ref);
    let entry = paths
        .and_then(toml::de::DeValue::as_table)
        .and_then(|t| t.get_key_value("state_dir"));
    let state_dir = match entry {
        None if errors.is_empty() && paths.is_none_or(toml::de::DeValue::is_table) => {
            Paths::default().state_dir
        }
        None => return None,
        Some((key, value)) => {
            let dir = value.get_ref().as_str().filter(|d| !d.is_empty())?;
            let lines = line_at(text, key.span().start).0..=line_at(text, value.span().end).0;
            let broken = errors.iter().any(|e| {
                e.span()
                    .is_some_and(|at| lines.contains(&line_at(text, at.start).0))
            });
            if broken {
                return None;
            }
            PathBuf::from(dir)
        }
    };
    Some(resolve_in(Some(path), &state_dir))
}

/// The embedded tracker's config from `[tracker]`: None when it is disabled (its other keys are
/// still checked, so a mistake shows before it is turned on). Errors are (key, reason).
fn tracker_config(file: &Tracker) -> Result<Option<TrackerConfig>, (&'static str, String)> {
    let listen: SocketAddr = file.listen.parse().map_err(|e| {
        (
            "tracker.listen",
            format!(
                "{:?}: {e} (want IP:PORT, e.g. \"0.0.0.0:6969\" or \"[::]:6969\")",
                file.listen
            ),
        )
    })?;
    if file.interval_secs == 0 || file.interval_secs > u64::from(u32::MAX) {
        return Err((
            "tracker.interval_secs",
            format!("must be 1 to {}", u32::MAX),
        ));
    }
    let mut config = TrackerConfig::with_interval(listen, Duration::from_secs(file.interval_secs));
    if file.min_interval_secs > file.interval_secs {
        return Err((
            "tracker.min_interval_secs",
            format!("must not exceed interval_secs ({})", file.interval_secs),
        ));
    }
    if file.min_interval_secs > 0 {
        config.min_interval = Duration::from_secs(file.min_interval_secs);
    }
    if file.max_peers_per_torrent == 0 {
        return Err(("tracker.max_peers_per_torrent", "must be at least 1".into()));
    }
    if file.max_torrents == 0 {
        return Err(("tracker.max_torrents", "must be at least 1".into()));
    }
    config.max_peers_per_torrent = file.max_peers_per_torrent;
    config.max_torrents = file.max_torrents;
    config.validate().map_err(|e| ("tracker", e.to_string()))?;
    Ok(file.enabled.then_some(config))
}

/// The RPC's config from `[rpc]`, relative paths resolved by `resolve`; checked whether or not
/// it is enabled. Errors are (key, reason); the password is never in a reason.
fn rpc_config(
    file: &Rpc,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<RpcConfig, (&'static str, String)> {
    let listen: SocketAddr = file.listen.parse().map_err(|e| {
        (
            "rpc.listen",
            format!(
                "{:?}: {e} (want IP:PORT, e.g. \"127.0.0.1:9091\" or \"[::]:9091\")",
                file.listen
            ),
        )
    })?;
    let password = if file.password_file.as_os_str().is_empty() {
        file.password.clone()
    } else {
        if !file.password.is_empty() {
            return Err((
                "rpc.password_file",
                "`password` is set too: give `password` or `password_file`, not both".into(),
            ));
        }
        let path = resolve(&file.password_file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ("rpc.password_file", format!("{}: {e}", path.display())))?;
        let password = text.trim_end_matches(['\n', '\r']).to_owned();
        if password.is_empty() {
            return Err((
                "rpc.password_file",
                format!("{}: the file is empty", path.display()),
            ));
        }
        password
    };
    if file.username.contains(':') {
        return Err((
            "rpc.username",
            "must not contain `:` (HTTP Basic auth cannot carry it)".into(),
        ));
    }
    match (file.username.is_empty(), password.is_empty()) {
        (false, true) => {
            return Err((
                "rpc.password",
                "`username` is set: give `password` or `password_file` too (both set require \
                 HTTP Basic auth; neither, none)"
                    .into(),
            ));
        }
        (true, false) => {
            return Err((
                "rpc.username",
                "a password is set: give `username` too (both set require HTTP Basic auth; \
                 neither, none)"
                    .into(),
            ));
        }
        _ => {}
    }
    if file.allowed_ips.is_empty() {
        return Err((
            "rpc.allowed_ips",
            "must not be empty (to allow every address: [\"0.0.0.0/0\", \"::/0\"])".into(),
        ));
    }
    let allowed_ips = file
        .allowed_ips
        .iter()
        .map(|entry| IpRange::parse(entry))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ("rpc.allowed_ips", e))?;
    let mut allowed_hosts = Vec::new();
    for host in &file.allowed_hosts {
        let name = host.strip_prefix("*.").unwrap_or(host);
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !plain {
            return Err((
                "rpc.allowed_hosts",
                format!(
                    "{host:?} is not a host name (letters, digits, `-` and `.`, optionally \
                     starting with `*.`; no port)"
                ),
            ));
        }
        allowed_hosts.push(host.to_ascii_lowercase());
    }
    let web_dir = if file.web_dir.as_os_str().is_empty() {
        None
    } else {
        let dir = resolve(&file.web_dir);
        if !dir.is_dir() {
            return Err(("rpc.web_dir", format!("{}: not a directory", dir.display())));
        }
        Some(dir)
    };
    Ok(RpcConfig {
        enabled: file.enabled,
        listen,
        username: file.username.clone(),
        password: Secret::new(password),
        allowed_ips,
        allowed_hosts,
        web_dir,
    })
}

/// The line number (1-based) and trimmed text of the line holding byte `offset`.
fn line_at(text: &str, offset: usize) -> (usize, &str) {
    let before = text.get(..offset).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    (line_no, text.lines().nth(line_no - 1).unwrap_or("").trim())
}

/// The line where `key` (`disk.hash_threads`, `torrent[1].peers`) is written in `text`: its own
/// line when present, else that of the deepest table on the way (a `[[torrent]]` header for a
/// missing `path`); `None` when the document has none of it (a default was refused).
fn key_line(text: &str, key: &str) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut found = None;
    for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.strip_suffix(']')?.parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some((k, v)) = table.get_key_value(name) else {
            break;
        };
        found = Some(k.span().start);
        let mut value = v;
        if let Some(i) = index {
            let Some(item) = value.get_ref().as_array().and_then(|a| a.get(i)) else {
                break;
            };
            found = Some(item.span().start);
            value = item;
        }
        match value.get_ref().as_table() {
            Some(t) => table = t,
            None => break,
        }
    }
    found.map(|offset| line_at(text, offset).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/btd/t.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.listen_port, 6881);
        assert_eq!(c.limits.max_peers, 50);
    }

    #[test]
    fn unknown_key_is_an_error_naming_its_line() {
        let e = parse("[network]\nlisten_prot = 5\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.reason.contains("listen_prot"), "{e}");
        assert!(
            e.to_string()
                .starts_with("/etc/btd/t.toml: line 2: `listen_prot = 5`: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn impossible_value_names_the_file_line_and_key() {
        let e = parse("# threads\n[disk]\nhash_threads = 0\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(3), "disk.hash_threads"));
        assert_eq!(
            e.to_string(),
            "/etc/btd/t.toml: line 3: disk.hash_threads: must be at least 1"
        );
        let e = parse("[network]\nlisten_port = 1\nlisten_address = \"nope\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(3), "network.listen_address")
        );
        let e = parse("disk = { hash_threads = 0 }\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(1), "disk.hash_threads"));
    }

    #[test]
    fn min_free_mib_is_a_gibibyte_by_default_zero_turns_it_off_and_too_large_is_named() {
        assert_eq!(Config::default().min_free_bytes, 1024 * 1024 * 1024);
        let c = parse("[disk]\nmin_free_mib = 0\n").unwrap();
        assert_eq!(c.min_free_bytes, 0);
        let c = parse("[disk]\nmin_free_mib = 3\n").unwrap();
        assert_eq!(c.min_free_bytes, 3 << 20);
        let e = parse("[disk]\nmin_free_mib = 9223372036854775807\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(2), "disk.min_free_mib"));
        let e = parse("[disk]\nmin_free_mib = -1\n").unwrap_err();
        assert_eq!(e.key, "disk.min_free_mib");
    }

    #[test]
    fn a_torrent_entry_error_names_the_line_of_its_key_or_its_header() {
        let text = "[[torrent]]\npath = \"a\"\n\n[[torrent]]\npath = \"b\"\npeers = [\n  \"nowhere\",\n]\n\n[[torrent]]\npaused = true\n";
        let e = parse(text).unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(6), "torrent[1].peers"),
            "{e}"
        );
        let e = parse(&text.replace("nowhere", "127.0.0.1:1")).unwrap_err();
        assert_eq!(
            (e.line, e.key.as_str()),
            (Some(10), "torrent[2].path"),
            "{e}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let c = parse("[paths]\nstate_dir = \"st\"\n[[torrent]]\npath = \"a.torrent\"\npeers = [\"127.0.0.1:7000\"]\n").unwrap();
        assert_eq!(c.state_dir, Path::new("/etc/btd/st"));
        assert_eq!(
            c.torrents[0].torrent,
            TorrentRef::File("/etc/btd/a.torrent".into())
        );
        assert_eq!(c.download_dir, Path::new("/etc/btd/downloads"));
        assert_eq!(c.torrents[0].download_dir, None);
        assert_eq!(
            c.torrents[0].peers,
            vec!["127.0.0.1:7000".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn wrong_type_and_bad_torrent_entry_name_their_keys() {
        let e = parse("[peers]\nmax_global = \"many\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = parse("[[torrent]]\npath = \"a\"\npeers = [\"nowhere\"]\n").unwrap_err();
        assert_eq!(e.key, "torrent[0].peers");
        let e = parse("[log]\nlevel = \"loud\"\n").unwrap_err();
        assert_eq!(e.key, "log.level");
        let e = parse("[seeding]\nratio_limit = -1.0\n").unwrap_err();
        assert_eq!(e.key, "seeding.ratio_limit");
    }

    #[test]
    fn a_wrong_type_names_the_dotted_key_what_it_takes_and_what_the_file_has() {
        let e = parse("[network]\nlisten_port = \"6881\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/btd/t.toml: line 2: network.listen_port: expected an integer from 0 to 65535, \
             got the string \"6881\""
        );
        for (text, line, key, reason) in [
            (
                "[network]\nlisten_port = 70000\n",
                2,
                "network.listen_port",
                "expected an integer from 0 to 65535, got the integer 70000",
            ),
            (
                "# comment\n[disk]\nhash_threads = -1\n",
                3,
                "disk.hash_threads",
                "expected an integer >= 0, got the integer -1",
            ),
            (
                "[announce]\nnumwant = 1.5\n",
                2,
                "announce.numwant",
                "expected an integer from 0 to 4294967295, got the float 1.5",
            ),
            (
                "[status]\ninterval_secs = 1979-05-27\n",
                2,
                "status.interval_secs",
                "expected an integer >= 0, got the date-time 1979-05-27",
            ),
            (
                "[tracker]\nenabled = \"yes\"\n",
                2,
                "tracker.enabled",
                "expected true or false, got the string \"yes\"",
            ),
            (
                "[seeding]\nratio_limit = \"1.5\"\n",
                2,
                "seeding.ratio_limit",
                "expected a number, got the string \"1.5\"",
            ),
            (
                "[log]\nlevel = 3\n",
                2,
                "log.level",
                "expected a string, got the integer 3",
            ),
            (
                "[paths]\nstate_dir = [\"a\"]\n",
                2,
                "paths.state_dir",
                "expected a string (a path), got an array of strings",
            ),
            (
                "[network]\nlisten_address = { ip = \"::\" }\n",
                2,
                "network.listen_address",
                "expected a string, got a table",
            ),
            (
                "[[torrent]]\npath = \"a\"\npeers = \"192.0.2.1:6881\"\n",
                3,
                "torrent[0].peers",
                "expected an array of strings, got the string \"192.0.2.1:6881\"",
            ),
            (
                "[[torrent]]\npath = \"a\"\npeers = [\n  \"192.0.2.1:6881\",\n  6881,\n]\n",
                3,
                "torrent[0].peers",
                "expected an array of strings, got an array of strings and integers",
            ),
            (
                "[[torrent]]\npath = \"a\"\n[[torrent]]\npath = \"b\"\npaused = 1\n",
                5,
                "torrent[1].paused",
                "expected true or false, got the integer 1",
            ),
            (
                "[[torrent]]\npath = 1\n",
                2,
                "torrent[0].path",
                "expected a string (a path), got the integer 1",
            ),
            (
                "network = 5\n",
                1,
                "network",
                "expected a table ([network]), got the integer 5",
            ),
            (
                "[[network]]\nlisten_port = 1\n",
                1,
                "network",
                "expected a table ([network]), got an array of tables",
            ),
            (
                "torrent = \"a.torrent\"\n",
                1,
                "torrent",
                "expected an array of tables ([[torrent]] entries), got the string \"a.torrent\"",
            ),
            (
                "torrent = [\"a.torrent\"]\n",
                1,
                "torrent[0]",
                "expected a table (a [[torrent]] entry), got the string \"a.torrent\"",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(
                (e.line, e.key.as_str(), e.reason.as_str()),
                (Some(line), key, reason),
                "{text}"
            );
        }
    }

    #[test]
    fn the_state_dir_is_read_from_a_broken_config_when_the_file_can_tell_it() {
        let dir = |text: &str| state_dir_in(text, Path::new("/etc/btd/t.toml"));
        let st = Some(PathBuf::from("/etc/btd/st"));
        assert_eq!(
            dir("[paths]\nstate_dir = \"st\"\n[network]\nlisten_port = \"6881\"\n"),
            st
        );
        assert_eq!(
            dir("[network]\nlisten_port = \"6881\"\n[paths]\nstate_dir = \"st\"\n[rates\nx = 1\n"),
            st,
            "a syntax error elsewhere"
        );
        assert_eq!(
            dir("[paths]\nstate_dir = \"/var/lib/btd\"\n[disk]\nhash_threads = 0\n"),
            Some(PathBuf::from("/var/lib/btd"))
        );
        assert_eq!(
            dir("[network]\nlisten_port = \"6881\"\n"),
            Some(PathBuf::from("/etc/btd/state")),
            "not set: the default"
        );
        for (text, why) in [
            ("[paths]\nstate_dir = 5\n", "a wrong type"),
            ("[paths]\nstate_dir = \"\"\n", "empty"),
            ("[paths]\nstate_dir = \"st\n", "a syntax error on its line"),
            (
                "[paths\nstate_dir = \"st\"\n",
                "a syntax error in its header",
            ),
            ("[rates\nx = 1\n", "not set, and a syntax error may hide it"),
            ("paths = 5\n", "[paths] is not a table"),
        ] {
            assert_eq!(dir(text), None, "{why}: {text}");
        }
    }

    #[test]
    fn every_key_of_the_shipped_config_reports_a_wrong_type_in_words() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/btd.toml");
        let shipped: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap())
            .expect("the shipped config is TOML");
        let mut keys: Vec<String> = shipped
            .iter()
            .flat_map(|(section, table)| {
                let table = table.as_table().expect("every section is a table");
                table.keys().map(move |k| format!("{section}.{k}"))
            })
            .collect();
        assert!(keys.len() > 30, "{keys:?}");
        // The [[torrent]] keys, commented out there.
        keys.extend(
            ["path", "magnet", "download_dir", "paused", "peers"].map(|k| format!("torrent.{k}")),
        );
        let rust_words = [
            "u16",
            "u32",
            "u64",
            "usize",
            "f64",
            "struct",
            "sequence",
            "map",
            "invalid type",
        ];
        for key in keys {
            let (section, name) = key.split_once('.').unwrap();
            // An inline table is the wrong type for every key.
            let text = if section == "torrent" {
                format!("[[torrent]]\n{name} = {{ x = 1 }}\n")
            } else {
                format!("[{section}]\n{name} = {{ x = 1 }}\n")
            };
            let e = parse(&text).unwrap_err();
            let want = key.replace("torrent.", "torrent[0].");
            assert_eq!((e.line, e.key.as_str()), (Some(2), want.as_str()), "{e}");
            assert!(
                e.reason.starts_with("expected ") && e.reason.ends_with(", got a table"),
                "{e}"
            );
            for word in rust_words {
                assert!(!e.reason.contains(word), "{e}");
            }
        }
    }

    #[test]
    fn a_torrent_entry_is_a_path_or_a_magnet_link_never_both_nor_neither() {
        let hash = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
        let c = parse(&format!(
            "[[torrent]]\nmagnet = \"magnet:?xt=urn:btih:{hash}&dn=x\"\n"
        ))
        .unwrap();
        let TorrentRef::Magnet(m) = &c.torrents[0].torrent else {
            panic!("not a magnet: {:?}", c.torrents[0]);
        };
        assert_eq!(
            (m.info_hash.to_hex().as_str(), m.name.as_deref()),
            (hash, Some("x"))
        );
        let both = format!("[[torrent]]\npath = \"a\"\nmagnet = \"magnet:?xt=urn:btih:{hash}\"\n");
        let e = parse(&both).unwrap_err();
        assert_eq!(e.key, "torrent[0].magnet");
        assert!(e.reason.contains("not both"), "{e}");
        let e = parse("[[torrent]]\npaused = true\n").unwrap_err();
        assert_eq!(e.key, "torrent[0].path");
        let e = parse("[[torrent]]\nmagnet = \"magnet:?xt=urn:btih:zzz\"\n").unwrap_err();
        assert_eq!(e.key, "torrent[0].magnet");
        assert!(e.reason.contains("40 hex or 32 base32"), "{e}");
    }

    #[test]
    fn the_embedded_tracker_is_off_unless_enabled_and_its_keys_are_checked() {
        assert_eq!(parse("").unwrap().tracker, None);
        let c =
            parse("[tracker]\nenabled = true\nlisten = \"127.0.0.1:7000\"\ninterval_secs = 60\n")
                .unwrap();
        let t = c.tracker.unwrap();
        assert_eq!(t.listen, "127.0.0.1:7000".parse::<SocketAddr>().unwrap());
        assert_eq!((t.interval.as_secs(), t.min_interval.as_secs()), (60, 30));
        for (text, key) in [
            ("listen = \"6969\"", "tracker.listen"),
            ("interval_secs = 0", "tracker.interval_secs"),
            (
                "interval_secs = 10\nmin_interval_secs = 11",
                "tracker.min_interval_secs",
            ),
            ("max_torrents = 0", "tracker.max_torrents"),
            ("max_peers_per_torrent = 0", "tracker.max_peers_per_torrent"),
        ] {
            // Checked even while disabled.
            let e = parse(&format!("[tracker]\n{text}\n")).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn the_rpc_defaults_to_loopback_port_9091_without_auth() {
        let rpc = parse("").unwrap().rpc;
        assert_eq!(rpc, RpcConfig::default());
        assert!(rpc.enabled && !rpc.auth_required());
        assert_eq!(rpc.listen, "127.0.0.1:9091".parse::<SocketAddr>().unwrap());
        assert!(
            rpc.allowed_ips
                .iter()
                .any(|r| r.contains("::1".parse().unwrap()))
        );
        let rpc = parse(
            "[rpc]\nenabled = false\nlisten = \"[::]:0\"\nusername = \"u\"\npassword = \"pw\"\n\
             allowed_ips = [\"10.0.0.0/8\", \"192.168.*.*\"]\nallowed_hosts = [\"Box.lan\", \"*.example.org\"]\n",
        )
        .unwrap()
        .rpc;
        assert!(!rpc.enabled && rpc.auth_required());
        assert_eq!(rpc.listen.port(), 0);
        assert_eq!(rpc.password.expose(), "pw");
        assert_eq!(rpc.allowed_ips.len(), 2);
        assert_eq!(rpc.allowed_hosts, vec!["box.lan", "*.example.org"]);
    }

    #[test]
    fn rpc_mistakes_name_their_key_and_line_and_never_the_password() {
        for (text, key, line, reason) in [
            ("listen = \"9091\"", "rpc.listen", 2, "want IP:PORT"),
            ("username = \"u\"", "rpc.password", 2, "give `password`"),
            (
                "password = \"hunter2\"",
                "rpc.username",
                3,
                "give `username` too",
            ),
            (
                "username = \"u\"\npassword = \"hunter2\"\npassword_file = \"pw\"",
                "rpc.password_file",
                4,
                "not both",
            ),
            (
                "username = \"u\"\npassword_file = \"/nonexistent/pw\"",
                "rpc.password_file",
                3,
                "/nonexistent/pw",
            ),
            (
                "username = \"a:b\"\npassword = \"hunter2\"",
                "rpc.username",
                2,
                "`:`",
            ),
            ("allowed_ips = []", "rpc.allowed_ips", 2, "0.0.0.0/0"),
            (
                "allowed_ips = [\"127.0.0.1\", \"lan\"]",
                "rpc.allowed_ips",
                2,
                "\"lan\" is not an IP address",
            ),
            (
                "allowed_ips = [\"10.0.0.0/40\"]",
                "rpc.allowed_ips",
                2,
                "0 to 32",
            ),
            (
                "allowed_hosts = [\"box.lan:9091\"]",
                "rpc.allowed_hosts",
                2,
                "not a host name",
            ),
            (
                "web_dir = \"/nonexistent/web\"",
                "rpc.web_dir",
                2,
                "not a directory",
            ),
        ] {
            let e = parse(&format!("[rpc]\n{text}\n")).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.reason.contains(reason), "{text}: {e}");
            assert!(e.line.is_some_and(|l| l <= line), "{text}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let c = parse("[rpc]\nusername = \"u\"\npassword = \"hunter2\"\n").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn the_rpc_password_file_is_read_relative_to_the_config() {
        let dir = crate::test_dir::TempDir::new("config-rpc");
        std::fs::write(dir.0.join("pw"), "correct horse\n").unwrap();
        std::fs::create_dir(dir.0.join("web")).unwrap();
        let c = Config::parse(
            "[rpc]\nusername = \"u\"\npassword_file = \"pw\"\nweb_dir = \"web\"\n",
            &dir.0.join("btd.toml"),
        )
        .unwrap();
        assert_eq!(c.rpc.password.expose(), "correct horse");
        assert_eq!(c.rpc.web_dir, Some(dir.0.join("web")));
        std::fs::write(dir.0.join("pw"), "\n").unwrap();
        let e = Config::parse(
            "[rpc]\nusername = \"u\"\npassword_file = \"pw\"\n",
            &dir.0.join("btd.toml"),
        )
        .unwrap_err();
        assert!(e.reason.contains("empty"), "{e}");
    }

    #[test]
    fn per_ip_limit_and_write_timeout_have_defaults_and_must_be_positive() {
        let c = parse("").unwrap();
        assert_eq!(c.max_peers_per_ip, 8);
        assert_eq!(c.limits.write_timeout, Duration::from_secs(60));
        let c = parse("[peers]\nmax_per_ip = 2\n[network]\nwrite_timeout_secs = 3\n").unwrap();
        assert_eq!(c.engine(None, None).max_peers_per_ip, 2);
        assert_eq!(c.limits.write_timeout, Duration::from_secs(3));
        let e = parse("[peers]\nmax_per_ip = 0\n").unwrap_err();
        assert_eq!(e.key, "peers.max_per_ip");
        let e = parse("[network]\nwrite_timeout_secs = 0\n").unwrap_err();
        assert_eq!(e.key, "network.write_timeout_secs");
    }

    #[test]
    fn rates_are_kibibytes_per_second() {
        let c = parse("[rates]\ndownload_kib_per_sec = 100\n").unwrap();
        assert_eq!((c.download_rate, c.upload_rate), (102_400, 0));
    }

    #[test]
    fn shipped_default_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/btd.toml");
        let c = Config::load(&path).unwrap();
        let d = Config::default();
        assert_eq!(
            (c.listen_port, c.limits.max_peers, c.max_active_seeds),
            (d.listen_port, d.limits.max_peers, d.max_active_seeds)
        );
        assert_eq!(c.state_dir, path.parent().unwrap().join("state"));
    }
}
