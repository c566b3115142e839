//! The status file: a snapshot of the daemon and its torrents that the daemon rewrites every
//! `status.interval_secs` as `<state_dir>/status.json` and `btd status` reads. Owns that file's
//! format, its atomic replacement, and the text table printed by `btd status` (and by
//! `btd list`, from the RPC's answer) and logged on SIGUSR1. No threads, no sockets; the
//! daemon's main thread writes, any process reads.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The widest a name column gets, in terminal columns; longer names end in an ellipsis.
const NAME_WIDTH_MAX: usize = 40;
/// Between two columns.
const GAP: &str = "  ";

/// The daemon and every torrent it has, as of `updated_unix`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    /// When this snapshot was taken, in seconds since the Unix epoch.
    pub updated_unix: u64,
    /// The address peers connect to.
    pub listen: String,
    pub torrents: Vec<TorrentStatus>,
    /// The embedded tracker, when `[tracker] enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracker: Option<TrackerStatus>,
    /// Where the RPC answers (the real port when `[rpc] listen` says 0), while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpc: Option<String>,
    /// The DHT, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dht: Option<DhtStatus>,
    /// The process's peer budget (`peers.max_global`): its slots held by peer connections,
    /// open or being dialled, across all torrents.
    #[serde(default)]
    pub peer_slots: PeerSlots,
}

/// The peer budget in a [`DaemonStatus`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerSlots {
    pub used: usize,
    pub max: usize,
}

/// The DHT in a [`DaemonStatus`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DhtStatus {
    /// Its UDP port.
    pub port: u16,
    /// Nodes in its routing tables (IPv4 and IPv6 together).
    pub nodes: usize,
}

/// The embedded tracker in a [`DaemonStatus`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrackerStatus {
    /// Where it answers HTTP and UDP.
    pub listen: String,
    /// Torrents with at least one peer.
    pub torrents: usize,
    /// Peers over all its torrents.
    pub peers: usize,
}

/// One torrent in a [`DaemonStatus`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TorrentStatus {
    /// A small number naming the torrent while this daemon runs.
    #[serde(default)]
    pub id: u32,
    pub name: String,
    /// Lower-case hex; empty for a `[[torrent]]` whose file could not be read.
    pub info_hash: String,
    /// `metadata`, `queued` (for a download slot), `queued_seed` (complete, for a seed slot),
    /// `checking`, `downloading`, `seeding`, `paused`, `finished` (a seeding limit stopped it),
    /// `stopped` (the daemon stopped cleanly), `low-space` (not downloading while its file
    /// system has too little free space: see `free_bytes`, `needed_bytes`) or `error`.
    pub state: String,
    /// Verified fraction of the wanted data (every file unless some are skipped), 0 to 1.
    pub progress: f64,
    /// While `checking`: the fraction of pieces checked so far, 0 to 1.
    #[serde(default)]
    pub check_progress: Option<f64>,
    pub size_bytes: u64,
    /// Verified bytes.
    #[serde(default)]
    pub have_bytes: u64,
    /// Seconds left at the current rate, while downloading with a rate.
    #[serde(default)]
    pub eta_secs: Option<u64>,
    /// Where its files are (`download_dir/<name>`).
    #[serde(default)]
    pub download_dir: String,
    /// When it was first added, in seconds since the Unix epoch.
    #[serde(default)]
    pub added_unix: u64,
    /// Seconds spent seeding over its whole life.
    #[serde(default)]
    pub seeding_secs: u64,
    /// Payload bytes received over its whole life (across restarts).
    pub downloaded_bytes: u64,
    /// Payload bytes sent over its whole life (across restarts).
    pub uploaded_bytes: u64,
    /// Bytes per second.
    pub download_rate: u64,
    /// Bytes per second.
    pub upload_rate: u64,
    pub peers: u32,
    /// Web seeds (BEP 19) running beside the peers.
    #[serde(default)]
    pub web_seeds: u32,
    /// The connected peers (and web seeds) by where their address came from.
    #[serde(default)]
    pub peers_by_source: PeerSourceCounts,
    pub ratio: f64,
    /// Why the torrent is in state `error`.
    pub error: Option<String>,
    /// Where the torrent came from: `config`, or the watch-directory file's path.
    pub source: String,
    /// The swarm as its tracker last counted it (announce reply or scrape), when known.
    #[serde(default)]
    pub swarm: Option<SwarmCounts>,
    /// While `low-space`: the bytes free on the file system of its data, at the last look.
    #[serde(default)]
    pub free_bytes: Option<u64>,
    /// While `low-space`: the bytes it still has to write (what is left of its wanted files).
    #[serde(default)]
    pub needed_bytes: Option<u64>,
    /// A tracker refused its announces (its `failure reason`): `URL: reason`, while that
    /// tracker's last answer was the refusal. The torrent runs on with its other peer sources.
    #[serde(default)]
    pub tracker_error: Option<String>,
}

