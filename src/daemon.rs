//! The daemon: `btd daemon --config FILE`. Runs on the main thread and owns the set of
//! torrents: where each came from (a `[[torrent]]` entry or a watch-directory file, naming a
//! `.torrent` or a magnet link), its state (metadata, queued, checking, running, paused,
//! finished, error), the queue limits, the seeding limits, the status file, the pid file and
//! the reaction to signals. It never touches a socket or a piece: each running torrent is a
//! coordinator thread behind a `TorrentHandle`, checking data at start (resume data or a full
//! re-hash) runs on a `check NAME` thread, and fetching a magnet link's metadata on a
//! `metadata NAME` thread. With `[tracker] enabled`, it also owns the embedded tracker
//! (`tracker_server`), started and stopped with it and reconfigured on SIGHUP.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select};
use log::{error, info, warn};
use parking_lot::Mutex;

use crate::config::{Config, TorrentEntry, TorrentRef};
use crate::engine::Engine;
use crate::magnet::Magnet;
use crate::metadata_fetch::{self, FetchError, FetchParams};
use crate::metainfo::{InfoHash, Metainfo};
use crate::pidfile::PidFile;
use crate::record::{TorrentRecord, unix_now};
use crate::resume::ResumeData;
use crate::status::{DaemonStatus, SwarmCounts, TorrentStatus, TrackerStatus};
use crate::storage::{OpenMode, Storage};
use crate::torrent::{Control, ResumeTarget, Stopping, TorrentEvent, TorrentHandle, TorrentStats};
use crate::tracker_server::{TrackerConfig, TrackerServer};
use crate::watched::{self, Watched};
use crate::wire::Bitfield;

/// Why the daemon could not start (it never stops for anything else).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    PidFile(#[from] crate::pidfile::PidFileError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(String),
    #[error("embedded tracker: {0}")]
    Tracker(std::io::Error),
}

/// What the signal threads tell the main loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT or SIGTERM: stop gracefully.
    Stop,
    /// SIGHUP: reload the config, rescan the watch directory, reopen the log file.
    Reload,
    /// SIGUSR1: write the status table to the log.
    Status,
}

const WATCH_ADDED: &str = ".added";
const WATCH_INVALID: &str = ".invalid";
/// One metadata fetch gives up after this; the next starts after a back-off.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The wait after a failed metadata fetch, doubled per failure up to [`METADATA_RETRY_MAX`].
const METADATA_RETRY_BASE: Duration = Duration::from_secs(15);
const METADATA_RETRY_MAX: Duration = Duration::from_secs(10 * 60);
const LOOP_WAKE: Duration = Duration::from_millis(250);
/// A torrent stopped by a storage error (disk full, unwritable directory) is retried after this
/// wait, doubled per failure up to [`STORAGE_RETRY_MAX`]; SIGHUP retries it at once.
const STORAGE_RETRY_BASE: Duration = Duration::from_secs(60);
const STORAGE_RETRY_MAX: Duration = Duration::from_secs(30 * 60);
/// The whole graceful stop must fit in 5 s; coordinators get this long to finish (the rest is
/// for records, the status file, the listener and the disk pool).
const STOP_BUDGET: Duration = Duration::from_millis(4000);
/// Torrent records are saved at least this often while their totals or seeding time move
/// (and at once when a torrent is added, completes or stops).
const RECORD_SAVE_INTERVAL: Duration = Duration::from_secs(60);

/// Where a torrent came from, which also decides how it is removed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// A `[[torrent]]` entry.
    Config(EntryKey),
    /// A watch-directory file, already renamed `*.added`; deleting it removes the torrent.
    Watch(PathBuf),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Config(_) => "config".into(),
            Source::Watch(file) => file.display().to_string(),
        }
    }
}

/// What identifies a `[[torrent]]` entry across reloads: its `.torrent` path, or its magnet
/// link's info hash (so editing the link's trackers or peers does not restart the torrent).
#[derive(Clone, Debug, PartialEq, Eq)]
enum EntryKey {
    Path(PathBuf),
    Magnet(InfoHash),
}

impl EntryKey {
    fn of(entry: &TorrentEntry) -> Self {
        match &entry.torrent {
            TorrentRef::File(path) => EntryKey::Path(path.clone()),
            TorrentRef::Magnet(magnet) => EntryKey::Magnet(magnet.info_hash),
        }
    }
}

/// What a torrent is added from.
enum Origin {
    Meta(Metainfo),
    /// A magnet link: its metadata comes from the state directory or from peers.
    Magnet(Magnet),
}

impl Origin {
    fn info_hash(&self) -> InfoHash {
        match self {
            Origin::Meta(meta) => meta.info_hash,
            Origin::Magnet(magnet) => magnet.info_hash,
        }
    }
}

/// A running `metadata NAME` thread.
struct Fetching {
    /// Never sent on: dropping it (with the state) ends the fetch.
    _stop: Sender<()>,
    thread: Watched<()>,
}

enum State {
    /// A magnet link's metadata is being fetched.
    Metadata(Fetching),
    /// Waiting for a download slot, or (complete) for a seed slot.
    Queued,
    /// Its data is being checked; the counter is the pieces checked so far.
    Checking(Arc<AtomicU32>),
    Running(TorrentHandle),
    Paused,
    /// Seeding limit reached; data kept, not uploading.
    Finished,
    /// The daemon stopped cleanly (what the last status file says).
    Stopped,
    Error(String),
}

impl State {
    fn name(&self, complete: bool) -> &'static str {
        match self {
            State::Metadata(_) => "metadata",
            State::Queued if complete => "queued_seed",
            State::Queued => "queued",
            State::Checking(_) => "checking",
            State::Running(_) if complete => "seeding",
            State::Running(_) => "downloading",
            State::Paused => "paused",
            State::Finished => "finished",
            State::Stopped => "stopped",
            State::Error(_) => "error",
        }
    }
}

/// The seeding limits of `[seeding]`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct SeedLimits {
    /// Uploaded / size; 0: none.
    ratio: f64,
    /// 0: none.
    time: Duration,
}

/// Which seeding limit a complete torrent has reached, with its figures for the log.
#[derive(Clone, Copy, Debug, PartialEq)]
enum LimitReached {
    Ratio { ratio: f64, limit: f64 },
    Time { seeded_secs: u64, limit_secs: u64 },
}

impl std::fmt::Display for LimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitReached::Ratio { ratio, limit } => {
                write!(f, "ratio limit reached (ratio {ratio:.3}, limit {limit})")
            }
            LimitReached::Time {
                seeded_secs,
                limit_secs,
            } => write!(
                f,
                "seeding time limit reached (seeded {seeded_secs} s, limit {limit_secs} s)"
            ),
        }
    }
}

impl SeedLimits {
    /// The upload total at which the ratio limit is reached: `ratio * size`, rounded up.
    fn upload_target(&self, size: u64) -> Option<u64> {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        (self.ratio > 0.0).then(|| (self.ratio * size as f64).ceil() as u64)
    }

    /// The limit a complete torrent of `size` bytes that uploaded `uploaded` bytes and seeded
    /// `seeded_secs` has reached, if any (the ratio first).
    fn reached(&self, size: u64, uploaded: u64, seeded_secs: u64) -> Option<LimitReached> {
        if let Some(target) = self.upload_target(size)
            && uploaded >= target
        {
            return Some(LimitReached::Ratio {
                ratio: uploaded as f64 / size.max(1) as f64,
                limit: self.ratio,
            });
        }
        let limit_secs = self.time.as_secs();
        (limit_secs > 0 && seeded_secs >= limit_secs).then_some(LimitReached::Time {
            seeded_secs,
            limit_secs,
        })
    }

    /// How many more payload bytes a run may upload: up to the ratio target plus one block, so
    /// a block that starts below the target is still served whole (the total stops within a
    /// block of it). `None` without a ratio limit.
    fn upload_allowance(&self, size: u64, uploaded: u64) -> Option<u64> {
        self.upload_target(size)
            .map(|target| (target + u64::from(crate::wire::BLOCK_LEN)).saturating_sub(uploaded))
    }
}

