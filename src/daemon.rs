//! The daemon: `btd daemon --config FILE`. Runs on the main thread and owns the set of
//! torrents: where each came from (a `[[torrent]]` entry or a watch-directory file), its state
//! (queued, checking, running, paused, finished, error), the queue limits, the seeding limits,
//! the status file, the pid file and the reaction to signals. It never touches a socket or a
//! piece: each running torrent is a coordinator thread behind a `TorrentHandle`, and checking
//! data at start (resume data or a full re-hash) runs on a `check NAME` thread.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use log::{error, info, warn};
use parking_lot::Mutex;

use crate::config::{Config, TorrentEntry};
use crate::engine::Engine;
use crate::metainfo::{InfoHash, Metainfo};
use crate::pidfile::PidFile;
use crate::resume::ResumeData;
use crate::status::{DaemonStatus, SwarmCounts, TorrentStatus};
use crate::storage::{OpenMode, Storage};
use crate::torrent::{Control, ResumeTarget, TorrentEvent, TorrentHandle};
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
const LOOP_WAKE: Duration = Duration::from_millis(250);
/// The whole graceful stop must fit in 5 s; coordinators get this long to finish.
const STOP_BUDGET: Duration = Duration::from_millis(4500);

/// Where a torrent came from, which also decides how it is removed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    /// A `[[torrent]]` entry with this `.torrent` path.
    Config(PathBuf),
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

enum State {
    Queued,
    Checking,
    Running(TorrentHandle),
    Paused,
    /// Seeding limit reached; data kept, not uploading.
    Finished,
    Error(String),
}

impl State {
    fn name(&self, complete: bool) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Checking => "checking",
            State::Running(_) if complete => "seeding",
            State::Running(_) => "downloading",
            State::Paused => "paused",
            State::Finished => "finished",
            State::Error(_) => "error",
        }
    }
}

struct Managed {
    meta: Arc<Metainfo>,
    source: Source,
    download_dir: PathBuf,
    peers: Vec<SocketAddr>,
    paused: bool,
    state: State,
    /// Every piece verified, as last known.
    complete: bool,
    verified_bytes: u64,
    uploaded_before: u64,
    downloaded_before: u64,
    completed_unix: Option<u64>,
    seeding_since: Option<Instant>,
}

impl Managed {
    fn name(&self) -> &str {
        &self.meta.name
    }

    fn resume_path(&self, state_dir: &Path) -> PathBuf {
        ResumeData::path_in(state_dir, &self.meta.info_hash)
    }

    fn totals(&self) -> (u64, u64) {
        match &self.state {
            State::Running(h) => (
                self.uploaded_before + h.stats.uploaded.load(Ordering::Relaxed),
                self.downloaded_before + h.stats.downloaded.load(Ordering::Relaxed),
            ),
            _ => (self.uploaded_before, self.downloaded_before),
        }
    }

    fn ratio(&self) -> f64 {
        let size = self.meta.geometry.total_len.max(1);
        self.totals().0 as f64 / size as f64
    }
}

/// The outcome of checking a torrent's data before it starts.
struct Checked {
    info_hash: InfoHash,
    result: Result<(Storage, Bitfield), String>,
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
    pid_file: Option<PidFile>,
    log_file: Option<LogFile>,
    /// Set when RUST_LOG decides the log level, so a reload leaves it alone.
    level_from_env: bool,
}

