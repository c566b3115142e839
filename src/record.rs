//! Torrent records: what the daemon keeps about one torrent beyond its pieces, in the state
//! directory as `<state_dir>/torrents/<hex info hash>.json` (beside a magnet link's fetched
//! `.torrent`). A record belongs to the torrent, not to the config: its data location, when it
//! was added and completed, its lifetime upload and download totals and seeding time survive
//! restarts and changes of `[paths] download_dir`, and so do the renames of its files. The
//! daemon's main thread is the only reader and writer; resume data (`resume.rs`) keeps the
//! pieces, which a recheck may throw away, and a record is never thrown away with them.

use std::io;
use std::path::{Path, PathBuf};

use crate::atomic_file::{self, AtomicFileError};
use crate::metainfo::InfoHash;
use crate::selection::Selection;

/// The format version this build writes and reads.
pub const RECORD_VERSION: u32 = 1;

/// One torrent's lifetime facts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TorrentRecord {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// Lower-case hex.
    pub info_hash: String,
    /// Where its files are (`download_dir/<name>`), fixed when it was first added.
    pub download_dir: PathBuf,
    /// When it was first added, in seconds since the Unix epoch.
    pub added_unix: u64,
    /// When a download of it first completed (or it was first found complete).
    pub completed_unix: Option<u64>,
    /// Payload bytes sent to peers, over every run.
    pub uploaded: u64,
    /// Payload bytes received from peers, over every run (waste included).
    pub downloaded: u64,
    /// Seconds spent seeding (running with every piece), over every run.
    pub seeding_secs: u64,
    /// Seconds spent downloading (running without every piece), over every run.
    #[serde(default)]
    pub downloading_secs: u64,
    /// Seconds spent seeding since a payload byte last went to a peer, over every run (what
    /// the idle limit counts).
    #[serde(default)]
    pub idle_secs: u64,
    /// When a payload byte last moved to or from a peer (seconds since the Unix epoch; 0:
    /// never).
    #[serde(default)]
    pub activity_unix: u64,
    /// Added over the RPC: the daemon adds it again at every start, from the `.torrent` saved
    /// beside this record or from `magnet`.
    #[serde(default)]
    pub added_over_rpc: bool,
    /// The magnet link it was added from over the RPC, until its metadata is saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub magnet: Option<String>,
    /// Paused or started over the RPC: this wins over its `[[torrent]]` entry's `paused` until
    /// that entry changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Its own ratio limit (the RPC's `seedRatioMode` 1 and `seedRatioLimit`, or 2: none)
    /// instead of `[seeding] ratio_limit`.
    #[serde(default, skip_serializing_if = "RatioLimit::is_global")]
    pub ratio_limit: RatioLimit,
    /// Its own idle limit (the RPC's `seedIdleMode` 1 and `seedIdleLimit`, or 2: none) instead
    /// of `[seeding] idle_limit_mins`.
    #[serde(default, skip_serializing_if = "IdleLimit::is_global")]
    pub idle_limit: IdleLimit,
    /// Labels given over the RPC (Sonarr and Radarr tag their torrents with them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// Its own peer limit (the RPC's `peer-limit`) instead of `[peers] max_per_torrent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_limit: Option<usize>,
    /// Its own download and upload rates, inside the global ones (the RPC's `downloadLimit`
    /// and `downloadLimited`, `uploadLimit` and `uploadLimited`).
    #[serde(default, skip_serializing_if = "OwnRates::is_none")]
    pub rates: OwnRates,
    /// Which files are wanted and how urgently (the RPC's `files-wanted`/`files-unwanted` and
    /// `priority-*`); empty: every file, normal.
    #[serde(default, skip_serializing_if = "Selection::is_all")]
    pub files: Selection,
    /// Its place in the queue (0 first): the order queued torrents start in, kept across
    /// restarts. Older records have none; they keep the order they are added in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
    /// A move of its files to this directory has begun and not finished: saved before the
    /// first file moves and cleared (with `download_dir` set to it) once the last has, or once
    /// a failed move put every file back. While it is set, the files may be split between
    /// `download_dir` and here, and the daemon finishes the move before it checks or runs
    /// the torrent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_to: Option<PathBuf>,
    /// Files and directories renamed over the RPC (`torrent-rename-path`), in the order they
    /// were: applied again to the torrent's file list whenever it is loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renames: Vec<PathRename>,
}