struct Managed {
    /// A small number naming it during this daemon run (status file, table).
    id: u32,
    info_hash: InfoHash,
    /// The torrent's name; until a magnet link's metadata arrives, its `dn` or the info hash.
    name: String,
    /// `None` while a magnet link's metadata is unknown (state metadata, paused or error).
    /// Queued, checking, running and finished torrents always have it.
    meta: Option<Arc<Metainfo>>,
    /// The magnet link it was added from (its trackers and peers serve the metadata fetch).
    magnet: Option<Magnet>,
    source: Source,
    /// Its lifetime facts (data location, totals, seeding time) up to the end of its last run;
    /// see [`Managed::record_now`] for them including the current run.
    record: TorrentRecord,
    /// What was last saved of the record (nothing is written while it is unchanged).
    saved: Option<TorrentRecord>,
    peers: Vec<SocketAddr>,
    paused: bool,
    state: State,
    /// Every piece verified, as last known.
    complete: bool,
    verified_bytes: u64,
    /// The counters of its current run: while its coordinator runs, and while it stops (see
    /// `Daemon::stopping`). Folded into `record` once that run has ended.
    run: Option<Arc<TorrentStats>>,
    /// Since when it seeds in this run (folded into `record.seeding_secs` when it stops).
    seeding_since: Option<Instant>,
    /// In state error from a storage error: when it is retried by itself (SIGHUP retries now).
    retry_at: Option<Instant>,
    /// Storage errors in a row (the retry back-off doubles with each); reset on completion.
    storage_failures: u32,
    /// The next check ignores resume data and hashes everything (data changed under us).
    force_check: bool,
}

impl Managed {
    fn name(&self) -> &str {
        &self.name
    }

    fn resume_path(&self, state_dir: &Path) -> PathBuf {
        ResumeData::path_in(state_dir, &self.info_hash)
    }

    /// The torrent's size, 0 while its metadata is unknown.
    fn size(&self) -> u64 {
        self.meta.as_ref().map_or(0, |m| m.geometry.total_len)
    }

    fn download_dir(&self) -> &Path {
        &self.record.download_dir
    }

    /// Lifetime payload totals, (uploaded, downloaded), the current run included.
    fn totals(&self) -> (u64, u64) {
        let (up, down) = self.run.as_ref().map_or((0, 0), |run| {
            (
                run.uploaded.load(Ordering::Relaxed),
                run.downloaded.load(Ordering::Relaxed),
            )
        });
        (self.record.uploaded + up, self.record.downloaded + down)
    }

    /// Lifetime seconds of seeding, the current run included.
    fn seeding_secs(&self) -> u64 {
        self.record.seeding_secs
            + self
                .seeding_since
                .map_or(0, |since| since.elapsed().as_secs())
    }

    fn ratio(&self) -> f64 {
        self.totals().0 as f64 / self.size().max(1) as f64
    }

    /// The record with the current run's totals and seeding time in it: what is saved.
    fn record_now(&self) -> TorrentRecord {
        let (uploaded, downloaded) = self.totals();
        TorrentRecord {
            uploaded,
            downloaded,
            seeding_secs: self.seeding_secs(),
            ..self.record.clone()
        }
    }

    /// It starts seeding now (complete and running).
    fn start_seeding_clock(&mut self) {
        self.seeding_since.get_or_insert_with(Instant::now);
    }

    /// It stops seeding: the time so far goes into the record.
    fn stop_seeding_clock(&mut self) {
        if let Some(since) = self.seeding_since.take() {
            self.record.seeding_secs += since.elapsed().as_secs();
        }
    }

    /// Its run with counters `run` has ended: they go into the record.
    fn end_run(&mut self, run: &Arc<TorrentStats>) {
        if self.run.as_ref().is_some_and(|r| Arc::ptr_eq(r, run)) {
            self.record.uploaded += run.uploaded.load(Ordering::Relaxed);
            self.record.downloaded += run.downloaded.load(Ordering::Relaxed);
            self.run = None;
        }
    }

    /// A torrent known by its info hash (not a `[[torrent]]` whose file could not be read):
    /// the only kind with a record on disk.
    fn has_record(&self) -> bool {
        self.meta.is_some() || self.magnet.is_some()
    }

    /// Saves the record if it changed since the last save; a failure is logged (the next
    /// save tries again).
    fn save_record(&mut self, state_dir: &Path) {
        if !self.has_record() {
            return;
        }
        let now = self.record_now();
        if self.saved.as_ref() == Some(&now) {
            return;
        }
        match now.save(&TorrentRecord::path_in(state_dir, &self.info_hash)) {
            Ok(()) => self.saved = Some(now),
            Err(e) => warn!("torrent {}: {e}", self.name),
        }
    }

    /// The wait before the next retry after `storage_failures` storage errors in a row.
    fn retry_after(&self) -> Duration {
        storage_retry_after(self.storage_failures)
    }

    /// Counts a storage error and schedules the retry.
    fn set_retry(&mut self) {
        self.storage_failures = self.storage_failures.saturating_add(1);
        self.retry_at = Some(Instant::now() + self.retry_after());
    }
}

/// The outcome of checking a torrent's data before it starts.
struct Checked {
    meta: Arc<Metainfo>,
    result: Result<(Storage, Bitfield), String>,
}

/// What a `metadata NAME` thread ends with: the torrent, verified and saved, or why the
/// verified metadata is no usable torrent (fetching it again would not help).
struct MetadataFetched {
    info_hash: InfoHash,
    result: Result<Metainfo, String>,
}

/// A log file that SIGHUP can reopen (for logrotate): env_logger writes through it.
#[derive(Clone)]
pub struct LogFile {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl LogFile {
    /// Opens `path` for appending.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: Arc::new(Mutex::new(open_append(path)?)),
        })
    }

    /// Opens the path again (the old file may have been renamed away).
    fn reopen(&self) {
        match open_append(&self.path) {
            Ok(file) => *self.file.lock() = file,
            Err(e) => error!("log file {}: cannot reopen: {e}", self.path.display()),
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.lock().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.lock().flush()
    }
}

/// Installs the daemon's signal handlers (signal-hook) for INT, TERM, HUP and USR1; everything
/// arrives on the returned channel, and a second INT/TERM exits at once. Not ctrlc: with its
/// `termination` feature (which the one-shot commands need for SIGTERM) it also takes SIGHUP as
/// a stop, and the daemon must reload on SIGHUP.
///
/// # Errors
/// When a handler cannot be installed.
pub fn signals() -> Result<Receiver<Signal>, DaemonError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let (tx, rx) = crossbeam_channel::bounded(16);
    let mut hooks = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])
        .map_err(|e| DaemonError::Signals(e.to_string()))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stops = 0;
            for sig in hooks.forever() {
                let signal = match sig {
                    SIGHUP => Signal::Reload,
                    SIGUSR1 => Signal::Status,
                    _ => {
                        stops += 1;
                        if stops > 1 {
                            std::process::exit(1);
                        }
                        Signal::Stop
                    }
                };
                if tx.send(signal).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| DaemonError::Signals(e.to_string()))?;
    Ok(rx)
}

/// See the module documentation.
pub struct Daemon {
    config: Config,
    config_path: PathBuf,
    engine: Engine,
    torrents: Vec<Managed>,
    checked_tx: Sender<Checked>,
    checked_rx: Receiver<Checked>,
    fetched_tx: Sender<MetadataFetched>,
    fetched_rx: Receiver<MetadataFetched>,
    pid_file: Option<PidFile>,
    log_file: Option<LogFile>,
    /// The embedded tracker, while `[tracker] enabled`.
    tracker: Option<TrackerServer>,
    /// Set when RUST_LOG decides the log level, so a reload leaves it alone.
    level_from_env: bool,
    /// Torrents told to stop whose coordinators have not ended yet (by info hash). Nothing
    /// waits for them but the final shutdown; a torrent does not start again until its last
    /// run has ended.
    stopping: Vec<(InfoHash, Stopping)>,
    /// The id the next added torrent gets.
    next_id: u32,
    /// Watch-dir files that did not parse yet (uploads in progress, or broken files settling).
    watch_pending: WatchPending,
}

