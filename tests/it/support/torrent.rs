//! Torrents made and read by programs that are not btd: mktorrent and libtorrent
//! (`scripts/clients/lt_create.py`) write them, libtorrent (through
//! `scripts/clients/torrent_info.py`) reads them back.

use super::process::run_to_end;
use super::{PYTHON, SHORT, client_script, require_libtorrent, require_program};
use serde::Deserialize;
use std::path::Path;
use std::process::Command;

/// A file of a torrent as libtorrent lists it: the path starts with the torrent's name for a
/// multi-file torrent and is the name alone for a single-file one.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
pub struct TorrentFile {
    pub path: String,
    pub size: u64,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
pub struct Tracker {
    pub url: String,
    pub tier: u32,
}

/// What libtorrent reads from a .torrent file.
#[derive(Debug, Deserialize, Clone)]
pub struct TorrentInfo {
    pub name: String,
    /// v1 info hash, 40 lowercase hex digits.
    pub info_hash: String,
    pub piece_length: u64,
    pub num_pieces: u64,
    pub total_size: u64,
    pub files: Vec<TorrentFile>,
    pub trackers: Vec<Tracker>,
    pub private: bool,
    pub comment: String,
    pub creator: String,
}

impl TorrentInfo {
    /// Reads `torrent` with libtorrent; panics with libtorrent's complaint when it cannot.
    pub fn read(torrent: &Path) -> TorrentInfo {
        require_libtorrent();
        let mut cmd = Command::new(PYTHON);
        cmd.arg(client_script("torrent_info.py")).arg(torrent);
        let out = run_to_end("torrent_info.py", cmd, SHORT);
        out.assert_success();
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "torrent_info.py printed something that is not its JSON ({e}): {}",
                out.description
            )
        })
    }
}

/// Reads each of `torrents` with libtorrent in one process: libtorrent's listing, or its
/// refusal.
pub fn read_each(torrents: &[std::path::PathBuf]) -> Vec<Result<TorrentInfo, String>> {
    require_libtorrent();
    let mut cmd = Command::new(PYTHON);
    cmd.arg(client_script("torrent_info.py"))
        .arg("--each")
        .args(torrents);
    let out = run_to_end("torrent_info.py --each", cmd, SHORT);
    out.assert_success();
    let lines: Vec<_> = out.stdout.lines().collect();
    assert_eq!(lines.len(), torrents.len(), "{}", out.description);
    lines
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            match value["error"].as_str() {
                Some(error) => Err(error.to_owned()),
                None => Ok(serde_json::from_value(value).expect("torrent_info.py's keys")),
            }
        })
        .collect()
}

/// `lt_create.py DIR OUT --piece-length N [--symlinks]`: a torrent as libtorrent 2's
/// `create_torrent` makes it by default (a hybrid with BEP 47 pad files); panics when it fails.
pub fn lt_create(dir: &Path, out: &Path, piece_len: u32, symlinks: bool) {
    require_libtorrent();
    let mut cmd = Command::new(PYTHON);
    cmd.arg(client_script("lt_create.py"))
        .arg(dir)
        .arg(out)
        .arg("--piece-length")
        .arg(piece_len.to_string());
    if symlinks {
        cmd.arg("--symlinks");
    }
    run_to_end("lt_create.py", cmd, SHORT).assert_success();
}

/// `mktorrent -l PIECE_LEN_LOG2 [-a URL]... -o OUT SRC`; panics when it fails.
pub fn mktorrent(src: &Path, out: &Path, piece_len_log2: u32, announce: &[String]) {
    require_program("mktorrent", "mktorrent");
    let mut cmd = Command::new("mktorrent");
    cmd.arg("-l").arg(piece_len_log2.to_string());
    for url in announce {
        cmd.arg("-a").arg(url);
    }
    cmd.arg("-o").arg(out).arg(src);
    run_to_end("mktorrent", cmd, SHORT).assert_success();
}