/// One `torrent-rename-path`: the path (as the file list spelt it then) and its new last
/// component.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathRename {
    pub path: String,
    pub name: String,
}

/// A torrent's own rate limits, in the RPC's kB/s (1000 bytes); each applies while it is on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnRates {
    pub download_kbps: u64,
    pub download_limited: bool,
    pub upload_kbps: u64,
    pub upload_limited: bool,
}

impl OwnRates {
    fn is_none(&self) -> bool {
        *self == OwnRates::default()
    }

    /// Download bytes per second, 0 for none.
    #[must_use]
    pub fn download_bytes(&self) -> u64 {
        if self.download_limited {
            self.download_kbps.saturating_mul(1000).max(1)
        } else {
            0
        }
    }

    /// Upload bytes per second, 0 for none.
    #[must_use]
    pub fn upload_bytes(&self) -> u64 {
        if self.upload_limited {
            self.upload_kbps.saturating_mul(1000).max(1)
        } else {
            0
        }
    }
}

/// Which ratio limit a torrent follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RatioLimit {
    /// `[seeding] ratio_limit`.
    #[default]
    Global,
    /// Its own.
    Own(f64),
    /// None: it seeds whatever its ratio.
    Unlimited,
}

impl RatioLimit {
    fn is_global(&self) -> bool {
        *self == RatioLimit::Global
    }
}

/// Which idle limit a torrent follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleLimit {
    /// `[seeding] idle_limit_mins`.
    #[default]
    Global,
    /// Its own, in minutes.
    OwnMins(u64),
    /// None: it seeds however long nobody downloads.
    Unlimited,
}

impl IdleLimit {
    fn is_global(&self) -> bool {
        *self == IdleLimit::Global
    }
}