impl Daemon {
    /// Takes the pid file, binds the listener and loads the configured and watched torrents.
    ///
    /// # Errors
    /// A second daemon on the same state directory, an unusable state directory, or a listen
    /// address (of the peer listener or the embedded tracker) that cannot be bound.
    pub fn start(
        config: Config,
        config_path: &Path,
        log_file: Option<LogFile>,
    ) -> Result<Self, DaemonError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DaemonError::Io { path, source }
        };
        std::fs::create_dir_all(&config.state_dir).map_err(io(&config.state_dir))?;
        let pid_file = PidFile::acquire(&config.state_dir.join("btd.pid"))?;
        let engine_config = config.engine(None, None);
        let engine =
            Engine::start(engine_config.clone()).map_err(|source| DaemonError::Listen {
                addr: engine_config.listen,
                source,
            })?;
        let tracker = config
            .tracker
            .map(TrackerServer::start)
            .transpose()
            .map_err(DaemonError::Tracker)?;
        let (checked_tx, checked_rx) = crossbeam_channel::unbounded();
        let (fetched_tx, fetched_rx) = crossbeam_channel::unbounded();
        let mut daemon = Self {
            config,
            config_path: config_path.to_owned(),
            engine,
            torrents: Vec::new(),
            checked_tx,
            checked_rx,
            fetched_tx,
            fetched_rx,
            pid_file: Some(pid_file),
            log_file,
            tracker,
            level_from_env: std::env::var_os("RUST_LOG").is_some(),
            stopping: Vec::new(),
            next_id: 1,
            watch_pending: WatchPending::default(),
        };
        info!(
            "daemon started (pid {}), config {}, state {}",
            std::process::id(),
            daemon.config_path.display(),
            daemon.config.state_dir.display()
        );
        for entry in daemon.config.torrents.clone() {
            daemon.add_entry(&entry);
        }
        daemon.scan_watch_dir();
        daemon.engine.log_listening();
        Ok(daemon)
    }

    /// The main loop: until SIGINT/SIGTERM, then a graceful stop.
    pub fn run(mut self, signals: &Receiver<Signal>) {
        let mut next_scan = Instant::now() + self.config.watch_interval;
        let mut next_status = Instant::now();
        let mut next_record_save = Instant::now() + RECORD_SAVE_INTERVAL;
        loop {
            self.reap_stopped();
            self.schedule();
            if Instant::now() >= next_record_save {
                self.save_records();
                next_record_save = Instant::now() + RECORD_SAVE_INTERVAL;
            }
            if Instant::now() >= next_status {
                self.write_status();
                next_status = Instant::now() + self.config.status_interval;
            }
            let checked_rx = self.checked_rx.clone();
            let fetched_rx = self.fetched_rx.clone();
            select! {
                recv(signals) -> signal => match signal {
                    Ok(Signal::Stop) | Err(_) => break,
                    Ok(Signal::Reload) => {
                        self.reload();
                        self.schedule();
                        self.write_status();
                        next_scan = Instant::now() + self.config.watch_interval;
                        next_status = Instant::now() + self.config.status_interval;
                    }
                    Ok(Signal::Status) => info!("status:\n{}", self.status().table()),
                },
                recv(checked_rx) -> checked => {
                    if let Ok(checked) = checked {
                        self.on_checked(checked);
                    }
                }
                recv(fetched_rx) -> fetched => {
                    if let Ok(fetched) = fetched {
                        self.on_metadata(fetched);
                    }
                }
                default(LOOP_WAKE) => {}
            }
            if Instant::now() >= next_scan {
                self.scan_watch_dir();
                next_scan = Instant::now() + self.config.watch_interval;
            }
        }
        self.shutdown();
    }

    // ---- adding and removing -------------------------------------------------------------

    fn add_entry(&mut self, entry: &TorrentEntry) {
        let origin = match &entry.torrent {
            TorrentRef::File(path) => match Metainfo::from_file(path) {
                Ok(meta) => Origin::Meta(meta),
                Err(e) => {
                    error!("config {}: [[torrent]] {e}", self.config_path.display());
                    self.add_unreadable(entry, path, e.to_string());
                    return;
                }
            },
            TorrentRef::Magnet(magnet) => Origin::Magnet(magnet.clone()),
        };
        self.add(
            origin,
            Source::Config(EntryKey::of(entry)),
            entry.download_dir.clone(),
            entry.peers.clone(),
            entry.paused,
        );
    }

    /// Shows a `[[torrent]]` entry whose `.torrent` cannot be read in state error with the
    /// reason (instead of leaving it out); SIGHUP tries the file again.
    fn add_unreadable(&mut self, entry: &TorrentEntry, path: &Path, reason: String) {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let download_dir = entry
            .download_dir
            .clone()
            .unwrap_or_else(|| self.config.download_dir.clone());
        let id = self.next_id;
        self.next_id += 1;
        self.torrents.push(Managed {
            id,
            // Not a torrent's: no record is kept, and nothing else has this key.
            info_hash: placeholder_hash(path),
            name,
            meta: None,
            magnet: None,
            source: Source::Config(EntryKey::of(entry)),
            record: TorrentRecord::new(&placeholder_hash(path), &download_dir),
            saved: None,
            peers: Vec::new(),
            paused: entry.paused,
            state: State::Error(reason),
            complete: false,
            verified_bytes: 0,
            run: None,
            seeding_since: None,
            retry_at: None,
            storage_failures: 0,
            force_check: false,
        });
    }

    /// Adds a torrent: queued, or paused, or (a magnet link whose metadata is not saved in the
    /// state directory) fetching its metadata. Returns false for a duplicate info hash.
    /// Its record in the state directory, when there is one, says where its data is;
    /// `download_dir` (an entry's own) overrides that, and otherwise applies to a new torrent,
    /// as `[paths] download_dir` does.
    fn add(
        &mut self,
        origin: Origin,
        source: Source,
        download_dir: Option<PathBuf>,
        mut peers: Vec<SocketAddr>,
        paused: bool,
    ) -> bool {
        let info_hash = origin.info_hash();
        if let Some(other) = self.find(&info_hash) {
            warn!(
                "torrent {}: already present (from {}); ignoring {}",
                other.name(),
                other.source.describe(),
                source.describe()
            );
            return false;
        }
        let (meta, magnet) = match origin {
            Origin::Meta(meta) => (Some(meta), None),
            Origin::Magnet(magnet) => {
                merge_peers(&mut peers, &magnet.peers);
                (self.saved_metadata(&magnet), Some(magnet))
            }
        };
        let name = match (&meta, &magnet) {
            (Some(meta), _) => meta.name.clone(),
            (None, Some(magnet)) => display_name(magnet),
            (None, None) => info_hash.to_hex(), // not reached: `Origin::Meta` has the metadata
        };
        let record_path = TorrentRecord::path_in(&self.config.state_dir, &info_hash);
        let record = match TorrentRecord::load(&record_path, &info_hash) {
            Ok(record) => record,
            Err(e) => {
                warn!("torrent {name}: {e}; starting a new record");
                None
            }
        };
        let on_disk = record.clone();
        let record = match (record, download_dir) {
            (Some(mut record), Some(dir)) if record.download_dir != dir => {
                warn!(
                    "torrent {name}: its [[torrent]] entry names download_dir {}, it was in {}; \
                     using {} (data is not moved)",
                    dir.display(),
                    record.download_dir.display(),
                    dir.display()
                );
                record.download_dir = dir;
                record
            }
            (Some(record), _) => record,
            (None, dir) => TorrentRecord::new(
                &info_hash,
                &dir.unwrap_or_else(|| self.config.download_dir.clone()),
            ),
        };
        info!(
            "torrent {name}: added from {}, data in {}",
            source.describe(),
            record.download_dir.display()
        );
        let id = self.next_id;
        self.next_id += 1;
        let mut t = Managed {
            id,
            info_hash,
            name,
            meta: meta.map(Arc::new),
            magnet,
            complete: record.completed_unix.is_some(),
            record,
            saved: on_disk,
            source,
            peers,
            paused,
            state: State::Paused,
            verified_bytes: 0,
            run: None,
            seeding_since: None,
            retry_at: None,
            storage_failures: 0,
            force_check: false,
        };
        t.save_record(&self.config.state_dir);
        self.torrents.push(t);
        if !paused {
            self.unpause(self.torrents.len() - 1);
        }
        true
    }

    /// The metadata of a magnet link saved by an earlier fetch
    /// (`<state_dir>/torrents/<infohash>.torrent`), when it is a usable torrent with the link's
    /// info hash.
    fn saved_metadata(&self, magnet: &Magnet) -> Option<Metainfo> {
        let path = saved_torrent_path(&self.config.state_dir, &magnet.info_hash);
        if !path.exists() {
            return None;
        }
        match Metainfo::from_file(&path) {
            Ok(meta) if meta.info_hash == magnet.info_hash => {
                info!("torrent {}: metadata from {}", meta.name, path.display());
                Some(meta)
            }
            Ok(meta) => {
                warn!(
                    "{}: info hash {}, not the magnet link's; fetching the metadata again",
                    path.display(),
                    meta.info_hash
                );
                None
            }
            Err(e) => {
                warn!("{e}; fetching the metadata again");
                None
            }
        }
    }

    /// Moves a torrent on from paused (or just added): queued when its metadata is known,
    /// else fetching it.
    fn unpause(&mut self, index: usize) {
        if self.torrents[index].meta.is_some() {
            self.torrents[index].state = State::Queued;
        } else {
            self.start_fetching(index);
        }
    }

    /// Starts a `metadata NAME` thread for a magnet link: it asks the torrent's peers (its own
    /// and the link's `x.pe`) and the link's trackers, with our peer id and listen address, and
    /// tries again after each failure until the metadata arrives or the torrent leaves state
    /// metadata (which drops its `stop`).
    fn start_fetching(&mut self, index: usize) {
        let listen = self.engine.listen_addr();
        let limits = &self.config.limits;
        let t = &mut self.torrents[index];
        let saved = saved_torrent_path(&self.config.state_dir, &t.info_hash);
        let params = FetchParams {
            info_hash: t.info_hash,
            name: t.magnet.as_ref().and_then(|m| m.name.clone()),
            peer_id: self.engine.peer_id(),
            listen_port: listen.port(),
            // Dial from the listen address, as the engine's peers do.
            bind: Some(listen.ip()),
            peers: t.peers.clone(),
            trackers: t
                .magnet
                .as_ref()
                .map(|m| m.trackers.clone())
                .unwrap_or_default(),
            connect_timeout: limits.connect_timeout,
            announce_timeout: limits.announce_timeout,
            udp_retransmit_base: limits.udp_retransmit_base,
            numwant: limits.numwant,
            timeout: METADATA_TIMEOUT,
        };
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let done = self.fetched_tx.clone();
        let spawned = watched::spawn(
            std::thread::Builder::new().name(format!("metadata {}", t.name)),
            move || {
                if let Some(result) = fetch_metadata(&params, &saved, &stop_rx) {
                    let _ = done.send(MetadataFetched {
                        info_hash: params.info_hash,
                        result,
                    });
                }
            },
        );
        t.state = match spawned {
            Ok(thread) => State::Metadata(Fetching {
                _stop: stop,
                thread,
            }),
            Err(e) => State::Error(format!("cannot spawn metadata thread: {e}")),
        };
    }

    /// A `metadata NAME` thread is done: the torrent goes on to the queue (unless it was paused
    /// meanwhile), or into error when the metadata is no usable torrent.
    fn on_metadata(&mut self, fetched: MetadataFetched) {
        let Some(index) = self.index_of(&fetched.info_hash) else {
            return; // removed meanwhile
        };
        let t = &mut self.torrents[index];
        if t.meta.is_some() {
            return; // from an earlier fetch, stopped too late
        }
        let fetching = matches!(t.state, State::Metadata(_));
        match fetched.result {
            Ok(meta) => {
                t.name.clone_from(&meta.name);
                t.meta = Some(Arc::new(meta));
                if fetching {
                    t.state = State::Queued;
                }
            }
            Err(reason) => {
                error!("torrent {}: {reason}", t.name);
                if fetching {
                    t.state = State::Error(reason);
                }
            }
        }
    }

    fn find(&self, info_hash: &InfoHash) -> Option<&Managed> {
        self.torrents.iter().find(|t| t.info_hash == *info_hash)
    }

    fn index_of(&self, info_hash: &InfoHash) -> Option<usize> {
        self.torrents.iter().position(|t| t.info_hash == *info_hash)
    }

    /// Stops (if running) and forgets a torrent. Its data stays on disk.
    /// Stops (if running) and forgets a torrent, its record included (as transmission forgets
    /// a removed torrent's resume file). Its data and resume data stay on disk.
    fn remove(&mut self, index: usize) {
        self.stop_torrent(index, State::Paused);
        let t = self.torrents.remove(index);
        if t.has_record() {
            let path = TorrentRecord::path_in(&self.config.state_dir, &t.info_hash);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(
                    "torrent {}: {}: cannot remove: {e}",
                    t.name(),
                    path.display()
                );
            }
        }
        info!(
            "torrent {}: removed (data kept in {})",
            t.name(),
            t.download_dir().display()
        );
    }

    /// Leaves a torrent in `next` at once. A running one is told to stop (announce `stopped`,
    /// flush, save resume data) and joins [`Daemon::stopping`]: nothing here waits for it. A
    /// metadata fetch ends by itself when its `stop` is dropped with the old state.
    fn stop_torrent(&mut self, index: usize, next: State) {
        let t = &mut self.torrents[index];
        let previous = std::mem::replace(&mut t.state, next);
        t.stop_seeding_clock();
        if let State::Running(handle) = previous {
            self.engine.unregister(&t.info_hash);
            t.verified_bytes = handle.stats.verified_bytes.load(Ordering::Relaxed);
            self.stopping.push((t.info_hash, handle.begin_stop()));
        }
        t.save_record(&self.config.state_dir);
    }

    /// Takes in the runs that have ended since the last call: their totals go into their
    /// torrents' records.
    fn reap_stopped(&mut self) {
        let mut index = 0;
        while index < self.stopping.len() {
            if !self.stopping[index].1.thread.is_done() {
                index += 1;
                continue;
            }
            let (info_hash, stopping) = self.stopping.swap_remove(index);
            if let Some(i) = self.index_of(&info_hash) {
                let t = &mut self.torrents[i];
                t.end_run(&stopping.stats);
                t.save_record(&self.config.state_dir);
            }
        }
    }

    /// Saves every record that changed (totals, seeding time) since its last save.
    fn save_records(&mut self) {
        for t in &mut self.torrents {
            t.save_record(&self.config.state_dir);
        }
    }

    // ---- the watch directory -------------------------------------------------------------

    /// Adds new `*.torrent` and `*.magnet` files (renamed `*.added`; one that does not parse is
    /// tried again at each scan until it has not changed for [`WATCH_SETTLE`], then renamed
    /// `*.invalid` with the reason logged), loads `*.added` files we do not know yet (after a
    /// restart), and removes torrents whose `*.added` file is gone.
    fn scan_watch_dir(&mut self) {
        let Some(dir) = self.config.watch_dir.clone() else {
            return;
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                warn!("watch dir {}: {e}", dir.display());
                return;
            }
        };
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        self.watch_pending
            .retain(|path| names.binary_search_by(|n| n.as_path().cmp(path)).is_ok());
        let known: HashSet<PathBuf> = self
            .torrents
            .iter()
            .filter_map(|t| match &t.source {
                Source::Watch(file) => Some(file.clone()),
                Source::Config(_) => None,
            })
            .collect();
        for path in names {
            let name = path.to_string_lossy();
            if name.ends_with(".torrent") || name.ends_with(".magnet") {
                self.add_watch_file(&path, &with_suffix(&path, WATCH_ADDED));
            } else if (name.ends_with(".torrent.added") || name.ends_with(".magnet.added"))
                && !known.contains(&path)
            {
                self.add_watch_file(&path, &path);
            }
        }
        let gone: Vec<InfoHash> = self
            .torrents
            .iter()
            .filter(|t| matches!(&t.source, Source::Watch(file) if !file.exists()))
            .map(|t| t.info_hash)
            .collect();
        for info_hash in gone {
            if let Some(index) = self.index_of(&info_hash) {
                self.remove(index);
            }
        }
    }

    /// Reads a watch-dir torrent or magnet link at `path`; on success it ends up at `added`. A
    /// new file (`path` is not `added`) that does not parse waits for the next scan until it has
    /// settled (see [`WatchPending`]); an `*.added` file, which the daemon itself renamed whole,
    /// does not wait.
    fn add_watch_file(&mut self, path: &Path, added: &Path) {
        let invalid = |reason: String| {
            let target = with_suffix(path, WATCH_INVALID);
            warn!("watch dir: {reason}; renamed to {}", target.display());
            if let Err(e) = std::fs::rename(path, &target) {
                error!("watch dir: rename {}: {e}", path.display());
            }
        };
        let origin = match read_watch_file(path) {
            Ok(origin) => origin,
            Err(reason) if path != added && !self.watch_file_settled(path, &reason) => return,
            Err(reason) => {
                self.watch_pending.forget(path);
                return invalid(reason);
            }
        };
        self.watch_pending.forget(path);
        if let Some(other) = self.find(&origin.info_hash()) {
            return invalid(format!(
                "{}: duplicate of torrent {}",
                path.display(),
                other.name()
            ));
        }
        if path != added
            && let Err(e) = std::fs::rename(path, added)
        {
            error!("watch dir: rename {}: {e}", path.display());
            return;
        }
        self.add(
            origin,
            Source::Watch(added.to_owned()),
            None,
            Vec::new(),
            false,
        );
    }

    /// Whether `path`, a new watch-dir file that did not parse (`reason`), has kept its size and
    /// mtime for [`WATCH_SETTLE`], so that it is refused now; false while it may still be being
    /// written, or when it is gone. The first time a file waits, the log says so.
    fn watch_file_settled(&mut self, path: &Path, reason: &str) -> bool {
        // A dangling symlink is judged by the link itself.
        let meta = std::fs::metadata(path).or_else(|_| std::fs::symlink_metadata(path));
        let Ok(meta) = meta else {
            // Gone since the scan listed it.
            self.watch_pending.forget(path);
            return false;
        };
        let seen = FileLook {
            len: meta.len(),
            mtime: meta.modified().ok(),
        };
        match self.watch_pending.observe(path, seen, Instant::now()) {
            Settling::FirstSeen => {
                info!(
                    "watch dir: {reason}; trying again until the file has not changed for {}s",
                    WATCH_SETTLE.as_secs()
                );
                false
            }
            Settling::Waiting => false,
            Settling::Settled => true,
        }
    }

    // ---- scheduling ----------------------------------------------------------------------

    /// Takes in what running torrents reported, applies seeding limits, and starts queued
    /// torrents while the queue limits allow.
    fn schedule(&mut self) {
        for index in 0..self.torrents.len() {
            self.poll_running(index);
        }
        let now = Instant::now();
        for index in 0..self.torrents.len() {
            if self.torrents[index].retry_at.is_some_and(|at| at <= now) {
                self.retry(index);
            }
        }
        let downloading = self
            .torrents
            .iter()
            .filter(|t| is_active(t) && !t.complete)
            .count();
        let seeding = self
            .torrents
            .iter()
            .filter(|t| is_active(t) && t.complete)
            .count();
        let (mut free_down, mut free_seed) = (
            self.config.max_active_downloads.saturating_sub(downloading),
            self.config.max_active_seeds.saturating_sub(seeding),
        );
        let limits = self.seed_limits();
        for index in 0..self.torrents.len() {
            let t = &mut self.torrents[index];
            // A torrent starts again only once its last run has ended.
            let still_stopping = self.stopping.iter().any(|(h, _)| *h == t.info_hash);
            if !matches!(t.state, State::Queued) || still_stopping {
                continue;
            }
            if t.complete
                && !t.force_check
                && let Some(reached) = limits.reached(t.size(), t.totals().0, t.seeding_secs())
            {
                info!("torrent {}: {reached}; not started, data kept", t.name());
                t.state = State::Finished;
                continue;
            }
            let slot = if t.complete {
                &mut free_seed
            } else {
                &mut free_down
            };
            if *slot > 0 {
                *slot -= 1;
                self.start_checking(index);
            }
        }
    }

    fn poll_running(&mut self, index: usize) {
        let t = &mut self.torrents[index];
        let State::Running(handle) = &t.state else {
            return;
        };
        t.verified_bytes = handle.stats.verified_bytes.load(Ordering::Relaxed);
        let events: Vec<TorrentEvent> = handle.events.try_iter().collect();
        let mut next = None;
        for event in events {
            match event {
                TorrentEvent::Completed => {
                    t.complete = true;
                    t.record.completed_unix.get_or_insert_with(unix_now);
                    t.start_seeding_clock();
                    t.storage_failures = 0;
                    t.save_record(&self.config.state_dir);
                }
                TorrentEvent::Failed(reason) => next = Some(State::Error(reason)),
                TorrentEvent::RecheckNeeded(_) => {
                    // The coordinator logged why. Stop it and hash the data again.
                    t.force_check = true;
                    next = Some(State::Queued);
                }
            }
        }
        if matches!(next, Some(State::Error(_))) {
            t.set_retry();
            // The coordinator logged the error itself.
            info!(
                "torrent {}: stopped by the storage error; retry in {}s or on SIGHUP",
                t.name(),
                t.retry_after().as_secs()
            );
        }
        if next.is_none() && t.complete && !t.force_check {
            let limits = self.seed_limits();
            let t = &self.torrents[index];
            if let Some(reached) = limits.reached(t.size(), t.totals().0, t.seeding_secs()) {
                info!("torrent {}: {reached}; stopped, data kept", t.name());
                next = Some(State::Finished);
            } else {
                let seeding = self
                    .torrents
                    .iter()
                    .filter(|t| is_active(t) && t.complete)
                    .count();
                if seeding > self.config.max_active_seeds {
                    info!(
                        "torrent {}: back in the queue: {seeding} torrents seed, \
                         queue.max_active_seeds is {}",
                        t.name(),
                        self.config.max_active_seeds
                    );
                    next = Some(State::Queued);
                }
            }
        }
        if let Some(state) = next {
            self.stop_torrent(index, state);
        }
    }

    fn seed_limits(&self) -> SeedLimits {
        SeedLimits {
            ratio: self.config.ratio_limit,
            time: self.config.seed_time_limit,
        }
    }

    /// Queues a torrent that a storage error stopped, to check its data and run again.
    fn retry(&mut self, index: usize) {
        let t = &mut self.torrents[index];
        t.retry_at = None;
        if matches!(t.state, State::Error(_)) && !t.paused && t.meta.is_some() {
            info!("torrent {}: retrying after the storage error", t.name());
            t.state = State::Queued;
        }
    }

    /// Opens the torrent's files and checks its data on a `check NAME` thread: resume data
    /// when it still matches the files, a full re-hash otherwise.
    fn start_checking(&mut self, index: usize) {
        let Some(meta) = self.torrents[index].meta.clone() else {
            // Not queued without metadata (`unpause` fetches it first); should it happen, fetch.
            self.start_fetching(index);
            return;
        };
        let state_dir = self.config.state_dir.clone();
        let threads = self.config.limits.disk_threads;
        let t = &mut self.torrents[index];
        let progress = Arc::new(AtomicU32::new(0));
        t.state = State::Checking(Arc::clone(&progress));
        let root = t.download_dir().to_owned();
        let resume_path = t.resume_path(&state_dir);
        let force = std::mem::take(&mut t.force_check);
        let tx = self.checked_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("check {}", meta.name))
            .spawn(move || {
                let result = check_data(&meta, &root, &resume_path, threads, force, &progress);
                let _ = tx.send(Checked { meta, result });
            });
        if let Err(e) = spawned {
            t.state = State::Error(format!("cannot spawn check thread: {e}"));
        }
    }

    fn on_checked(&mut self, checked: Checked) {
        let meta = checked.meta;
        let Some(index) = self.index_of(&meta.info_hash) else {
            return;
        };
        let state_dir = self.config.state_dir.clone();
        let limits = self.seed_limits();
        let t = &mut self.torrents[index];
        if !matches!(t.state, State::Checking(_)) {
            return; // removed or paused meanwhile
        }
        let (storage, have) = match checked.result {
            Ok(ok) => ok,
            Err(reason) => {
                t.set_retry();
                error!(
                    "torrent {}: {reason}; retry in {}s or on SIGHUP",
                    t.name(),
                    t.retry_after().as_secs()
                );
                t.state = State::Error(reason);
                return;
            }
        };
        t.complete = have.is_full();
        t.verified_bytes = have
            .iter_ones()
            .map(|p| u64::from(meta.geometry.piece_len(p)))
            .sum();
        if t.complete {
            t.record.completed_unix.get_or_insert_with(unix_now);
        }
        let resume = ResumeTarget {
            path: t.resume_path(&state_dir),
            root: t.download_dir().to_owned(),
        };
        let allowance = limits.upload_allowance(t.size(), t.record.uploaded);
        match self.engine.add(
            meta,
            Arc::new(storage),
            have,
            t.peers.clone(),
            Some(resume),
            allowance,
        ) {
            Ok(handle) => {
                if t.complete {
                    t.start_seeding_clock();
                }
                t.run = Some(Arc::clone(&handle.stats));
                t.state = State::Running(handle);
                t.save_record(&state_dir);
            }
            Err(e) => {
                error!("torrent {}: cannot start: {e}", t.name());
                t.state = State::Error(e.to_string());
            }
        }
    }

    // ---- reload --------------------------------------------------------------------------

    fn reload(&mut self) {
        let new = match Config::load(&self.config_path) {
            Ok(new) => new,
            Err(e) => {
                error!("config reload failed: {e}; keeping the running configuration");
                return;
            }
        };
        if new.listen_address != self.config.listen_address
            || new.listen_port != self.config.listen_port
        {
            warn!("config reload: a new listen address takes effect at the next start");
        }
        if new.state_dir != self.config.state_dir {
            warn!("config reload: a new state_dir takes effect at the next start");
        }
        if new.download_dir != self.config.download_dir {
            info!(
                "config reload: paths.download_dir is now {}: torrents added from now on go \
                 there; those already added keep their data where it is",
                new.download_dir.display()
            );
        }
        self.engine.reconfigure(
            new.limits.clone(),
            new.download_rate,
            new.upload_rate,
            new.max_peers_global,
            new.max_peers_per_ip,
        );
        if new.limits != self.config.limits {
            for t in &self.torrents {
                if let State::Running(handle) = &t.state {
                    handle.send(Control::SetLimits(new.limits.clone()));
                }
            }
        }
        self.reload_tracker(new.tracker);
        if !self.level_from_env {
            log::set_max_level(new.log_level);
        }
        if let Some(log_file) = &self.log_file {
            log_file.reopen();
        }
        let old_entries = std::mem::take(&mut self.config.torrents);
        // The state directory holds our pid file: it changes only with a restart.
        let state_dir = self.config.state_dir.clone();
        let old_limits = self.seed_limits();
        self.config = Config { state_dir, ..new };
        if self.seed_limits() != old_limits {
            self.apply_seed_limits();
        }
        self.apply_entries(&old_entries);
        for index in 0..self.torrents.len() {
            if self.torrents[index].retry_at.is_some() {
                self.retry(index);
            }
        }
        info!("config reloaded from {}", self.config_path.display());
        self.scan_watch_dir();
    }

    /// New seeding limits: running torrents get their new upload allowance, and finished ones
    /// that are under the limits now go back to the queue to seed.
    fn apply_seed_limits(&mut self) {
        let limits = self.seed_limits();
        for t in &mut self.torrents {
            match &t.state {
                State::Running(handle) => handle
                    .stats
                    .set_upload_allowance(limits.upload_allowance(t.size(), t.totals().0)),
                State::Finished
                    if limits
                        .reached(t.size(), t.totals().0, t.seeding_secs())
                        .is_none() =>
                {
                    info!(
                        "torrent {}: under its seeding limits again (ratio {:.3}, seeded {} s); queued",
                        t.name(),
                        t.ratio(),
                        t.seeding_secs()
                    );
                    t.state = State::Queued;
                }
                _ => {}
            }
        }
    }

    /// Brings the embedded tracker in line with `[tracker]`: started, stopped, reconfigured in
    /// place (peers kept), or restarted on a new address. A tracker that cannot start is
    /// logged; the daemon carries on without it.
    fn reload_tracker(&mut self, wanted: Option<TrackerConfig>) {
        match (&self.tracker, wanted) {
            (None, None) => {}
            (Some(_), None) => {
                info!("config reload: [tracker] disabled");
                if let Some(tracker) = self.tracker.take() {
                    tracker.stop();
                }
            }
            (Some(tracker), Some(config)) if tracker.config().listen == config.listen => {
                if let Err(e) = tracker.set_config(config) {
                    error!("config reload: {e}; the tracker keeps its settings");
                }
            }
            (running, Some(config)) => {
                if running.is_some() {
                    info!("config reload: the tracker moves to {}", config.listen);
                }
                // Free the old address first: the new one may share its port.
                if let Some(tracker) = self.tracker.take() {
                    tracker.stop();
                }
                match TrackerServer::start(config) {
                    Ok(tracker) => self.tracker = Some(tracker),
                    Err(e) => error!("config reload: embedded tracker: {e}; running without it"),
                }
            }
        }
    }

    /// Brings the `[[torrent]]`-sourced torrents in line with the (new) config entries.
    fn apply_entries(&mut self, old: &[TorrentEntry]) {
        let new = self.config.torrents.clone();
        let keys: Vec<EntryKey> = new.iter().map(EntryKey::of).collect();
        let removed: Vec<InfoHash> = self
            .torrents
            .iter()
            .filter(|t| matches!(&t.source, Source::Config(key) if !keys.contains(key)))
            .map(|t| t.info_hash)
            .collect();
        for info_hash in removed {
            if let Some(index) = self.index_of(&info_hash) {
                self.remove(index);
            }
        }
        for (entry, key) in new.iter().zip(keys) {
            let existing = self
                .torrents
                .iter()
                .position(|t| t.source == Source::Config(key.clone()));
            let Some(index) = existing else {
                self.add_entry(entry);
                continue;
            };
            if !self.torrents[index].has_record() {
                // Its .torrent could not be read: try again.
                self.torrents.remove(index);
                self.add_entry(entry);
                continue;
            }
            if old.iter().any(|o| o == entry) {
                continue;
            }
            let t = &mut self.torrents[index];
            if let Some(dir) = &entry.download_dir
                && *dir != t.record.download_dir
            {
                info!(
                    "torrent {}: download_dir is now {} (was {}); data is not moved, the next \
                     start uses it",
                    t.name(),
                    dir.display(),
                    t.record.download_dir.display()
                );
                t.record.download_dir.clone_from(dir);
                t.save_record(&self.config.state_dir);
            }
            let mut peers = entry.peers.clone();
            if let TorrentRef::Magnet(magnet) = &entry.torrent {
                merge_peers(&mut peers, &magnet.peers);
                t.magnet = Some(magnet.clone());
            }
            if peers != t.peers {
                if let State::Running(handle) = &t.state {
                    handle.send(Control::AddPeers(peers.clone()));
                }
                t.peers = peers;
            }
            if entry.paused != t.paused {
                t.paused = entry.paused;
                if entry.paused {
                    info!("torrent {}: paused", t.name());
                    self.stop_torrent(index, State::Paused);
                } else if matches!(t.state, State::Paused) {
                    info!("torrent {}: resumed", t.name());
                    self.unpause(index);
                }
            } else if matches!(t.state, State::Metadata(_)) {
                // Ask the entry's new peers and trackers.
                self.start_fetching(index);
            }
        }
    }

    // ---- status --------------------------------------------------------------------------

    fn status(&self) -> DaemonStatus {
        let torrents = self
            .torrents
            .iter()
            .map(|t| {
                let size = t.size();
                let (uploaded, downloaded) = t.totals();
                let (down_rate, up_rate, peers) = match &t.state {
                    State::Running(h) => (
                        h.stats.download_rate.load(Ordering::Relaxed),
                        h.stats.upload_rate.load(Ordering::Relaxed),
                        h.stats.peers.load(Ordering::Relaxed),
                    ),
                    _ => (0, 0, 0),
                };
                let have_bytes = if t.complete { size } else { t.verified_bytes };
                let downloading = matches!(t.state, State::Running(_)) && !t.complete;
                TorrentStatus {
                    id: t.id,
                    name: t.name.clone(),
                    info_hash: if t.has_record() {
                        t.info_hash.to_hex()
                    } else {
                        String::new()
                    },
                    state: t.state.name(t.complete).into(),
                    progress: if t.meta.is_none() {
                        0.0
                    } else {
                        have_bytes as f64 / size.max(1) as f64
                    },
                    check_progress: match (&t.state, &t.meta) {
                        (State::Checking(done), Some(meta)) => Some(
                            f64::from(done.load(Ordering::Relaxed))
                                / f64::from(meta.geometry.num_pieces.max(1)),
                        ),
                        _ => None,
                    },
                    size_bytes: size,
                    have_bytes,
                    eta_secs: (downloading && down_rate > 0)
                        .then(|| size.saturating_sub(have_bytes) / down_rate),
                    download_dir: t.download_dir().display().to_string(),
                    added_unix: t.record.added_unix,
                    seeding_secs: t.seeding_secs(),
                    downloaded_bytes: downloaded,
                    uploaded_bytes: uploaded,
                    download_rate: down_rate,
                    upload_rate: up_rate,
                    peers,
                    ratio: t.ratio(),
                    error: match &t.state {
                        State::Error(e) => Some(e.clone()),
                        _ => None,
                    },
                    source: t.source.describe(),
                    swarm: match &t.state {
                        State::Running(h) if h.stats.swarm.known.load(Ordering::Acquire) => {
                            Some(SwarmCounts {
                                seeders: h.stats.swarm.seeders.load(Ordering::Relaxed),
                                leechers: h.stats.swarm.leechers.load(Ordering::Relaxed),
                                completed: h.stats.swarm.completed.load(Ordering::Relaxed),
                            })
                        }
                        _ => None,
                    },
                }
            })
            .collect();
        DaemonStatus {
            pid: std::process::id(),
            updated_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            listen: self.engine.listen_addr().to_string(),
            torrents,
            tracker: self.tracker.as_ref().map(|tracker| {
                let stats = tracker.stats();
                TrackerStatus {
                    listen: tracker.local_addr().to_string(),
                    torrents: stats.torrents,
                    peers: stats.peers,
                }
            }),
        }
    }

    fn write_status(&self) {
        let path = DaemonStatus::path_in(&self.config.state_dir);
        if let Err(e) = self.status().save(&path) {
            warn!("status file: {e}");
        }
    }

    // ---- stop ----------------------------------------------------------------------------

    fn shutdown(mut self) {
        info!("daemon stopping");
        let deadline = Instant::now() + STOP_BUDGET;
        // Ask every coordinator at once, so their `stopped` announces overlap; end every
        // metadata fetch (dropping its `stop`) meanwhile.
        let mut fetches = Vec::new();
        for index in 0..self.torrents.len() {
            let t = &mut self.torrents[index];
            if matches!(t.state, State::Metadata(_))
                && let State::Metadata(fetching) = std::mem::replace(&mut t.state, State::Stopped)
            {
                fetches.push(fetching.thread);
            }
            // Paused, finished and errored torrents say so in the last status file.
            if matches!(
                self.torrents[index].state,
                State::Queued | State::Checking(_) | State::Running(_) | State::Stopped
            ) {
                self.stop_torrent(index, State::Stopped);
            }
        }
        // Every run stops in parallel; wait for them on their channels, within the budget.
        let mut left = 0;
        for (_, stopping) in &mut self.stopping {
            if !stopping.thread.wait_until(deadline) {
                left += 1;
            }
        }
        if left > 0 {
            warn!(
                "daemon: stop budget spent; {left} torrents still stopping are left to end with \
                 the process (their resume data from the last save stands)"
            );
        }
        self.reap_stopped();
        for mut thread in fetches {
            thread.wait_until(deadline);
        }
        self.save_records();
        self.write_status();
        let Self {
            engine,
            pid_file,
            tracker,
            ..
        } = self;
        if let Some(tracker) = tracker {
            tracker.stop();
        }
        engine.shutdown();
        crate::profile::log_report();
        if let Some(pid_file) = pid_file {
            pid_file.release();
        }
        info!("daemon stopped");
    }
}