/// Connected peers of a torrent by source (`torrent::PeerSource`): a tracker, the DHT, peer
/// exchange, local service discovery, peers that connected to us, web seeds, and addresses the
/// user gave (`--peer`, `x.pe`, `[[torrent]] peers`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PeerSourceCounts {
    pub tracker: u32,
    pub dht: u32,
    pub pex: u32,
    pub lsd: u32,
    pub incoming: u32,
    pub web_seed: u32,
    pub manual: u32,
}

impl From<crate::torrent::PeersBySource> for PeerSourceCounts {
    fn from(by: crate::torrent::PeersBySource) -> Self {
        use crate::torrent::PeerSource as S;
        Self {
            tracker: by.get(S::Tracker),
            dht: by.get(S::Dht),
            pex: by.get(S::Pex),
            lsd: by.get(S::Lsd),
            incoming: by.get(S::Incoming),
            web_seed: by.get(S::WebSeed),
            manual: by.get(S::Manual),
        }
    }
}

impl PeerSourceCounts {
    /// `2 tracker, 1 pex`: the non-zero counts in a fixed order; empty when there are none.
    #[must_use]
    pub fn summary(&self) -> String {
        [
            (self.tracker, "tracker"),
            (self.dht, "dht"),
            (self.pex, "pex"),
            (self.lsd, "lsd"),
            (self.incoming, "incoming"),
            (self.web_seed, "web seed"),
            (self.manual, "manual"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, name)| format!("{n} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Seeders, leechers and completed downloads a tracker reports for a torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwarmCounts {
    pub seeders: u32,
    pub leechers: u32,
    pub completed: u32,
}

/// A status file that could not be written or read, naming the file and the operation.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{path}: cannot encode the status: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: cannot write the status: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{from}: cannot rename to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("{path}: cannot read the status: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: not a valid status file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl DaemonStatus {
    /// This process, nothing else known yet: what the daemon refreshes before each write.
    #[must_use]
    pub fn empty() -> Self {
        Self {
            pid: std::process::id(),
            updated_unix: 0,
            listen: String::new(),
            torrents: Vec::new(),
            tracker: None,
            rpc: None,
            dht: None,
            peer_slots: PeerSlots::default(),
        }
    }

    /// `<state_dir>/status.json`.
    #[must_use]
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join("status.json")
    }

    /// Replaces the status file atomically (`<path>.tmp`, then rename), so a reader never sees
    /// half a file. Not synced to disk: after a crash a stale or missing status file is harmless,
    /// and syncing every few seconds would cost more than it protects.
    ///
    /// # Errors
    /// `Write` or `Rename` naming the file (the directory must exist), `Encode` if serialising
    /// fails.
    pub fn save(&self, path: &Path) -> Result<(), StatusError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        // Streamed through a small buffer: at 10,000 torrents the text is megabytes.
        let written = self.write_to(&tmp);
        let renamed = written.and_then(|()| {
            fs::rename(&tmp, path).map_err(|source| StatusError::Rename {
                from: tmp.clone(),
                to: path.to_owned(),
                source,
            })
        });
        if renamed.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        renamed
    }

