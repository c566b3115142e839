//! The daemon: `btd daemon --config FILE`. Runs on the main thread and owns the set of
//! torrents: where each came from (a `[[torrent]]` entry or a watch-directory file, naming a
//! `.torrent` or a magnet link), its state (metadata, queued, checking, running, paused,
//! finished, error), the queue limits, the seeding limits, the status file, the pid file and
//! the reaction to signals. It never touches a socket or a piece: each running torrent is a
//! coordinator thread behind a `TorrentHandle`, checking data at start (resume data or a full
//! re-hash) runs on a `check NAME` thread, and fetching a magnet link's metadata on a
//! `metadata NAME` thread. With `[tracker] enabled`, it also owns the embedded tracker
//! (`tracker_server`), started and stopped with it and reconfigured on SIGHUP.
//!
//! This module holds the `Daemon` (its start, main loop, status and shutdown); its other jobs
//! are in `lifecycle` (the pure core: every torrent's phase, events in, actions out, the
//! queue's turns; the only writer of a phase), `sources` (entries, watch files and magnets
//! coming and going), `watch` (the watch directory), `queue` (carrying out the core's actions:
//! checks, runs, moves, runs stopping), `reload` (SIGHUP), `torrent` (one torrent's lifecycle,
//! resources and record) and `signals`.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select};
use log::{debug, error, info, warn};
use parking_lot::Mutex;

use crate::atomic_file::AtomicFileError;
use crate::config::{Config, TorrentEntry, TorrentRef};
use crate::engine::{Engine, RunOptions};
use crate::magnet::Magnet;
use crate::metadata_fetch::{self, FetchError, FetchParams};
use crate::metainfo::{InfoHash, Metainfo};
use crate::pidfile::PidFile;
use crate::record::{IdleLimit, PathRename, RatioLimit, TorrentRecord, unix_now};
use crate::resume::ResumeData;
use crate::rpc::{RpcCall, RpcServer};
use crate::session_settings::SessionSettings;
use crate::state_writer::StateWriter;
use crate::status::{DaemonStatus, SwarmCounts, TorrentStatus, TrackerStatus};
use crate::storage::Storage;
use crate::torrent::{
    Control, ResumeTarget, Stopping, TorrentEvent, TorrentHandle, TorrentLimits, TorrentStats,
};
use crate::tracker_server::{TrackerConfig, TrackerServer};
use crate::watched::{self, Watched};
use crate::wire::Bitfield;

mod lifecycle;
mod queue;
mod reload;
mod rpc;
mod signals;
mod sources;
mod torrent;
mod watch;

use lifecycle::{
    Action, Lifecycle, MoveOutcome, Phase, QueueMove, Refused, Scheduled, Slots, moved,
};
use queue::*;
pub use signals::{LogFile, Signal, signals};
use sources::*;
use torrent::*;
use watch::*;

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
    #[error("cannot start the state writer thread: {0}")]
    StateWriter(std::io::Error),
}