fn is_active(t: &Managed) -> bool {
    matches!(t.state, State::Checking(_) | State::Running(_))
}

/// The key of a `[[torrent]]` entry whose file could not be read: the SHA-1 of its path, so it
/// never clashes with a real torrent's info hash.
fn placeholder_hash(path: &Path) -> InfoHash {
    use sha1::{Digest, Sha1};
    InfoHash(Sha1::digest(path.as_os_str().as_encoded_bytes()).into())
}

/// A watch-directory file: a `.torrent`, or a `.magnet` holding one magnet URI (either one
/// possibly renamed `*.added` already).
fn read_watch_file(path: &Path) -> Result<Origin, String> {
    let name = path.to_string_lossy();
    if name.ends_with(".magnet") || name.ends_with(".magnet.added") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Magnet::parse(text.trim())
            .map(Origin::Magnet)
            .map_err(|e| format!("{}: {e}", path.display()))
    } else {
        // Its errors name the file.
        Metainfo::from_file(path)
            .map(Origin::Meta)
            .map_err(|e| e.to_string())
    }
}

/// How long a new watch-dir file that does not parse must keep its size and mtime before it is
/// refused: an upload in progress (SFTP, a web form) writes it in parts, seconds apart.
const WATCH_SETTLE: Duration = Duration::from_secs(5);