impl Daemon {
    /// Takes the pid file, binds the listener and loads the configured and watched torrents.
    ///
    /// # Errors
    /// A second daemon on the same state directory, an unusable state directory, or a listen
    /// address that cannot be bound.
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
        let (checked_tx, checked_rx) = crossbeam_channel::unbounded();
        let mut daemon = Self {
            config,
            config_path: config_path.to_owned(),
            engine,
            torrents: Vec::new(),
            checked_tx,
            checked_rx,
            pid_file: Some(pid_file),
            log_file,
            level_from_env: std::env::var_os("RUST_LOG").is_some(),
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
        loop {
            self.schedule();
            if Instant::now() >= next_status {
                self.write_status();
                next_status = Instant::now() + self.config.status_interval;
            }
            let checked_rx = self.checked_rx.clone();
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
        match Metainfo::from_file(&entry.path) {
            Ok(meta) => {
                self.add(
                    meta,
                    Source::Config(entry.path.clone()),
                    entry.download_dir.clone(),
                    entry.peers.clone(),
                    entry.paused,
                );
            }
            Err(e) => error!("config {}: [[torrent]] {e}", self.config_path.display()),
        }
    }

    /// Adds a torrent (queued, or paused). Returns false for a duplicate info hash.
    fn add(
        &mut self,
        meta: Metainfo,
        source: Source,
        download_dir: PathBuf,
        peers: Vec<SocketAddr>,
        paused: bool,
    ) -> bool {
        if let Some(other) = self.find(&meta.info_hash) {
            warn!(
                "torrent {}: already present (from {}); ignoring {}",
                other.name(),
                other.source.describe(),
                source.describe()
            );
            return false;
        }
        let resume = ResumeData::load(&ResumeData::path_in(
            &self.config.state_dir,
            &meta.info_hash,
        ))
        .ok()
        .flatten();
        info!("torrent {}: added from {}", meta.name, source.describe());
        let verified_bytes = 0;
        self.torrents.push(Managed {
            complete: resume.as_ref().is_some_and(|r| r.completed_unix.is_some()),
            uploaded_before: resume.as_ref().map_or(0, |r| r.uploaded),
            downloaded_before: resume.as_ref().map_or(0, |r| r.downloaded),
            completed_unix: resume.as_ref().and_then(|r| r.completed_unix),
            meta: Arc::new(meta),
            source,
            download_dir,
            peers,
            paused,
            state: if paused { State::Paused } else { State::Queued },
            verified_bytes,
            seeding_since: None,
        });
        true
    }

    fn find(&self, info_hash: &InfoHash) -> Option<&Managed> {
        self.torrents
            .iter()
            .find(|t| t.meta.info_hash == *info_hash)
    }

    fn index_of(&self, info_hash: &InfoHash) -> Option<usize> {
        self.torrents
            .iter()
            .position(|t| t.meta.info_hash == *info_hash)
    }

    /// Stops (if running) and forgets a torrent. Its data stays on disk.
    fn remove(&mut self, index: usize) {
        self.stop_torrent(index, State::Paused);
        let t = self.torrents.remove(index);
        info!(
            "torrent {}: removed (data kept in {})",
            t.name(),
            t.download_dir.display()
        );
    }

    /// Stops a running torrent (announce `stopped`, flush, resume data saved by its coordinator)
    /// and leaves it in `next`.
    fn stop_torrent(&mut self, index: usize, next: State) {
        let t = &mut self.torrents[index];
        let previous = std::mem::replace(&mut t.state, next);
        if let State::Running(handle) = previous {
            self.engine.unregister(&t.meta.info_hash);
            t.uploaded_before += handle.stats.uploaded.load(Ordering::Relaxed);
            t.downloaded_before += handle.stats.downloaded.load(Ordering::Relaxed);
            t.verified_bytes = handle.stats.verified_bytes.load(Ordering::Relaxed);
            handle.stop();
        }
    }

    // ---- the watch directory -------------------------------------------------------------

    /// Adds new `*.torrent` files (renamed `*.added`, or `*.invalid` with the reason logged),
    /// loads `*.added` files we do not know yet (after a restart), and removes torrents whose
    /// `*.added` file is gone.
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
            if name.ends_with(".torrent") {
                self.add_watch_file(&path, &with_suffix(&path, WATCH_ADDED));
            } else if name.ends_with(".torrent.added") && !known.contains(&path) {
                self.add_watch_file(&path, &path);
            }
        }
        let gone: Vec<InfoHash> = self
            .torrents
            .iter()
            .filter(|t| matches!(&t.source, Source::Watch(file) if !file.exists()))
            .map(|t| t.meta.info_hash)
            .collect();
        for info_hash in gone {
            if let Some(index) = self.index_of(&info_hash) {
                self.remove(index);
            }
        }
    }

    /// Reads a watch-dir torrent at `path`; on success it ends up at `added`.
    fn add_watch_file(&mut self, path: &Path, added: &Path) {
        let invalid = |reason: String| {
            let target = with_suffix(path, WATCH_INVALID);
            warn!(
                "watch dir: {}: {reason}; renamed to {}",
                path.display(),
                target.display()
            );
            if let Err(e) = std::fs::rename(path, &target) {
                error!("watch dir: rename {}: {e}", path.display());
            }
        };
        let meta = match Metainfo::from_file(path) {
            Ok(meta) => meta,
            Err(e) => return invalid(e.to_string()),
        };
        if let Some(other) = self.find(&meta.info_hash) {
            return invalid(format!("duplicate of torrent {}", other.name()));
        }
        if path != added
            && let Err(e) = std::fs::rename(path, added)
        {
            error!("watch dir: rename {}: {e}", path.display());
            return;
        }
        let download_dir = self.config.download_dir.clone();
        self.add(
            meta,
            Source::Watch(added.to_owned()),
            download_dir,
            Vec::new(),
            false,
        );
    }

    // ---- scheduling ----------------------------------------------------------------------

    /// Takes in what running torrents reported, applies seeding limits, and starts queued
    /// torrents while the queue limits allow.
    fn schedule(&mut self) {
        for index in 0..self.torrents.len() {
            self.poll_running(index);
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
        for index in 0..self.torrents.len() {
            if !matches!(self.torrents[index].state, State::Queued) {
                continue;
            }
            let slot = if self.torrents[index].complete {
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
        let mut next = None;
        while let Ok(event) = handle.events.try_recv() {
            match event {
                TorrentEvent::Completed => {
                    t.complete = true;
                    t.seeding_since = Some(Instant::now());
                }
                TorrentEvent::Failed(reason) => next = Some(State::Error(reason)),
            }
        }
        if next.is_none() && t.complete {
            let ratio_hit = self.config.ratio_limit > 0.0 && t.ratio() >= self.config.ratio_limit;
            let time_hit = !self.config.seed_time_limit.is_zero()
                && t.seeding_since.get_or_insert_with(Instant::now).elapsed()
                    >= self.config.seed_time_limit;
            if ratio_hit || time_hit {
                info!(
                    "torrent {}: seeding limit reached (ratio {:.2}); stopped, data kept",
                    t.name(),
                    t.ratio()
                );
                next = Some(State::Finished);
            } else {
                let seeding = self
                    .torrents
                    .iter()
                    .filter(|t| is_active(t) && t.complete)
                    .count();
                if seeding > self.config.max_active_seeds {
                    next = Some(State::Queued);
                }
            }
        }
        if let Some(state) = next {
            self.stop_torrent(index, state);
        }
    }

    /// Opens the torrent's files and checks its data on a `check NAME` thread: resume data
    /// when it still matches the files, a full re-hash otherwise.
    fn start_checking(&mut self, index: usize) {
        let state_dir = self.config.state_dir.clone();
        let threads = self.config.limits.disk_threads;
        let t = &mut self.torrents[index];
        t.state = State::Checking;
        let meta = Arc::clone(&t.meta);
        let root = t.download_dir.clone();
        let resume_path = t.resume_path(&state_dir);
        let tx = self.checked_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("check {}", meta.name))
            .spawn(move || {
                let result = check_data(&meta, &root, &resume_path, threads);
                let _ = tx.send(Checked {
                    info_hash: meta.info_hash,
                    result,
                });
            });
        if let Err(e) = spawned {
            t.state = State::Error(format!("cannot spawn check thread: {e}"));
        }
    }

    fn on_checked(&mut self, checked: Checked) {
        let Some(index) = self.index_of(&checked.info_hash) else {
            return;
        };
        let state_dir = self.config.state_dir.clone();
        let t = &mut self.torrents[index];
        if !matches!(t.state, State::Checking) {
            return; // removed or paused meanwhile
        }
        let (storage, have) = match checked.result {
            Ok(ok) => ok,
            Err(reason) => {
                error!("torrent {}: {reason}", t.name());
                t.state = State::Error(reason);
                return;
            }
        };
        t.complete = have.is_full();
        t.verified_bytes = have
            .iter_ones()
            .map(|p| u64::from(t.meta.geometry.piece_len(p)))
            .sum();
        if t.complete {
            t.seeding_since.get_or_insert_with(Instant::now);
        }
        let resume = ResumeTarget {
            path: t.resume_path(&state_dir),
            root: t.download_dir.clone(),
            uploaded_before: t.uploaded_before,
            downloaded_before: t.downloaded_before,
            completed_unix: t.completed_unix,
        };
        match self.engine.add(
            Arc::clone(&t.meta),
            Arc::new(storage),
            have,
            t.peers.clone(),
            Some(resume),
        ) {
            Ok(handle) => t.state = State::Running(handle),
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
        self.engine.reconfigure(
            new.limits.clone(),
            new.download_rate,
            new.upload_rate,
            new.max_peers_global,
        );
        for t in &self.torrents {
            if let State::Running(handle) = &t.state {
                handle.send(Control::SetLimits(new.limits.clone()));
            }
        }
        if !self.level_from_env {
            log::set_max_level(new.log_level);
        }
        if let Some(log_file) = &self.log_file {
            log_file.reopen();
        }
        let old_entries = std::mem::take(&mut self.config.torrents);
        // The state directory holds our pid file: it changes only with a restart.
        let state_dir = self.config.state_dir.clone();
        self.config = Config { state_dir, ..new };
        self.apply_entries(&old_entries);
        info!("config reloaded from {}", self.config_path.display());
        self.scan_watch_dir();
    }

    /// Brings the `[[torrent]]`-sourced torrents in line with the (new) config entries.
    fn apply_entries(&mut self, old: &[TorrentEntry]) {
        let new = self.config.torrents.clone();
        let removed: Vec<InfoHash> = self
            .torrents
            .iter()
            .filter(|t| matches!(&t.source, Source::Config(p) if !new.iter().any(|e| &e.path == p)))
            .map(|t| t.meta.info_hash)
            .collect();
        for info_hash in removed {
            if let Some(index) = self.index_of(&info_hash) {
                self.remove(index);
            }
        }
        for entry in &new {
            let existing = self
                .torrents
                .iter()
                .position(|t| t.source == Source::Config(entry.path.clone()));
            let Some(index) = existing else {
                self.add_entry(entry);
                continue;
            };
            if old.iter().any(|o| o == entry) {
                continue;
            }
            let t = &mut self.torrents[index];
            t.download_dir.clone_from(&entry.download_dir);
            if entry.peers != t.peers {
                t.peers.clone_from(&entry.peers);
                if let State::Running(handle) = &t.state {
                    handle.send(Control::AddPeers(entry.peers.clone()));
                }
            }
            if entry.paused != t.paused {
                t.paused = entry.paused;
                if entry.paused {
                    info!("torrent {}: paused", t.name());
                    self.stop_torrent(index, State::Paused);
                } else if matches!(t.state, State::Paused) {
                    info!("torrent {}: resumed", t.name());
                    t.state = State::Queued;
                }
            }
        }
    }

    // ---- status --------------------------------------------------------------------------

    fn status(&self) -> DaemonStatus {
        let torrents = self
            .torrents
            .iter()
            .map(|t| {
                let size = t.meta.geometry.total_len;
                let (uploaded, downloaded) = t.totals();
                let (down_rate, up_rate, peers) = match &t.state {
                    State::Running(h) => (
                        h.stats.download_rate.load(Ordering::Relaxed),
                        h.stats.upload_rate.load(Ordering::Relaxed),
                        h.stats.peers.load(Ordering::Relaxed),
                    ),
                    _ => (0, 0, 0),
                };
                TorrentStatus {
                    name: t.meta.name.clone(),
                    info_hash: t.meta.info_hash.to_hex(),
                    state: t.state.name(t.complete).into(),
                    progress: if t.complete {
                        1.0
                    } else {
                        t.verified_bytes as f64 / size.max(1) as f64
                    },
                    size_bytes: size,
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
        // Ask every coordinator at once, so their `stopped` announces overlap.
        for t in &self.torrents {
            if let State::Running(handle) = &t.state {
                self.engine.unregister(&t.meta.info_hash);
                handle.send(Control::Stop);
            }
        }
        for index in 0..self.torrents.len() {
            if Instant::now() >= deadline {
                warn!(
                    "daemon: stop budget spent; leaving the remaining torrents to exit with the process"
                );
                break;
            }
            self.stop_torrent(index, State::Queued);
        }
        self.write_status();
        let Self {
            engine, pid_file, ..
        } = self;
        engine.shutdown();
        if let Some(pid_file) = pid_file {
            pid_file.release();
        }
        info!("daemon stopped");
    }
}

fn is_active(t: &Managed) -> bool {
    matches!(t.state, State::Checking | State::Running(_))
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
) -> Result<(Storage, Bitfield), String> {
    let storage = Storage::open(root, meta, OpenMode::Download).map_err(|e| e.to_string())?;
    let resume = match ResumeData::load(resume_path) {
        Ok(resume) => resume,
        Err(e) => {
            warn!("torrent {}: {e}; checking data", meta.name);
            None
        }
    };
    if let Some(have) = resume.and_then(|r| r.validate(meta, root)) {
        info!(
            "torrent {}: resume data matches, {}/{} pieces",
            meta.name,
            have.count_ones(),
            meta.geometry.num_pieces
        );
        return Ok((storage, have));
    }
    info!("torrent {}: checking data", meta.name);
    let started = Instant::now();
    let have = storage.verify(&meta.piece_hashes, threads);
    info!(
        "torrent {}: {}/{} pieces verified in {:.1?}",
        meta.name,
        have.count_ones(),
        meta.geometry.num_pieces,
        started.elapsed()
    );
    Ok((storage, have))
}
