//! The status file: a snapshot of the daemon and its torrents that the daemon rewrites every
//! `status.interval_secs` as `<state_dir>/status.json` and `btd status` reads. Owns that file's
//! format, its atomic replacement, and the text table printed by `btd status` and logged on
//! SIGUSR1. No threads, no sockets; the daemon's main thread writes, any process reads.

use std::fs;
use std::io;
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TorrentStatus {
    pub name: String,
    /// Lower-case hex.
    pub info_hash: String,
    /// `checking`, `downloading`, `seeding`, `queued`, `paused`, `finished` or `error`.
    pub state: String,
    /// Verified fraction of the data, 0 to 1.
    pub progress: f64,
    pub size_bytes: u64,
    pub downloaded_bytes: u64,
    pub uploaded_bytes: u64,
    /// Bytes per second.
    pub download_rate: u64,
    /// Bytes per second.
    pub upload_rate: u64,
    pub peers: u32,
    pub ratio: f64,
    /// Why the torrent is in state `error`.
    pub error: Option<String>,
    /// Where the torrent came from: `config`, or the watch-directory file's path.
    pub source: String,
    /// The swarm as its tracker last counted it (announce reply or scrape), when known.
    #[serde(default)]
    pub swarm: Option<SwarmCounts>,
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
        let mut json = serde_json::to_vec_pretty(self).map_err(|source| StatusError::Encode {
            path: path.to_owned(),
            source,
        })?;
        json.push(b'\n');
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        fs::write(&tmp, &json).map_err(|source| StatusError::Write {
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, path).map_err(|source| {
            let _ = fs::remove_file(&tmp);
            StatusError::Rename {
                from: tmp.clone(),
                to: path.to_owned(),
                source,
            }
        })
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

    /// The table `btd status` prints and SIGUSR1 logs: a header `NAME STATE PROGRESS DOWN UP
    /// PEERS RATIO`, one row per torrent, then, for each torrent with an error, a line
    /// `error: NAME: message`, and last a totals row (torrent count, summed rates and peers)
    /// aligned under the columns. Progress is a percent with one decimal, rounded down (100.0%
    /// only when complete); rates are human-readable (`1.2 MB/s`, decimal units); ratio has two
    /// decimals. Column widths come from the content; names wider than 40 columns are cut with
    /// an ellipsis. Control and bidirectional-override characters in names (which come from
    /// strangers' torrents) are shown as `?`. Every line ends in `\n`; none has trailing spaces.
    #[must_use]
    pub fn table(&self) -> String {
        const HEADER: [&str; 8] = [
            "NAME", "STATE", "PROGRESS", "DOWN", "UP", "PEERS", "RATIO", "SWARM",
        ];
        // Every column but NAME and STATE holds numbers, aligned on the right.
        const RIGHT: [bool; 8] = [false, false, true, true, true, true, true, true];
        // SWARM (seeders/leechers/completed from the tracker) only when a tracker told us.
        let columns = if self.torrents.iter().any(|t| t.swarm.is_some()) {
            8
        } else {
            7
        };

        let mut rows: Vec<Vec<String>> =
            vec![HEADER[..columns].iter().map(|h| (*h).to_owned()).collect()];
        for t in &self.torrents {
            let mut row = vec![
                printable(&t.name),
                printable(&t.state),
                percent(t.progress),
                rate(t.download_rate),
                rate(t.upload_rate),
                t.peers.to_string(),
                ratio(t.ratio),
            ];
            if columns == 8 {
                row.push(t.swarm.map_or_else(
                    || "-".to_owned(),
                    |s| format!("{}/{}/{}", s.seeders, s.leechers, s.completed),
                ));
            }
            rows.push(row);
        }
        let count = self.torrents.len();
        let sum = |f: fn(&TorrentStatus) -> u64| {
            self.torrents.iter().map(f).fold(0u64, u64::saturating_add)
        };
        let mut totals = vec![
            format!("{count} torrent{}", if count == 1 { "" } else { "s" }),
            String::new(),
            String::new(),
            rate(sum(|t| t.download_rate)),
            rate(sum(|t| t.upload_rate)),
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
        widths[0] = widths[0].min(NAME_WIDTH_MAX);

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
        for t in &self.torrents {
            if let Some(error) = &t.error {
                out.push_str(&format!(
                    "error: {}: {}\n",
                    printable(&t.name),
                    printable(error)
                ));
            }
        }
        out.push_str(&line(totals));
        if let Some(tracker) = &self.tracker {
            out.push_str(&format!(
                "tracker on {}: {} torrents, {} peers\n",
                tracker.listen, tracker.torrents, tracker.peers
            ));
        }
        out
    }
}

/// `n` bytes per second, in decimal units with one decimal above 999 B/s.
fn rate(bytes_per_sec: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes_per_sec < 1000 {
        return format!("{bytes_per_sec} B/s");
    }
    // Precision loss is fine: one decimal is shown.
    let mut value = bytes_per_sec as f64 / 1000.0;
    let mut unit = 0;
    // 999.95 would print as "1000.0": move up a unit first.
    while value >= 999.95 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}/s", UNITS[unit])
}

/// A fraction as a percent with one decimal, rounded down so only 1 shows as 100.0%.
fn percent(progress: f64) -> String {
    let clamped = if progress.is_nan() {
        0.0
    } else {
        progress.clamp(0.0, 1.0)
    };
    format!("{:.1}%", (clamped * 1000.0).floor() / 10.0)
}

fn ratio(ratio: f64) -> String {
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
fn printable(text: &str) -> String {
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
            name: name.to_owned(),
            info_hash: "ab".repeat(20),
            state: state.to_owned(),
            progress,
            size_bytes: 1 << 30,
            downloaded_bytes: 1 << 29,
            uploaded_bytes: 1 << 28,
            download_rate: down,
            upload_rate: up,
            peers: 3,
            ratio: 0.5,
            error: None,
            source: "config".to_owned(),
            swarm: None,
        }
    }

    fn status(torrents: Vec<TorrentStatus>) -> DaemonStatus {
        DaemonStatus {
            pid: 4242,
            updated_unix: 1_700_000_000,
            listen: "0.0.0.0:6881".to_owned(),
            torrents,
            tracker: None,
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
NAME        STATE  PROGRESS   DOWN     UP  PEERS  RATIO
0 torrents                   0 B/s  0 B/s      0
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
        // Written by hand: the CJK name is 16 columns, the combining accent takes none and the
        // emoji two, the long name is cut to 39 columns plus the ellipsis.
        let expected = "\
NAME                                      STATE        PROGRESS      DOWN         UP  PEERS  RATIO
A.Very.Long.Torrent.Name.That.Goes.On.A…  downloading     42.0%  1.2 MB/s      0 B/s      3   0.50
日本語のファイル                          seeding        100.0%     0 B/s  56.0 kB/s     12   0.50
Caf\u{e9}\u{301} \u{1f3b5}                                   checking        99.9%   999 B/s   1.0 kB/s      3  12.30
3 torrents                                                       1.2 MB/s  57.0 kB/s     18
";
        assert_eq!(table.table(), expected);
    }

    #[test]
    fn names_cut_to_forty_columns_even_when_wide() {
        let wide = "漢".repeat(30);
        let table = status(vec![torrent(&wide, "seeding", 1.0, 0, 0)]).table();
        let row = table.lines().nth(1).unwrap();
        // 19 wide characters (38 columns) and the ellipsis fit in 40; a 20th would not.
        let expected_name = format!("{}… ", "漢".repeat(19));
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
        let rates: Vec<_> = [0, 999, 1000, 1_234_567, 999_949, 999_999, u64::MAX]
            .into_iter()
            .map(rate)
            .collect();
        assert_eq!(
            rates,
            [
                "0 B/s",
                "999 B/s",
                "1.0 kB/s",
                "1.2 MB/s",
                "999.9 kB/s",
                "1.0 MB/s",
                "18.4 EB/s"
            ]
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