/// A file's size and mtime, as one scan of the watch directory saw them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileLook {
    len: u64,
    mtime: Option<std::time::SystemTime>,
}

/// Where a watch-dir file that does not parse stands.
#[derive(Debug, PartialEq, Eq)]
enum Settling {
    /// Seen for the first time: it waits.
    FirstSeen,
    /// Changed since, or unchanged for less than [`WATCH_SETTLE`]: it waits.
    Waiting,
    /// Unchanged for [`WATCH_SETTLE`]: refuse it.
    Settled,
}

/// The watch-dir files that did not parse yet: path -> how each looked and since when it has
/// looked so. Only the main thread's scans use it; time is passed in.
#[derive(Debug, Default)]
struct WatchPending(std::collections::HashMap<PathBuf, (FileLook, Instant)>);

impl WatchPending {
    /// `path` did not parse and looks like `look` at `now`.
    fn observe(&mut self, path: &Path, look: FileLook, now: Instant) -> Settling {
        match self.0.get_mut(path) {
            None => {
                self.0.insert(path.to_owned(), (look, now));
                Settling::FirstSeen
            }
            Some((before, since)) if *before != look => {
                *before = look;
                *since = now;
                Settling::Waiting
            }
            Some((_, since)) if now.duration_since(*since) >= WATCH_SETTLE => Settling::Settled,
            Some(_) => Settling::Waiting,
        }
    }

