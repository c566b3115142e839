//! Configuration: the TOML file (`config/btd.toml` documents every key) read into
//! `ConfigFile` with serde defaults, then checked into `Config`. Every key has a default,
//! so an empty file is valid; an unknown key, a wrong type or an impossible value is a
//! `ConfigError` naming the file, the line, the key and the reason.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::EngineConfig;
use crate::magnet::Magnet;
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
    /// syntax or type error.
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
    torrent: Vec<TorrentEntryFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Paths {
    state_dir: PathBuf,
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
    dir: PathBuf,
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
    level: String,
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
    listen_address: String,
    listen_port: u16,
    connect_timeout_secs: u64,
    write_timeout_secs: u64,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            listen_address: "0.0.0.0".into(),
            listen_port: 6881,
            connect_timeout_secs: 10,
            write_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Peers {
    max_per_torrent: usize,
    max_global: usize,
    max_per_ip: usize,
    upload_slots: usize,
}

impl Default for Peers {
    fn default() -> Self {
        Self {
            max_per_torrent: 50,
            max_global: 500,
            max_per_ip: 8,
            upload_slots: 8,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Rates {
    download_kib_per_sec: u64,
    upload_kib_per_sec: u64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Seeding {
    ratio_limit: f64,
    time_limit_mins: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Queue {
    max_active_downloads: usize,
    max_active_seeds: usize,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            max_active_downloads: 5,
            max_active_seeds: 20,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Status {
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
    hash_threads: usize,
}

impl Default for Disk {
    fn default() -> Self {
        Self { hash_threads: 2 }
    }
}

/// The most `announce.stop_timeout_secs` may be: the whole stop, `stopped` announces included,
/// fits in the 5 s a service manager gives (`TimeoutStopSec`).
pub const MAX_STOP_TIMEOUT_SECS: u64 = 4;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Announce {
    numwant: u32,
    timeout_secs: u64,
    stop_timeout_secs: u64,
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
    enabled: bool,
    listen: String,
    interval_secs: u64,
    min_interval_secs: u64,
    max_peers_per_torrent: usize,
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
#[serde(deny_unknown_fields)]
struct TorrentEntryFile {
    path: Option<PathBuf>,
    magnet: Option<String>,
    #[serde(default)]
    download_dir: PathBuf,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    peers: Vec<String>,
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
    pub max_active_downloads: usize,
    pub max_active_seeds: usize,
    pub status_interval: Duration,
    pub limits: TorrentLimits,
    /// The embedded tracker (`[tracker]`), when enabled.
    pub tracker: Option<TrackerConfig>,
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

    /// Parses and validates config text that came from `path`.
    ///
    /// # Errors
    /// A `ConfigError` naming `path`, the line, the key (or the line's text) and the reason.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let (line, key) = match e.span() {
                Some(span) => {
                    let (line, line_text) = line_at(text, span.start);
                    (Some(line), format!("`{line_text}`"))
                }
                None => (None, "-".into()),
            };
            ConfigError {
                path: path.to_owned(),
                line,
                key,
                reason: e.message().trim().to_owned(),
            }
        })?;
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
        let base = path
            .and_then(Path::parent)
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
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
        let rate = |key: &str, kib: u64| {
            kib.checked_mul(1024)
                .ok_or_else(|| err(key, "too large".into()))
        };
        let download_dir = non_empty("paths.download_dir", &file.paths.download_dir)?;
        let tracker = tracker_config(&file.tracker).map_err(|(key, reason)| err(key, reason))?;
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
            max_peers_global: file.peers.max_global,
            max_peers_per_ip: file.peers.max_per_ip,
            download_rate: rate(
                "rates.download_kib_per_sec",
                file.rates.download_kib_per_sec,
            )?,
            upload_rate: rate("rates.upload_kib_per_sec", file.rates.upload_kib_per_sec)?,
            ratio_limit: file.seeding.ratio_limit,
            seed_time_limit: Duration::from_secs(file.seeding.time_limit_mins.saturating_mul(60)),
            max_active_downloads: file.queue.max_active_downloads,
            max_active_seeds: file.queue.max_active_seeds,
            status_interval: Duration::from_secs(file.status.interval_secs),
            limits: TorrentLimits {
                max_peers: file.peers.max_per_torrent,
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
        }
    }
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