/// How often the main loop sweeps over every torrent when nothing happens.
const LOOP_WAKE: Duration = Duration::from_millis(1000);
/// How often it sweeps when the last sweep found every torrent settled (seeding with its run
/// parked, paused, finished, stopped: `Lifecycle::settled`) and nothing to do: what could
/// change then (a parked seed woken by a peer, a seeding limit reached) may wait this long.
/// At 10,000 parked seeds each sweep is milliseconds of cache misses.
const QUIET_LOOP_WAKE: Duration = Duration::from_secs(5);
/// How soon after an event (an RPC call, a check or move that ended, ...) the sweep runs: the
/// queue's reaction time.
const SWEEP_AFTER_EVENT: Duration = Duration::from_millis(50);
/// Longest the main loop takes waiting events in a row before it sweeps.
const DRAIN_BUDGET: Duration = Duration::from_millis(100);
/// How often the free space of downloading torrents' file systems is looked at
/// (`disk.min_free_mib`; `lifecycle::LOW_SPACE_HEADROOM_BYTES` covers what they write between).
const SPACE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The whole graceful stop must fit in 5 s; coordinators get this long to finish (the rest is
/// for records, the status file, the listener and the disk pool).
const STOP_BUDGET: Duration = Duration::from_millis(4000);
/// The whole graceful stop.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// Torrent records are saved about this often while their totals move (at most
/// `sources::SAVE_ROUND` a sweep; and at once when a torrent is added, completes or stops).
pub(super) const RECORD_SAVE_INTERVAL: Duration = Duration::from_secs(60);
/// Records whose clocks alone moved (seconds seeded, downloaded, idle: every running torrent's,
/// every second) are saved when their last save is this old (a few each sweep), and at stop
/// while the budget lasts: a crash loses at most this much of their clocks, and thousands of
/// seeding torrents do not rewrite thousands of files a minute.
pub(super) const RECORD_CLOCK_SAVE_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Of the stop budget, what is kept for the last status file, the listener and the disk
/// pool after the records.
const STOP_RESERVE: Duration = Duration::from_millis(1500);

/// See the module documentation.
pub struct Daemon {
    /// The config in force: the file's, with the RPC's session settings applied.
    config: Config,
    /// The config file as last read.
    file_config: Config,
    /// What `session-set` changed (kept in the state directory).
    session: SessionSettings,
    config_path: PathBuf,
    engine: Engine,
    torrents: Vec<Managed>,
    /// Writes and removes the torrents' records and kept `.torrent` files off this thread.
    writer: StateWriter,
    checked_tx: Sender<Checked>,
    checked_rx: Receiver<Checked>,
    fetched_tx: Sender<MetadataFetched>,
    fetched_rx: Receiver<MetadataFetched>,
    moved_tx: Sender<Moved>,
    moved_rx: Receiver<Moved>,
    pid_file: Option<PidFile>,
    log_file: Option<LogFile>,
    /// The embedded tracker, while `[tracker] enabled`.
    tracker: Option<TrackerServer>,
    /// The Transmission RPC, while `[rpc] enabled`; its calls arrive on `rpc_calls`.
    rpc: Option<RpcServer>,
    rpc_tx: Sender<RpcCall>,
    rpc_calls: Receiver<RpcCall>,
    /// An RPC `session-close` asked the daemon to stop.
    close_requested: bool,
    /// Set when RUST_LOG decides the log level, so a reload leaves it alone.
    level_from_env: bool,
    /// Torrents told to stop whose coordinators have not ended yet (by info hash). Nothing
    /// waits for them but the final shutdown; a torrent does not start again until its last
    /// run has ended.
    stopping: Vec<(InfoHash, Stopping)>,
    /// The id the next added torrent gets.
    next_id: u32,
    /// When this daemon started (the RPC's `secondsActive`).
    started: Instant,
    /// Ids of torrents removed while it runs (the RPC's `recently-active` lists them).
    removed_ids: Vec<u32>,
    /// Watch-dir files that did not parse yet (uploads in progress, or broken files settling).
    watch_pending: WatchPending,
    /// The queue order the records keep is restored (at the end of the start): torrents
    /// added from now on join at the end.
    queue_restored: bool,
    /// Checks of data before a start: at most `queue::MAX_CHECKS` threads at once.
    checks: Checks,
    /// Some torrent has renames waiting for its run to end (the sweep looks only then).
    renames_waiting: bool,
    /// The status file's snapshot, refreshed in place before each write (`refresh_status`).
    status: DaemonStatus,
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
        let writer = StateWriter::start().map_err(DaemonError::StateWriter)?;
        // What `session-set` changed, unless the file changed that setting since.
        let file_config = config;
        let mut session = SessionSettings::load(&SessionSettings::path_in(&file_config.state_dir))
            .unwrap_or_else(|e| {
                warn!("{e}; going on without the settings changed over the RPC");
                SessionSettings::default()
            });
        reload::drop_settings_changed_in(&mut session, &file_config, config_path);
        let config = session.apply_to(&file_config);
        let mut engine_config = config.engine(None, None);
        // The routing table outlives the run: saved at stop, pinged at the next start.
        if let Some(dht) = &mut engine_config.dht {
            dht.state_file = Some(config.state_dir.join(crate::dht::STATE_FILE));
        }
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
        let (rpc_tx, rpc_calls) = crate::rpc::channel();
        // As transmission-daemon does, the torrents run without the RPC when its address is
        // taken; SIGHUP tries again.
        let rpc = if config.rpc.enabled {
            match RpcServer::start(config.rpc.clone(), rpc_tx.clone()) {
                Ok(rpc) => Some(rpc),
                Err(e) => {
                    error!(
                        "rpc.listen {}: {e}; running without the RPC (SIGHUP tries again)",
                        config.rpc.listen
                    );
                    None
                }
            }
        } else {
            None
        };
        let (checked_tx, checked_rx) = crossbeam_channel::unbounded();
        let (fetched_tx, fetched_rx) = crossbeam_channel::unbounded();
        let (moved_tx, moved_rx) = crossbeam_channel::unbounded();
        let mut daemon = Self {
            config,
            file_config,
            session,
            config_path: config_path.to_owned(),
            engine,
            torrents: Vec::new(),
            writer,
            checked_tx,
            checked_rx,
            fetched_tx,
            fetched_rx,
            moved_tx,
            moved_rx,
            pid_file: Some(pid_file),
            log_file,
            tracker,
            rpc,
            rpc_tx,
            rpc_calls,
            close_requested: false,
            level_from_env: std::env::var_os("RUST_LOG").is_some(),
            stopping: Vec::new(),
            next_id: 1,
            started: Instant::now(),
            removed_ids: Vec::new(),
            watch_pending: WatchPending::default(),
            queue_restored: false,
            checks: Checks::default(),
            renames_waiting: false,
            status: DaemonStatus::empty(),
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
        daemon.add_rpc_torrents();
        daemon.restore_queue_order();
        daemon.engine.log_listening();
        Ok(daemon)
    }

    /// The main loop: until SIGINT/SIGTERM, then a graceful stop.
    ///
    /// Each turn takes every event waiting (signals, RPC calls first, then checks, fetches and
    /// moves that ended), then, when due, the sweep over every torrent (`Daemon::sweep`):
    /// `SWEEP_AFTER_EVENT` after an event, else every `LOOP_WAKE` (`QUIET_LOOP_WAKE` while
    /// everything is settled, but never past the status file's or the watch directory's
    /// time). With thousands of torrents a sweep is the one cost that grows with their number,
    /// so a burst of events (a first start's thousands of checks) pays for one sweep, not one
    /// each.
    pub fn run(mut self, signals: &Receiver<Signal>) {
        let mut timers = Timers::new(&self.config);
        let mut next_sweep = Instant::now();
        loop {
            if Instant::now() >= next_sweep {
                let quiet = self.sweep(&mut timers);
                next_sweep = if quiet {
                    (Instant::now() + QUIET_LOOP_WAKE)
                        .min(timers.status)
                        .min(timers.scan)
                } else {
                    Instant::now() + LOOP_WAKE
                };
            }
            let checked_rx = self.checked_rx.clone();
            let rpc_calls = self.rpc_calls.clone();
            let fetched_rx = self.fetched_rx.clone();
            let moved_rx = self.moved_rx.clone();
            let wait = next_sweep.saturating_duration_since(Instant::now());
            let mut stop = false;
            let woken = select! {
                recv(signals) -> signal => {
                    stop = self.on_signal(signal.ok(), &mut timers);
                    true
                },
                recv(checked_rx) -> checked => {
                    if let Ok(checked) = checked {
                        self.on_checked(checked);
                    }
                    true
                }
                recv(fetched_rx) -> fetched => {
                    if let Ok(fetched) = fetched {
                        self.on_metadata(fetched);
                    }
                    true
                }
                recv(moved_rx) -> moved => {
                    if let Ok(moved) = moved {
                        self.on_moved(moved);
                    }
                    true
                }
                recv(rpc_calls) -> call => {
                    if let Ok(call) = call {
                        self.on_rpc(call);
                    }
                    true
                }
                default(wait) => false,
            };
            if woken && !stop {
                stop = self.drain_events(signals, &mut timers);
                next_sweep = next_sweep.min(Instant::now() + SWEEP_AFTER_EVENT);
            }
            if stop || self.close_requested {
                if self.close_requested {
                    info!("daemon: stopping at the RPC's session-close");
                }
                break;
            }
        }
        self.shutdown();
    }

    /// Takes what else waits on the daemon's channels, RPC calls and signals before the rest,
    /// for at most [`DRAIN_BUDGET`] (then the sweep gets its turn). Whether to stop.
    fn drain_events(&mut self, signals: &Receiver<Signal>, timers: &mut Timers) -> bool {
        let until = Instant::now() + DRAIN_BUDGET;
        while Instant::now() < until && !self.close_requested {
            if let Ok(signal) = signals.try_recv()
                && self.on_signal(Some(signal), timers)
            {
                return true;
            }
            let mut took = false;
            if let Ok(call) = self.rpc_calls.try_recv() {
                self.on_rpc(call);
                took = true;
            }
            if let Ok(checked) = self.checked_rx.try_recv() {
                self.on_checked(checked);
                took = true;
            }
            if let Ok(fetched) = self.fetched_rx.try_recv() {
                self.on_metadata(fetched);
                took = true;
            }
            if let Ok(moved) = self.moved_rx.try_recv() {
                self.on_moved(moved);
                took = true;
            }
            if !took {
                break;
            }
        }
        false
    }

    /// Acts on a signal (`None`: the signal thread is gone); whether to stop.
    fn on_signal(&mut self, signal: Option<Signal>, timers: &mut Timers) -> bool {
        match signal {
            Some(Signal::Stop) | None => true,
            Some(Signal::Reload) => {
                self.reload();
                self.schedule();
                self.write_status();
                timers.reloaded(&self.config);
                false
            }
            Some(Signal::Status) => {
                self.refresh_status();
                info!("status:\n{}", self.status.table());
                false
            }
        }
    }

    /// One look at every torrent: runs that ended, renames waiting for them, free space (every
    /// [`SPACE_CHECK_INTERVAL`]), a turn of the queue, records (every
    /// [`RECORD_SAVE_INTERVAL`]), the status file (every `status.interval_secs`) and the watch
    /// directory (every `watch.scan_interval_secs`). Whether all was quiet: every torrent
    /// settled, no run polled, nothing done or saved, nothing waiting to be reaped or renamed.
    fn sweep(&mut self, timers: &mut Timers) -> bool {
        self.take_failed_saves();
        self.reap_stopped();
        self.apply_renames();
        let now = Instant::now();
        if now >= timers.space_check {
            self.check_free_space();
            timers.space_check = Instant::now() + SPACE_CHECK_INTERVAL;
        }
        let settled = self.schedule();
        // Records still to save (a first start's 10,000) keep the sweep at its pace.
        let saved = self.save_due_records();
        if Instant::now() >= timers.status {
            self.write_status();
            timers.status = Instant::now() + self.config.status_interval;
        }
        if Instant::now() >= timers.scan {
            self.scan_watch_dir();
            timers.scan = Instant::now() + self.config.watch_interval;
        }
        settled && !saved && self.stopping.is_empty() && !self.renames_waiting
    }
}

/// When the main loop's periodic jobs are next due.
struct Timers {
    scan: Instant,
    status: Instant,
    space_check: Instant,
}

impl Timers {
    fn new(config: &Config) -> Self {
        let now = Instant::now();
        Self {
            scan: now + config.watch_interval,
            status: now,
            space_check: now,
        }
    }

    /// After SIGHUP (which rescanned and wrote the status): the intervals start again.
    fn reloaded(&mut self, config: &Config) {
        self.scan = Instant::now() + config.watch_interval;
        self.status = Instant::now() + config.status_interval;
    }
}

impl Daemon {
    // ---- status --------------------------------------------------------------------------

    /// Brings the status snapshot up to date. Its rows are refreshed in place, their strings
    /// keeping their allocations: with 10,000 torrents, building and freeing them all every
    /// few seconds was most of an idle daemon's CPU.
    fn refresh_status(&mut self) {
        let status = &mut self.status;
        status.updated_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        status.listen = self.engine.listen_addr().to_string();
        status
            .torrents
            .resize_with(self.torrents.len(), TorrentStatus::default);
        for (t, row) in self.torrents.iter().zip(&mut status.torrents) {
            t.fill_status(row);
        }
        status.rpc = self.rpc.as_ref().map(|rpc| rpc.local_addr().to_string());
        status.peer_slots = self.engine.peer_slots();
        status.dht = self.engine.dht().map(|dht| crate::status::DhtStatus {
            port: dht.port(),
            nodes: dht.nodes(),
        });
        status.tracker = self.tracker.as_ref().map(|tracker| {
            let stats = tracker.stats();
            TrackerStatus {
                listen: tracker.local_addr().to_string(),
                torrents: stats.torrents,
                peers: stats.peers,
            }
        });
    }

    fn write_status(&mut self) {
        self.refresh_status();
        let path = DaemonStatus::path_in(&self.config.state_dir);
        if let Err(e) = self.status.save(&path) {
            warn!("status file: {e}");
        }
    }

    // ---- stop ----------------------------------------------------------------------------

    fn shutdown(mut self) {
        info!("daemon stopping");
        let started = Instant::now();
        let deadline = started + STOP_BUDGET;
        // No more calls: dropping the receiver frees every RPC worker waiting for an answer
        // (its call, and the reply sender in it, are dropped), so the server stops at once.
        self.rpc_calls = crossbeam_channel::never();
        if let Some(rpc) = self.rpc.take() {
            rpc.stop();
        }
        // Ask every coordinator at once, so their `stopped` announces overlap; end every
        // metadata fetch (dropping its `stop`) meanwhile.
        let mut fetches = Vec::new();
        for index in 0..self.torrents.len() {
            if let Some(fetching) = self.torrents[index].fetching.take() {
                fetches.push(fetching.thread);
            }
            let mut actions = self.torrents[index].life.on_shutdown();
            // Every record is saved below, all at once: one by one, each with its syncs, they
            // would not fit the stop budget with thousands of torrents.
            actions.retain(|a| *a != Action::SaveRecord);
            self.apply(index, actions);
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
        self.reap_stopped_unsaved();
        for mut thread in fetches {
            thread.wait_until(deadline);
        }
        self.save_records_at_stop(started + STOP_LIMIT - STOP_RESERVE);
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

/// The daemon's malloc settings, which glibc reads from the environment only as a process
/// starts: without them, `btd daemon` executes itself again, the same arguments and process id,
/// with them added to `GLIBC_TUNABLES` (a no-op elsewhere than glibc; when the exec fails the
/// daemon runs on as it is).
///
/// `glibc.malloc.mmap_threshold=1048576`: allocations of 1 MiB and more (`torrent-get`'s JSON
/// at 10,000 torrents, a few MiB, and the status snapshot's rows) get pages of their own, returned at
/// `free`. glibc's default threshold rises to the size of each such block freed (up to 32 MiB),
/// after which they come from the heaps and leave them fragmented for good: 10,000 parked seeds
/// held 196 MiB after a restart that way, 138 MiB with the setting.
pub fn with_malloc_tunables() {
    use std::os::unix::process::CommandExt;
    const TUNABLE: &str = "glibc.malloc.mmap_threshold=1048576";
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains("glibc.malloc.mmap_threshold") {
        return;
    }
    let tunables = if current.is_empty() {
        TUNABLE.to_owned()
    } else {
        format!("{current}:{TUNABLE}")
    };
    let mut args = std::env::args_os();
    let Some(arg0) = args.next() else { return };
    // The binary's own path, so the process keeps its name (`/proc/self/exe` would name it `exe`).
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let error = std::process::Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    eprintln!("btd: warning: cannot set the daemon's malloc settings ({error}); running without");
}