    /// Done with `path`: added, refused, or gone.
    fn forget(&mut self, path: &Path) {
        self.0.remove(path);
    }

    /// Keeps the files for which `present` holds (those still in the watch directory).
    fn retain(&mut self, present: impl Fn(&Path) -> bool) {
        self.0.retain(|path, _| present(path));
    }
}

/// Appends the addresses of `more` that `peers` lacks.
fn merge_peers(peers: &mut Vec<SocketAddr>, more: &[SocketAddr]) {
    for addr in more {
        if !peers.contains(addr) {
            peers.push(*addr);
        }
    }
}

/// A magnet link's name until its metadata arrives: its `dn` without control characters (it
/// names a thread, and goes into the log), else the info hash.
fn display_name(magnet: &Magnet) -> String {
    let dn: String = magnet
        .name
        .as_deref()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if dn.trim().is_empty() {
        magnet.info_hash.to_hex()
    } else {
        dn
    }
}

/// Where a magnet link's fetched metadata is kept: `<state_dir>/torrents/<infohash>.torrent`.
fn saved_torrent_path(state_dir: &Path, info_hash: &InfoHash) -> PathBuf {
    state_dir
        .join("torrents")
        .join(format!("{}.torrent", info_hash.to_hex()))
}

/// Fetches a magnet link's metadata (see [`metadata_fetch::fetch`]), again after each failure
/// (waiting [`METADATA_RETRY_BASE`], doubled per failure up to [`METADATA_RETRY_MAX`]), makes it
/// a torrent with the link's trackers and saves it as `saved`. `None` when `stop` fired (or was
/// dropped) first. Runs on a `metadata NAME` thread.
fn fetch_metadata(
    params: &FetchParams,
    saved: &Path,
    stop: &Receiver<()>,
) -> Option<Result<Metainfo, String>> {
    let mut wait = METADATA_RETRY_BASE;
    loop {
        match metadata_fetch::fetch(params, stop) {
            Ok(fetched) => return Some(torrent_from_metadata(params, &fetched, saved)),
            Err(FetchError::Stopped) => return None,
            Err(e) => warn!("magnet {}: {e}; trying again in {wait:?}", params.info_hash),
        }
        if !matches!(stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout)) {
            return None;
        }
        wait = (wait * 2).min(METADATA_RETRY_MAX);
    }
}