/// A record that could not be read or written, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("torrent record: {0}")]
    Save(#[from] AtomicFileError),
    #[error("{path}: cannot read the torrent record: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: not a valid torrent record: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl TorrentRecord {
    /// A new torrent's record: added now, into `download_dir`, nothing moved yet.
    #[must_use]
    pub fn new(info_hash: &InfoHash, download_dir: &Path) -> Self {
        Self {
            version: RECORD_VERSION,
            info_hash: info_hash.to_hex(),
            download_dir: download_dir.to_owned(),
            added_unix: unix_now(),
            completed_unix: None,
            uploaded: 0,
            downloaded: 0,
            seeding_secs: 0,
            downloading_secs: 0,
            idle_secs: 0,
            activity_unix: 0,
            added_over_rpc: false,
            magnet: None,
            paused: None,
            ratio_limit: RatioLimit::Global,
            idle_limit: IdleLimit::Global,
            labels: Vec::new(),
            peer_limit: None,
            rates: OwnRates::default(),
            files: Selection::all(),
            queue_position: None,
            moving_to: None,
            renames: Vec::new(),
        }
    }

    /// `<state_dir>/torrents/<hex info hash>.json`.
    #[must_use]
    pub fn path_in(state_dir: &Path, info_hash: &InfoHash) -> PathBuf {
        state_dir
            .join("torrents")
            .join(format!("{}.json", info_hash.to_hex()))
    }

    /// `<state_dir>/torrents/<hex info hash>.parts`: the part file, which holds the bytes of
    /// wanted pieces that lie in files nobody wants (see `storage.rs`).
    #[must_use]
    pub fn part_path_in(state_dir: &Path, info_hash: &InfoHash) -> PathBuf {
        state_dir
            .join("torrents")
            .join(format!("{}.parts", info_hash.to_hex()))
    }

    /// Reads the record at `path`; `Ok(None)` when there is none.
    ///
    /// # Errors
    /// `Read` when it exists but cannot be read; `Invalid` when it is not a record of this
    /// version for `info_hash`.
    pub fn load(path: &Path, info_hash: &InfoHash) -> Result<Option<Self>, RecordError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RecordError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let invalid = |reason: String| RecordError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let record: Self = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if record.version != RECORD_VERSION {
            return Err(invalid(format!(
                "format version {}, this btd reads {RECORD_VERSION}",
                record.version
            )));
        }
        if !record.info_hash.eq_ignore_ascii_case(&info_hash.to_hex()) {
            return Err(invalid(format!(
                "recorded for torrent {}, not {info_hash}",
                record.info_hash
            )));
        }
        Ok(Some(record))
    }

    /// Replaces the file at `path` atomically (see `atomic_file`).
    ///
    /// # Errors
    /// The step that failed, naming the file; the old record is then still in place.
    pub fn save(&self, path: &Path) -> Result<(), RecordError> {
        Ok(atomic_file::write_json(path, self)?)
    }

    /// The file [`TorrentRecord::save`] writes, for saving many at once
    /// (`atomic_file::write_many`).
    #[must_use]
    pub fn to_file_bytes(&self) -> Vec<u8> {
        // A record is plain data (strings, numbers, paths as strings): it always encodes.
        let mut json = serde_json::to_vec_pretty(self).unwrap_or_default();
        json.push(b'\n');
        json
    }

    /// Whether `self` and `other` differ in more than their clocks (seconds seeded,
    /// downloaded and idle, which move every second a torrent runs).
    #[must_use]
    pub fn differs_beyond_clocks(&self, other: &Self) -> bool {
        let mut other = other.clone();
        other.seeding_secs = self.seeding_secs;
        other.downloading_secs = self.downloading_secs;
        other.idle_secs = self.idle_secs;
        *self != other
    }
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TempDir;

    fn hash(byte: u8) -> InfoHash {
        InfoHash([byte; 20])
    }

    #[test]
    fn a_record_round_trips_and_a_missing_one_is_none() {
        let dir = TempDir::new("record");
        let path = TorrentRecord::path_in(&dir.0, &hash(7));
        assert!(path.ends_with(format!("torrents/{}.json", hash(7).to_hex())));
        assert!(TorrentRecord::load(&path, &hash(7)).unwrap().is_none());
        let mut record = TorrentRecord::new(&hash(7), Path::new("/srv/data"));
        record.uploaded = 3 << 30;
        record.downloaded = 1 << 30;
        record.seeding_secs = 86_400;
        record.completed_unix = Some(1_700_000_000);
        record.save(&path).unwrap();
        assert!(
            !std::fs::read_to_string(&path).unwrap().contains("renames"),
            "an older btd reads what this one writes without renames"
        );
        assert_eq!(
            TorrentRecord::load(&path, &hash(7)).unwrap(),
            Some(record.clone())
        );
        record.renames.push(PathRename {
            path: "t/a".into(),
            name: "b".into(),
        });
        record.save(&path).unwrap();
        assert_eq!(TorrentRecord::load(&path, &hash(7)).unwrap(), Some(record));
    }

    #[test]
    fn a_record_without_the_later_fields_loads_with_their_defaults() {
        let dir = TempDir::new("record-old");
        let path = dir.0.join("old.json");
        let old = format!(
            r#"{{"version": 1, "info_hash": "{}", "download_dir": "/srv/data",
                "added_unix": 5, "completed_unix": null, "uploaded": 1, "downloaded": 2,
                "seeding_secs": 3}}"#,
            hash(4).to_hex()
        );
        std::fs::write(&path, old).unwrap();
        let record = TorrentRecord::load(&path, &hash(4)).unwrap().unwrap();
        assert_eq!((record.queue_position, &record.moving_to), (None, &None));
        assert_eq!(record.download_dir, Path::new("/srv/data"));
        // Unset, they are not written either.
        record.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("queue_position") && !text.contains("moving_to"),
            "{text}"
        );
    }

    #[test]
    fn a_record_of_another_torrent_or_version_or_garbage_is_refused_naming_the_file() {
        let dir = TempDir::new("record-bad");
        let path = dir.0.join("r.json");
        TorrentRecord::new(&hash(1), Path::new("d"))
            .save(&path)
            .unwrap();
        let err = TorrentRecord::load(&path, &hash(2))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("r.json") && err.contains("recorded for torrent"),
            "{err}"
        );

        let mut old = TorrentRecord::new(&hash(1), Path::new("d"));
        old.version = 99;
        old.save(&path).unwrap();
        let err = TorrentRecord::load(&path, &hash(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("format version 99"), "{err}");

        std::fs::write(&path, "{\"version\": 1, \"info_ha").unwrap();
        let err = TorrentRecord::load(&path, &hash(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid torrent record"), "{err}");
    }
}