    /// Writes the JSON text, and a newline, to a new file at `path`.
    fn write_to(&self, path: &Path) -> Result<(), StatusError> {
        let write = |source| StatusError::Write {
            path: path.to_owned(),
            source,
        };
        let mut out =
            io::BufWriter::with_capacity(64 << 10, fs::File::create(path).map_err(write)?);
        serde_json::to_writer_pretty(&mut out, self).map_err(|source| {
            if source.is_io() {
                write(source.into())
            } else {
                StatusError::Encode {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        out.write_all(b"\n")
            .and_then(|()| out.flush())
            .map_err(write)
    }

    /// Reads a status file.
    ///
    /// # Errors
    /// `Read` when it cannot be read (also when it does not exist: no daemon wrote one), `Parse`
    /// when it is not a status file; both name the file.
    pub fn load(path: &Path) -> Result<Self, StatusError> {
        let bytes = fs::read(path).map_err(|source| StatusError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| StatusError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The table `btd status` prints and SIGUSR1 logs: [`torrent_table`] of its torrents, then,
    /// with the embedded tracker, a line `tracker on ADDR: N torrents, M peers`.
    #[must_use]
    pub fn table(&self) -> String {
        let mut out = torrent_table(&self.torrents);
        if let Some(tracker) = &self.tracker {
            out.push_str(&format!(
                "tracker on {}: {} torrents, {} peers\n",
                tracker.listen, tracker.torrents, tracker.peers
            ));
        }
        if let Some(dht) = &self.dht {
            out.push_str(&format!(
                "dht on UDP port {}: {} nodes\n",
                dht.port, dht.nodes
            ));
        }
        out
    }
}

/// The torrent table of `btd status`, SIGUSR1's log and `btd list`: a header `ID NAME STATE SIZE
/// HAVE PROGRESS DOWN UP ETA PEERS RATIO` (and `SWARM` when a tracker counted one), one row per
/// torrent, then, for each torrent with an error, a line `error: NAME: message` (`low-space: NAME:
/// FREE free, NEEDED to write` while it waits for space, `tracker: NAME: URL: reason` while a
/// tracker refuses it), and last a totals
/// row (torrent count, summed sizes, rates and peers) aligned under the columns. Progress is a
/// percent with one decimal, rounded down (100.0% only when complete); a checking torrent's state
/// shows how far the check is (`checking 37.5%`); sizes and rates are in binary units like the rate
/// limits (`8.0 MiB`, `1.2 MiB/s`); ratio has two decimals. Column widths come from the content;
/// names wider than 40 columns are cut with an ellipsis. Control and bidirectional-override
/// characters in names (which come from strangers' torrents) are shown as `?`. Every line ends in
/// `\n`; none has trailing spaces.
#[must_use]
pub fn torrent_table(torrents: &[TorrentStatus]) -> String {
    const HEADER: [&str; 12] = [
        "ID", "NAME", "STATE", "SIZE", "HAVE", "PROGRESS", "DOWN", "UP", "ETA", "PEERS", "RATIO",
        "SWARM",
    ];
    // Every column but NAME and STATE holds numbers, aligned on the right.
    const RIGHT: [bool; 12] = [
        true, false, false, true, true, true, true, true, true, true, true, true,
    ];
    // SWARM (seeders/leechers/completed from the tracker) only when a tracker told us.
    let columns = if torrents.iter().any(|t| t.swarm.is_some()) {
        12
    } else {
        11
    };

    let mut rows: Vec<Vec<String>> =
        vec![HEADER[..columns].iter().map(|h| (*h).to_owned()).collect()];
    for t in torrents {
        let state = match t.check_progress {
            Some(done) => format!("{} {}", printable(&t.state), percent(done)),
            None => printable(&t.state),
        };
        let mut row = vec![
            t.id.to_string(),
            printable(&t.name),
            state,
            bytes(t.size_bytes),
            bytes(t.have_bytes),
            percent(t.progress),
            rate(t.download_rate),
            rate(t.upload_rate),
            t.eta_secs.map_or_else(|| "-".to_owned(), eta),
            if t.web_seeds > 0 {
                format!("{}+{}ws", t.peers, t.web_seeds)
            } else {
                t.peers.to_string()
            },
            ratio(t.ratio),
        ];
        if columns == 12 {
            row.push(t.swarm.map_or_else(
                || "-".to_owned(),
                |s| format!("{}/{}/{}", s.seeders, s.leechers, s.completed),
            ));
        }
        rows.push(row);
    }
    let count = torrents.len();
    let sum = |f: fn(&TorrentStatus) -> u64| torrents.iter().map(f).fold(0u64, u64::saturating_add);
    // The count goes in the (left-aligned) NAME column, the sums under theirs.
    let mut totals = vec![
        String::new(),
        format!("{count} torrent{}", if count == 1 { "" } else { "s" }),
        String::new(),
        bytes(sum(|t| t.size_bytes)),
        bytes(sum(|t| t.have_bytes)),
        String::new(),
        rate(sum(|t| t.download_rate)),
        rate(sum(|t| t.upload_rate)),
        String::new(),
        sum(|t| u64::from(t.peers)).to_string(),
        String::new(),
    ];
    totals.resize(columns, String::new());
    rows.push(totals);

    let mut widths = vec![0usize; columns];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(display_width(cell));
        }
    }
    widths[1] = widths[1].min(NAME_WIDTH_MAX);

    let line = |row: &Vec<String>| {
        let mut out = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                out.push_str(GAP);
            }
            let cell = truncate(cell, widths[i]);
            let pad = " ".repeat(widths[i] - display_width(&cell));
            if RIGHT[i] {
                out.push_str(&pad);
                out.push_str(&cell);
            } else {
                out.push_str(&cell);
                out.push_str(&pad);
            }
        }
        let mut out = out.trim_end().to_owned();
        out.push('\n');
        out
    };

    let (totals, body) = rows.split_last().expect("header and totals rows");
    let mut out: String = body.iter().map(line).collect();
    for t in torrents {
        if let Some(error) = &t.error {
            out.push_str(&format!(
                "error: {}: {}\n",
                printable(&t.name),
                printable(error)
            ));
        }
        if let (Some(free), Some(needed)) = (t.free_bytes, t.needed_bytes) {
            out.push_str(&format!(
                "low-space: {}: {} free, {} to write\n",
                printable(&t.name),
                bytes(free),
                bytes(needed)
            ));
        }
        if let Some(refusal) = &t.tracker_error {
            out.push_str(&format!(
                "tracker: {}: {}\n",
                printable(&t.name),
                printable(refusal)
            ));
        }
        let sources = t.peers_by_source.summary();
        if !sources.is_empty() {
            out.push_str(&format!("peers: {}: {sources}\n", printable(&t.name)));
        }
    }
    out.push_str(&line(totals));
    out
}

/// `n` bytes in binary units (the unit family of the rate limits, KiB), with one decimal from
/// 1 KiB on: `0 B`, `1023 B`, `1.0 KiB`, `8.0 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Precision loss is fine: one decimal is shown.
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    // 1023.95 would print as "1024.0": move up a unit first.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `n` bytes per second, in the units of [`bytes`]: `1.2 MiB/s`.
pub(crate) fn rate(bytes_per_sec: u64) -> String {
    format!("{}/s", bytes(bytes_per_sec))
}

/// A time left: `42s`, `3m05s`, `2h07m`, `3d04h`.
pub(crate) fn eta(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// A fraction as a percent with one decimal, rounded down so only 1 shows as 100.0%.
pub(crate) fn percent(progress: f64) -> String {
    let clamped = if progress.is_nan() {
        0.0
    } else {
        progress.clamp(0.0, 1.0)
    };
    format!("{:.1}%", (clamped * 1000.0).floor() / 10.0)
}

pub(crate) fn ratio(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.2}")
    } else if ratio.is_nan() {
        "-".to_owned()
    } else {
        "∞".to_owned()
    }
}

/// `text` with characters that would break the table or the terminal (control characters,
/// bidirectional overrides) replaced by `?`.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// `text` cut to at most `width` columns, ending in `…` when cut.
fn truncate(text: &str, width: usize) -> String {
    if display_width(text) <= width {
        return text.to_owned();
    }
    let room = width.saturating_sub(1);
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = char_width(c);
        if used + w > room {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

fn display_width(text: &str) -> usize {
    text.chars().map(char_width).sum()
}

/// Terminal columns of `c`: 0 for combining marks and zero-width characters, 2 for East Asian
/// wide and fullwidth characters and emoji, 1 otherwise. An approximation of Unicode's East Asian
/// Width covering the common blocks, so alignment needs no extra dependency.
fn char_width(c: char) -> usize {
    match u32::from(c) {
        0x0300..=0x036F
        | 0x0483..=0x0489
        | 0x0591..=0x05BD
        | 0x0610..=0x061A
        | 0x064B..=0x065F
        | 0x0E31
        | 0x0E34..=0x0E3A
        | 0x0E47..=0x0E4E
        | 0x1AB0..=0x1AFF
        | 0x1DC0..=0x1DFF
        | 0x200B..=0x200F
        | 0x2060..=0x2064
        | 0x20D0..=0x20FF
        | 0xFE00..=0xFE0F
        | 0xFE20..=0xFE2F
        | 0xFEFF => 0,
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xA960..=0xA97F
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x2FFFD
        | 0x30000..=0x3FFFD => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn torrent(name: &str, state: &str, progress: f64, down: u64, up: u64) -> TorrentStatus {
        TorrentStatus {
            id: 7,
            name: name.to_owned(),
            info_hash: "ab".repeat(20),
            state: state.to_owned(),
            progress,
            check_progress: None,
            size_bytes: 1 << 30,
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            have_bytes: (progress * f64::from(1u32 << 30)) as u64,
            eta_secs: None,
            download_dir: "/srv/downloads".to_owned(),
            added_unix: 1_700_000_000,
            seeding_secs: 0,
            downloaded_bytes: 1 << 29,
            uploaded_bytes: 1 << 28,
            download_rate: down,
            upload_rate: up,
            peers: 3,
            web_seeds: 0,
            peers_by_source: PeerSourceCounts::default(),
            ratio: 0.5,
            error: None,
            source: "config".to_owned(),
            swarm: None,
            free_bytes: None,
            needed_bytes: None,
            tracker_error: None,
        }
    }

    fn status(torrents: Vec<TorrentStatus>) -> DaemonStatus {
        DaemonStatus {
            pid: 4242,
            updated_unix: 1_700_000_000,
            listen: "0.0.0.0:6881".to_owned(),
            torrents,
            tracker: None,
            rpc: None,
            dht: None,
            peer_slots: PeerSlots::default(),
        }
    }

    /// A path under the system temp dir, unique to this test, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(test: &str) -> Self {
            Self(
                std::env::temp_dir().join(format!("btd-status-{}-{test}.json", std::process::id())),
            )
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    #[test]
    fn round_trips_through_the_file() {
        let file = TempFile::new("round-trip");
        let mut errored = torrent("b", "error", 1.0 / 3.0, 0, 0);
        errored.error = Some("disk full".into());
        errored.source = "/watch/b.torrent".into();
        errored.ratio = 0.1;
        let original = status(vec![torrent("a", "seeding", 1.0, 0, 123_456), errored]);
        original.save(&file.0).unwrap();
        assert_eq!(DaemonStatus::load(&file.0).unwrap(), original);

        // Saving again replaces the file whole.
        let smaller = status(vec![]);
        smaller.save(&file.0).unwrap();
        assert_eq!(DaemonStatus::load(&file.0).unwrap(), smaller);
        assert_eq!(
            DaemonStatus::path_in(Path::new("/var/lib/btd")),
            Path::new("/var/lib/btd/status.json")
        );
    }

    #[test]
    fn table_has_a_line_of_peers_by_source_for_each_torrent_with_peers() {
        let mut busy = torrent("busy", "downloading", 0.5, 1024, 0);
        busy.peers_by_source = PeerSourceCounts {
            tracker: 2,
            pex: 1,
            lsd: 3,
            web_seed: 1,
            ..PeerSourceCounts::default()
        };
        let quiet = torrent("quiet", "seeding", 1.0, 0, 0);
        let table = torrent_table(&[busy, quiet]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[3], "peers: busy: 2 tracker, 1 pex, 3 lsd, 1 web seed",
            "{table}"
        );
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[4].contains("2 torrents"), "{table}");
    }

    #[test]
    fn table_says_why_a_torrent_waits_for_space_and_which_tracker_refuses_it() {
        let mut low = torrent("low", "low-space", 0.25, 0, 0);
        low.free_bytes = Some(3 << 20);
        low.needed_bytes = Some(6 << 20);
        let mut refused = torrent("refused", "downloading", 0.5, 1024, 0);
        refused.tracker_error = Some("http://t.example/announce: unregistered torrent".into());
        let table = torrent_table(&[low.clone(), refused.clone()]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].contains("low-space"), "{table}");
        assert_eq!(lines[3], "low-space: low: 3.0 MiB free, 6.0 MiB to write");
        assert_eq!(
            lines[4],
            "tracker: refused: http://t.example/announce: unregistered torrent"
        );
        let file = TempFile::new("low-space");
        let original = status(vec![low, refused]);
        original.save(&file.0).unwrap();
        assert_eq!(DaemonStatus::load(&file.0).unwrap(), original);
        let text = fs::read_to_string(&file.0).unwrap();
        assert!(text.contains("\"free_bytes\": 3145728"), "{text}");
    }

    #[test]
    fn garbage_or_missing_files_are_errors_naming_the_file() {
        let file = TempFile::new("garbage");
        for text in [
            "",
            "not json",
            "{\"pid\": 1}",
            "{\"pid\": 1, \"updated_unix\"",
        ] {
            fs::write(&file.0, text).unwrap();
            let err = DaemonStatus::load(&file.0).unwrap_err();
            assert!(
                matches!(err, StatusError::Parse { .. }),
                "{text:?}: {err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("{}: not a valid status file", file.0.display())),
                "{err}"
            );
        }
        fs::remove_file(&file.0).unwrap();
        let err = DaemonStatus::load(&file.0).unwrap_err();
        assert!(matches!(err, StatusError::Read { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&file.0.display().to_string()));
    }

    #[test]
    fn table_ends_with_the_dht_line_while_it_runs_and_json_keeps_it() {
        let mut s = status(Vec::new());
        assert!(!s.table().contains("dht"));
        s.dht = Some(DhtStatus {
            port: 6881,
            nodes: 42,
        });
        assert!(
            s.table().ends_with("dht on UDP port 6881: 42 nodes\n"),
            "{}",
            s.table()
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["dht"], serde_json::json!({"port": 6881, "nodes": 42}));
        let back: DaemonStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn table_shows_the_swarm_column_when_a_tracker_counted() {
        let mut t = torrent("x", "seeding", 1.0, 0, 0);
        t.swarm = Some(SwarmCounts {
            seeders: 12,
            leechers: 4,
            completed: 99,
        });
        let table = status(vec![t, torrent("y", "queued", 0.0, 0, 0)]).table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("RATIO    SWARM"), "{table}");
        assert!(lines[1].ends_with("12/4/99"), "{table}");
        assert!(lines[2].ends_with('-'), "{table}");
    }

    #[test]
    fn table_of_no_torrents_has_a_header_and_zero_totals() {
        assert_eq!(
            status(vec![]).table(),
            "\
ID  NAME        STATE  SIZE  HAVE  PROGRESS   DOWN     UP  ETA  PEERS  RATIO
    0 torrents          0 B   0 B            0 B/s  0 B/s           0
"
        );
    }

    #[test]
    fn table_aligns_long_and_unicode_names() {
        let long = "A.Very.Long.Torrent.Name.That.Goes.On.And.On.2024.1080p";
        let mut table = status(vec![
            torrent(long, "downloading", 0.42, 1_234_567, 0),
            torrent("日本語のファイル", "seeding", 1.0, 0, 56_000),
            torrent("Caf\u{e9}\u{301} \u{1f3b5}", "checking", 0.99999, 999, 1000),
        ]);
        table.torrents[1].peers = 12;
        table.torrents[2].ratio = 12.3;
        table.torrents[0].eta_secs = Some(3725);
        table.torrents[2].check_progress = Some(0.375);
        for (i, t) in table.torrents.iter_mut().enumerate() {
            t.id = u32::try_from(i).unwrap() + 1;
        }
        // Written by hand: the CJK name is 16 columns, the combining accent takes none and the
        // emoji two, the long name is cut to 39 columns plus the ellipsis. 0.42 GiB is 430.1 MiB,
        // 1,234,567 B/s 1.2 MiB/s, 56,000 B/s 54.7 KiB/s; 1000 B/s is under a KiB.
        let expected = "\
ID  NAME                                      STATE              SIZE       HAVE  PROGRESS       DOWN          UP    ETA  PEERS  RATIO
 1  A.Very.Long.Torrent.Name.That.Goes.On.A…  downloading     1.0 GiB  430.1 MiB     42.0%  1.2 MiB/s       0 B/s  1h02m      3   0.50
 2  日本語のファイル                          seeding         1.0 GiB    1.0 GiB    100.0%      0 B/s  54.7 KiB/s      -     12   0.50
 3  Caf\u{e9}\u{301} \u{1f3b5}                                   checking 37.5%  1.0 GiB    1.0 GiB     99.9%    999 B/s    1000 B/s      -      3  12.30
    3 torrents                                                3.0 GiB    2.4 GiB            1.2 MiB/s  55.7 KiB/s            18
";
        assert_eq!(table.table(), expected);
    }

    #[test]
    fn names_cut_to_forty_columns_even_when_wide() {
        let wide = "漢".repeat(30);
        let table = status(vec![torrent(&wide, "seeding", 1.0, 0, 0)]).table();
        let row = table.lines().nth(1).unwrap();
        // 19 wide characters (38 columns) and the ellipsis fit in 40; a 20th would not.
        let expected_name = format!(" 7  {}… ", "漢".repeat(19));
        assert!(row.starts_with(&expected_name), "{row}");
        let header = table.lines().next().unwrap();
        assert_eq!(display_width(row), display_width(header));
    }

    #[test]
    fn hostile_names_cannot_break_lines_or_drive_the_terminal() {
        let mut t = torrent("evil\n\u{1b}[2Jname\u{202E}txt", "error", 0.0, 0, 0);
        t.error = Some("cannot open\rfile".into());
        let table = status(vec![t]).table();
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(!table.contains(['\u{1b}', '\r', '\u{202E}']));
        assert!(table.contains("evil??[2Jname?txt"), "{table}");
        assert_eq!(
            table.lines().nth(2).unwrap(),
            "error: evil??[2Jname?txt: cannot open?file"
        );
    }

    #[test]
    fn rates_progress_and_ratio_format() {
        let rates: Vec<_> = [0, 1023, 1024, 1_234_567, 1_048_523, 1_048_525, u64::MAX]
            .into_iter()
            .map(rate)
            .collect();
        assert_eq!(
            rates,
            [
                "0 B/s",
                "1023 B/s",
                "1.0 KiB/s",
                "1.2 MiB/s",
                "1023.9 KiB/s",
                "1.0 MiB/s",
                "16.0 EiB/s"
            ]
        );
        let etas: Vec<_> = [0, 59, 60, 3599, 3600, 86_399, 86_400 * 3 + 3600 * 4]
            .into_iter()
            .map(eta)
            .collect();
        assert_eq!(
            etas,
            ["0s", "59s", "1m00s", "59m59s", "1h00m", "23h59m", "3d04h"]
        );
        let percents: Vec<_> = [0.0, 0.0004, 0.5, 0.99999, 1.0, 1.5, -1.0, f64::NAN]
            .into_iter()
            .map(percent)
            .collect();
        assert_eq!(
            percents,
            [
                "0.0%", "0.0%", "50.0%", "99.9%", "100.0%", "100.0%", "0.0%", "0.0%"
            ]
        );
        let ratios: Vec<_> = [0.0, 1.0 / 3.0, 2.005, f64::INFINITY, f64::NAN]
            .into_iter()
            .map(ratio)
            .collect();
        assert_eq!(ratios, ["0.00", "0.33", "2.00", "∞", "-"]);
    }
}