/// The torrent of verified metadata, with the magnet link's trackers (one tier each), saved
/// as `saved` (a failed save is logged: the next start fetches it again).
fn torrent_from_metadata(
    params: &FetchParams,
    fetched: &metadata_fetch::Fetched,
    saved: &Path,
) -> Result<Metainfo, String> {
    let tiers: Vec<Vec<String>> = params.trackers.iter().map(|t| vec![t.clone()]).collect();
    let meta = Metainfo::from_info_bytes(&fetched.info, &tiers)
        .map_err(|e| format!("the metadata is not a usable torrent: {e}"))?;
    // `fetch` verified the bytes; checked again on what the torrent is built from.
    if meta.info_hash != params.info_hash {
        return Err(format!(
            "the metadata hashes to {}, not to the magnet link's info hash {}",
            meta.info_hash, params.info_hash
        ));
    }
    let sources: Vec<String> = fetched.sources.iter().map(ToString::to_string).collect();
    info!(
        "torrent {}: metadata received, {} bytes from {}",
        meta.name,
        fetched.info.len(),
        sources.join(", ")
    );
    match crate::atomic_file::write(saved, &meta.to_torrent_bytes()) {
        Ok(()) => info!(
            "torrent {}: metadata saved to {}",
            meta.name,
            saved.display()
        ),
        Err(e) => warn!(
            "torrent {}: cannot save the metadata: {e}; the next start fetches it again",
            meta.name
        ),
    }
    Ok(meta)
}

