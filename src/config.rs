//! Configuration: the TOML file (`config/btd.toml` documents every key) read into
//! `ConfigFile` with serde defaults, then checked into `Config`. Every key has a default,
//! so an empty file is valid; an unknown key, a wrong type or an impossible value is a
//! `ConfigError` naming the file, the key and the reason.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::EngineConfig;
use crate::torrent::TorrentLimits;

/// A config file that cannot be used. Fatal at start.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {key}: {reason}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ConfigFile {
    network: Network,
    peers: Peers,
    disk: Disk,
    tracker: Tracker,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Network {
    listen_address: String,
    listen_port: u16,
    connect_timeout_secs: u64,
}

impl Default for Network {
    fn default() -> Self {
        Self {
            listen_address: "0.0.0.0".into(),
            listen_port: 6881,
            connect_timeout_secs: 10,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Peers {
    max_per_torrent: usize,
    upload_slots: usize,
}

impl Default for Peers {
    fn default() -> Self {
        Self {
            max_per_torrent: 50,
            upload_slots: 8,
        }
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Tracker {
    numwant: u32,
    announce_timeout_secs: u64,
    stop_timeout_secs: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            numwant: 50,
            announce_timeout_secs: 15,
            stop_timeout_secs: 3,
        }
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen_address: IpAddr,
    pub listen_port: u16,
    pub limits: TorrentLimits,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_file(ConfigFile::default(), Path::new("<defaults>")).expect("defaults are valid")
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
            key: "-".into(),
            reason: format!("cannot read: {e}"),
        })?;
        let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError {
            path: path.to_owned(),
            key: e
                .span()
                .map_or("-".into(), |span| describe_span(&text, span)),
            reason: e.message().to_owned(),
        })?;
        Self::from_file(file, path)
    }

    fn from_file(file: ConfigFile, path: &Path) -> Result<Self, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            path: path.to_owned(),
            key: key.into(),
            reason,
        };
        let listen_address = file
            .network
            .listen_address
            .parse()
            .map_err(|e| err("network.listen_address", format!("{e}")))?;
        let positive = |key: &str, v: u64| {
            if v == 0 {
                Err(err(key, "must be at least 1".into()))
            } else {
                Ok(v)
            }
        };
        positive(
            "network.connect_timeout_secs",
            file.network.connect_timeout_secs,
        )?;
        positive("peers.max_per_torrent", file.peers.max_per_torrent as u64)?;
        positive("disk.hash_threads", file.disk.hash_threads as u64)?;
        positive(
            "tracker.announce_timeout_secs",
            file.tracker.announce_timeout_secs,
        )?;
        Ok(Self {
            listen_address,
            listen_port: file.network.listen_port,
            limits: TorrentLimits {
                max_peers: file.peers.max_per_torrent,
                upload_slots: file.peers.upload_slots,
                connect_timeout: Duration::from_secs(file.network.connect_timeout_secs),
                disk_threads: file.disk.hash_threads,
                numwant: file.tracker.numwant,
                announce_timeout: Duration::from_secs(file.tracker.announce_timeout_secs),
                stop_timeout: Duration::from_secs(file.tracker.stop_timeout_secs),
            },
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
        }
    }
}

/// "line N" plus the text of that line, for errors toml reports by byte span.
fn describe_span(text: &str, span: std::ops::Range<usize>) -> String {
    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    format!("line {line_no} `{line}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError {
            path: "t.toml".into(),
            key: e.span().map_or("-".into(), |s| describe_span(text, s)),
            reason: e.message().to_owned(),
        })?;
        Config::from_file(file, Path::new("t.toml"))
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
        assert!(e.key.contains("line 2"), "{e}");
        assert!(e.reason.contains("listen_prot"), "{e}");
    }

    #[test]
    fn impossible_value_names_the_key() {
        let e = parse("[disk]\nhash_threads = 0\n").unwrap_err();
        assert_eq!(e.key, "disk.hash_threads");
        let e = parse("[network]\nlisten_address = \"nope\"\n").unwrap_err();
        assert_eq!(e.key, "network.listen_address");
    }

    #[test]
    fn shipped_default_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/btd.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.listen_port, Config::default().listen_port);
    }
}