/// The wait before retrying a torrent after `failures` storage errors in a row: 60 s, doubling,
/// at most 30 min.
fn storage_retry_after(failures: u32) -> Duration {
    STORAGE_RETRY_BASE
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(STORAGE_RETRY_MAX)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Opens the files and finds the verified pieces: from resume data when it still matches the
/// files, else by hashing. Runs on a `check NAME` thread.
fn check_data(
    meta: &Metainfo,
    root: &Path,
    resume_path: &Path,
    threads: usize,
    force: bool,
    progress: &AtomicU32,
) -> Result<(Storage, Bitfield), String> {
    if force {
        // The data changed under a running torrent: the resume data may list pieces that are
        // gone. Remove it first, so a crash during the check cannot bring it back.
        if let Err(e) = std::fs::remove_file(resume_path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(format!("{}: cannot remove: {e}", resume_path.display()));
        }
    }
    let storage = Storage::open(root, meta, OpenMode::Download).map_err(|e| e.to_string())?;
    let why = match ResumeData::load(resume_path) {
        Ok(Some(resume)) => match resume.check(meta, root) {
            Ok(have) => {
                info!(
                    "torrent {}: resume data matches, {}/{} pieces",
                    meta.name,
                    have.count_ones(),
                    meta.geometry.num_pieces
                );
                return Ok((storage, have));
            }
            Err(stale) => format!("resume data not used: {stale}"),
        },
        Ok(None) if force => "its data changed while it ran".to_owned(),
        Ok(None) => "no resume data".to_owned(),
        Err(e) => format!("resume data not used: {e}"),
    };
    info!("torrent {}: {why}; checking data", meta.name);
    let started = Instant::now();
    let have = storage.verify(&meta.piece_hashes, threads, progress);
    info!(
        "torrent {}: {}/{} pieces verified in {:.1?}",
        meta.name,
        have.count_ones(),
        meta.geometry.num_pieces,
        started.elapsed()
    );
    Ok((storage, have))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const BLOCK: u64 = crate::wire::BLOCK_LEN as u64;

    fn limits(ratio: f64, time_secs: u64) -> SeedLimits {
        SeedLimits {
            ratio,
            time: Duration::from_secs(time_secs),
        }
    }

    #[test]
    fn no_seeding_limit_is_ever_reached_and_allows_any_upload() {
        let none = limits(0.0, 0);
        assert_eq!(none.reached(8 * MIB, u64::MAX, u64::MAX), None);
        assert_eq!(none.upload_allowance(8 * MIB, 100 * MIB), None);
    }

    #[test]
    fn the_ratio_limit_is_reached_at_ratio_times_size_rounded_up() {
        let l = limits(1.5, 0);
        assert_eq!(l.reached(8 * MIB, 12 * MIB - 1, 0), None);
        assert_eq!(
            l.reached(8 * MIB, 12 * MIB, 0),
            Some(LimitReached::Ratio {
                ratio: 1.5,
                limit: 1.5
            })
        );
        // 1/3 of 10 bytes is 3.33: 4 bytes reach it, 3 do not.
        let third = limits(1.0 / 3.0, 0);
        assert_eq!(third.reached(10, 3, 0), None);
        assert!(third.reached(10, 4, 0).is_some());
    }

    #[test]
    fn the_upload_allowance_ends_within_one_block_past_the_ratio_target() {
        let l = limits(1.5, 0);
        // A fresh torrent may send its target and one block more (a block that starts below
        // the target is served whole).
        assert_eq!(l.upload_allowance(8 * MIB, 0), Some(12 * MIB + BLOCK));
        // Eight MiB already sent in earlier runs count.
        assert_eq!(l.upload_allowance(8 * MIB, 8 * MIB), Some(4 * MIB + BLOCK));
        // At or past the target, less than a block is left: nothing more is served.
        assert!(l.upload_allowance(8 * MIB, 12 * MIB).unwrap() <= BLOCK);
        assert_eq!(l.upload_allowance(8 * MIB, 20 * MIB), Some(0));
    }

    #[test]
    fn the_time_limit_counts_lifetime_seconds_and_the_ratio_is_named_first() {
        let l = limits(2.0, 3600);
        assert_eq!(l.reached(MIB, 0, 3599), None);
        assert_eq!(
            l.reached(MIB, 0, 3600),
            Some(LimitReached::Time {
                seeded_secs: 3600,
                limit_secs: 3600
            })
        );
        assert!(matches!(
            l.reached(MIB, 2 * MIB, 7200),
            Some(LimitReached::Ratio { .. })
        ));
        assert_eq!(
            l.reached(MIB, 0, 4000).unwrap().to_string(),
            "seeding time limit reached (seeded 4000 s, limit 3600 s)"
        );
        assert_eq!(
            l.reached(MIB, 2 * MIB, 0).unwrap().to_string(),
            "ratio limit reached (ratio 2.000, limit 2)"
        );
    }

    #[test]
    fn storage_retries_wait_a_minute_then_double_up_to_half_an_hour() {
        let minutes: Vec<u64> = (1..=8)
            .map(|n| storage_retry_after(n).as_secs() / 60)
            .collect();
        assert_eq!(minutes, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(storage_retry_after(u32::MAX), STORAGE_RETRY_MAX);
    }

    #[test]
    fn a_watch_file_that_does_not_parse_is_refused_only_once_unchanged_for_the_settle_time() {
        let path = Path::new("/watch/slow.torrent");
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let look = |len: u64| FileLook { len, mtime: None };
        let mut pending = WatchPending::default();
        assert_eq!(pending.observe(path, look(100), t0), Settling::FirstSeen);
        assert_eq!(pending.observe(path, look(100), at(4)), Settling::Waiting);
        // The upload goes on: the wait starts again.
        assert_eq!(pending.observe(path, look(300), at(4)), Settling::Waiting);
        assert_eq!(pending.observe(path, look(300), at(8)), Settling::Waiting);
        assert_eq!(pending.observe(path, look(300), at(9)), Settling::Settled);
        // A new mtime alone is a change too.
        let touched = FileLook {
            len: 300,
            mtime: Some(std::time::SystemTime::UNIX_EPOCH),
        };
        assert_eq!(pending.observe(path, touched, at(9)), Settling::Waiting);
        assert_eq!(pending.observe(path, touched, at(14)), Settling::Settled);
    }

    #[test]
    fn pending_watch_files_are_forgotten_once_gone() {
        let (a, b) = (Path::new("/watch/a.torrent"), Path::new("/watch/b.magnet"));
        let t0 = Instant::now();
        let look = FileLook {
            len: 0,
            mtime: None,
        };
        let mut pending = WatchPending::default();
        pending.observe(a, look, t0);
        pending.observe(b, look, t0);
        pending.retain(|p| p == b);
        pending.forget(b);
        // Both start over: a file written again under the same name gets the whole wait.
        let later = t0 + WATCH_SETTLE;
        assert_eq!(pending.observe(a, look, later), Settling::FirstSeen);
        assert_eq!(pending.observe(b, look, later), Settling::FirstSeen);
    }
}
