//! One torrent as the daemon sees it (`Managed`): where it came from, its state, its record
//! and the counters of its current run; the seeding limits as pure functions; the storage
//! retry back-off.

use super::*;

/// A torrent stopped by a storage error (disk full, unwritable directory) is retried after this
/// wait, doubled per failure up to [`STORAGE_RETRY_MAX`]; SIGHUP retries it at once.
pub(super) const STORAGE_RETRY_BASE: Duration = Duration::from_secs(60);
pub(super) const STORAGE_RETRY_MAX: Duration = Duration::from_secs(30 * 60);

/// Where a torrent came from, which also decides how it is removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// A `[[torrent]]` entry.
    Config(EntryKey),
    /// A watch-directory file, already renamed `*.added`; deleting it removes the torrent.
    Watch(PathBuf),
    /// The RPC (`torrent-add`); its record says so, and an RPC `torrent-remove` removes it.
    Rpc,
}

impl Source {
    pub(super) fn describe(&self) -> String {
        match self {
            Source::Config(_) => "config".into(),
            Source::Watch(file) => file.display().to_string(),
            Source::Rpc => "rpc".into(),
        }
    }
}

/// What identifies a `[[torrent]]` entry across reloads: its `.torrent` path, or its magnet
/// link's info hash (so editing the link's trackers or peers does not restart the torrent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum EntryKey {
    Path(PathBuf),
    Magnet(InfoHash),
}

impl EntryKey {
    pub(super) fn of(entry: &TorrentEntry) -> Self {
        match &entry.torrent {
            TorrentRef::File(path) => EntryKey::Path(path.clone()),
            TorrentRef::Magnet(magnet) => EntryKey::Magnet(magnet.info_hash),
        }
    }
}

/// What a torrent is added from.
pub(super) enum Origin {
    Meta(Metainfo),
    /// A magnet link: its metadata comes from the state directory or from peers.
    Magnet(Magnet),
}

impl Origin {
    pub(super) fn info_hash(&self) -> InfoHash {
        match self {
            Origin::Meta(meta) => meta.info_hash,
            Origin::Magnet(magnet) => magnet.info_hash,
        }
    }
}

/// A running `metadata NAME` thread.
pub(super) struct Fetching {
    /// Never sent on: dropping it (with the state) ends the fetch.
    pub(super) _stop: Sender<()>,
    pub(super) thread: Watched<()>,
}

pub(super) enum State {
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
    /// Its files are moving to `to` (once its last run has ended, on a `move NAME` thread);
    /// then it goes back to the queue, or to paused.
    Moving {
        to: PathBuf,
        started: bool,
    },
    Error(String),
}

impl State {
    pub(super) fn name(&self, complete: bool) -> &'static str {
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
            State::Moving { .. } => "moving",
            State::Error(_) => "error",
        }
    }
}

/// The seeding limits of `[seeding]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct SeedLimits {
    /// Uploaded / size; 0: none.
    /// Uploaded / size at which seeding stops; `None`: no ratio limit (the config's 0).
    pub(super) ratio: Option<f64>,
    /// 0: none.
    pub(super) time: Duration,
    /// Seeding this long without uploading; 0: none.
    pub(super) idle: Duration,
}

/// Which seeding limit a complete torrent has reached, with its figures for the log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum LimitReached {
    Ratio { ratio: f64, limit: f64 },
    Time { seeded_secs: u64, limit_secs: u64 },
    Idle { idle_secs: u64, limit_secs: u64 },
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
            LimitReached::Idle {
                idle_secs,
                limit_secs,
            } => write!(
                f,
                "idle seeding limit reached (no upload for {idle_secs} s of seeding, limit \
                 {limit_secs} s)"
            ),
        }
    }
}

impl SeedLimits {
    /// These limits as one torrent follows them: its own ratio and idle limits, or none,
    /// instead of the global ones when its record says so.
    pub(super) fn for_torrent(self, record: &TorrentRecord) -> SeedLimits {
        let ratio = match record.ratio_limit {
            RatioLimit::Global => self.ratio,
            RatioLimit::Own(ratio) => Some(ratio),
            RatioLimit::Unlimited => None,
        };
        let idle = match record.idle_limit {
            IdleLimit::Global => self.idle,
            IdleLimit::OwnMins(mins) => Duration::from_secs(mins.saturating_mul(60)),
            IdleLimit::Unlimited => Duration::ZERO,
        };
        SeedLimits {
            ratio,
            idle,
            ..self
        }
    }

    /// The upload total at which the ratio limit is reached: `ratio * size`, rounded up.
    pub(super) fn upload_target(&self, size: u64) -> Option<u64> {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.ratio.map(|ratio| (ratio * size as f64).ceil() as u64)
    }

    /// The limit a complete torrent of `size` bytes that uploaded `uploaded` bytes, seeded
    /// `seeded_secs` and seeded `idle_secs` of those since its last upload has reached, if any
    /// (the ratio first, then the time, then the idle limit).
    pub(super) fn reached(
        &self,
        size: u64,
        uploaded: u64,
        seeded_secs: u64,
        idle_secs: u64,
    ) -> Option<LimitReached> {
        if let Some(target) = self.upload_target(size)
            && uploaded >= target
        {
            return Some(LimitReached::Ratio {
                ratio: uploaded as f64 / size.max(1) as f64,
                limit: self.ratio.unwrap_or_default(),
            });
        }
        let limit_secs = self.time.as_secs();
        if limit_secs > 0 && seeded_secs >= limit_secs {
            return Some(LimitReached::Time {
                seeded_secs,
                limit_secs,
            });
        }
        let limit_secs = self.idle.as_secs();
        (limit_secs > 0 && idle_secs >= limit_secs).then_some(LimitReached::Idle {
            idle_secs,
            limit_secs,
        })
    }

    /// How many more payload bytes a run may upload: up to the ratio target plus one block, so
    /// a block that starts below the target is still served whole (the total stops within a
    /// block of it). `None` without a ratio limit.
    pub(super) fn upload_allowance(&self, size: u64, uploaded: u64) -> Option<u64> {
        self.upload_target(size)
            .map(|target| (target + u64::from(crate::wire::BLOCK_LEN)).saturating_sub(uploaded))
    }
}

pub(super) struct Managed {
    /// A small number naming it during this daemon run (status file, table).
    pub(super) id: u32,
    pub(super) info_hash: InfoHash,
    /// The torrent's name; until a magnet link's metadata arrives, its `dn` or the info hash.
    pub(super) name: String,
    /// `None` while a magnet link's metadata is unknown (state metadata, paused or error).
    /// Queued, checking, running and finished torrents always have it.
    pub(super) meta: Option<Arc<Metainfo>>,
    /// The magnet link it was added from (its trackers and peers serve the metadata fetch).
    pub(super) magnet: Option<Magnet>,
    pub(super) source: Source,
    /// Its lifetime facts (data location, totals, seeding time) up to the end of its last run;
    /// see [`Managed::record_now`] for them including the current run.
    pub(super) record: TorrentRecord,
    /// What was last saved of the record (nothing is written while it is unchanged).
    pub(super) saved: Option<TorrentRecord>,
    pub(super) peers: Vec<SocketAddr>,
    pub(super) paused: bool,
    pub(super) state: State,
    /// Every piece verified, as last known.
    pub(super) complete: bool,
    pub(super) verified_bytes: u64,
    /// The counters of its current run: while its coordinator runs, and while it stops (see
    /// `Daemon::stopping`). Folded into `record` once that run has ended.
    pub(super) run: Option<Arc<TorrentStats>>,
    /// Since when it seeds in this run (folded into `record.seeding_secs` when it stops).
    pub(super) seeding_since: Option<Instant>,
    /// Since when it downloads in this run (folded into `record.downloading_secs`).
    pub(super) downloading_since: Option<Instant>,
    /// Since when it seeds in this run without uploading (folded into `record.idle_secs`;
    /// an upload starts it again, from 0).
    pub(super) idle_since: Option<Instant>,
    /// The run's byte totals when the main loop last looked (to see activity).
    pub(super) last_seen_totals: (u64, u64),
    /// When the current run started (seconds since the Unix epoch).
    pub(super) run_started_unix: u64,
    /// In state error from a storage error: when it is retried by itself (SIGHUP retries now).
    pub(super) retry_at: Option<Instant>,
    /// Storage errors in a row (the retry back-off doubles with each); reset on completion.
    pub(super) storage_failures: u32,
    /// The next check ignores resume data and hashes everything (data changed under us).
    pub(super) force_check: bool,
    /// Renames already in `meta` but not yet done on disk nor in the record: they wait for
    /// its run to end (`Daemon::apply_renames`).
    pub(super) pending_renames: Vec<PendingRename>,
}

/// A `torrent-rename-path` waiting for the torrent's run to end.
#[derive(Clone, Debug)]
pub(super) struct PendingRename {
    /// What the record keeps once it is done on disk.
    pub(super) asked: PathRename,
    /// The old and new path, relative to its download directory.
    pub(super) old: PathBuf,
    pub(super) new: PathBuf,
}

impl Managed {
    /// A torrent just added: paused, metadata and run unknown; the caller fills in the rest.
    pub(super) fn new(
        id: u32,
        info_hash: InfoHash,
        name: String,
        source: Source,
        record: TorrentRecord,
    ) -> Self {
        Self {
            id,
            info_hash,
            name,
            meta: None,
            magnet: None,
            source,
            record,
            saved: None,
            peers: Vec::new(),
            paused: false,
            state: State::Paused,
            complete: false,
            verified_bytes: 0,
            run: None,
            seeding_since: None,
            downloading_since: None,
            idle_since: None,
            last_seen_totals: (0, 0),
            run_started_unix: 0,
            retry_at: None,
            storage_failures: 0,
            force_check: false,
            pending_renames: Vec::new(),
        }
    }

    /// Its metadata, with the renames its record holds applied (a rename that no longer
    /// applies is logged and skipped); its name follows a renamed top.
    pub(super) fn set_meta(&mut self, mut meta: Metainfo) {
        for rename in &self.record.renames {
            if let Err(e) = meta.rename_path(&rename.path, &rename.name) {
                warn!(
                    "torrent {}: recorded rename of {} to {}: {e}; skipped",
                    self.name, rename.path, rename.name
                );
            }
        }
        self.name.clone_from(&meta.name);
        self.meta = Some(Arc::new(meta));
    }

    /// Where a path of its file list is on disk now, relative to its directory: the same,
    /// unless a rename of it waits for its run to end.
    pub(super) fn path_on_disk(&self, path: &Path) -> PathBuf {
        let mut path = path.to_owned();
        for pending in self.pending_renames.iter().rev() {
            if let Ok(rest) = path.strip_prefix(&pending.new) {
                path = if rest.as_os_str().is_empty() {
                    pending.old.clone()
                } else {
                    pending.old.join(rest)
                };
            }
        }
        path
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn resume_path(&self, state_dir: &Path) -> PathBuf {
        ResumeData::path_in(state_dir, &self.info_hash)
    }

    /// The torrent's size, 0 while its metadata is unknown.
    pub(super) fn size(&self) -> u64 {
        self.meta.as_ref().map_or(0, |m| m.geometry.total_len)
    }

    /// The counters of the run in progress, while its coordinator runs.
    pub(super) fn running(&self) -> Option<&Arc<TorrentStats>> {
        match &self.state {
            State::Running(handle) => Some(&handle.stats),
            _ => None,
        }
    }

    /// Verified bytes (all of them when complete).
    pub(super) fn have_bytes(&self) -> u64 {
        if self.complete {
            self.size()
        } else {
            self.verified_bytes
        }
    }

    /// While checking: the fraction of pieces checked so far.
    pub(super) fn check_fraction(&self) -> Option<f64> {
        match (&self.state, &self.meta) {
            (State::Checking(done), Some(meta)) => Some(
                f64::from(done.load(Ordering::Relaxed))
                    / f64::from(meta.geometry.num_pieces.max(1)),
            ),
            _ => None,
        }
    }

    /// Seconds left at the current download rate, while downloading with one.
    pub(super) fn eta_secs(&self) -> Option<u64> {
        let rate = self
            .running()
            .filter(|_| !self.complete)
            .map_or(0, |s| s.download_rate.load(Ordering::Relaxed));
        (rate > 0).then(|| self.size().saturating_sub(self.have_bytes()) / rate)
    }

    pub(super) fn download_dir(&self) -> &Path {
        &self.record.download_dir
    }

    /// Lifetime payload totals, (uploaded, downloaded), the current run included.
    pub(super) fn totals(&self) -> (u64, u64) {
        let (up, down) = self.run.as_ref().map_or((0, 0), |run| {
            (
                run.uploaded.load(Ordering::Relaxed),
                run.downloaded.load(Ordering::Relaxed),
            )
        });
        (self.record.uploaded + up, self.record.downloaded + down)
    }

    /// Lifetime seconds of seeding, the current run included.
    pub(super) fn seeding_secs(&self) -> u64 {
        self.record.seeding_secs + secs_since(self.seeding_since)
    }

    /// Lifetime seconds of downloading, the current run included.
    pub(super) fn downloading_secs(&self) -> u64 {
        self.record.downloading_secs + secs_since(self.downloading_since)
    }

    /// Lifetime seconds of seeding since its last upload, the current run included.
    pub(super) fn idle_secs(&self) -> u64 {
        self.record.idle_secs + secs_since(self.idle_since)
    }

    /// The seeding limit it has reached under `global` (as its record adapts them), if any.
    pub(super) fn seed_limit_reached(&self, global: SeedLimits) -> Option<LimitReached> {
        global.for_torrent(&self.record).reached(
            self.size(),
            self.totals().0,
            self.seeding_secs(),
            self.idle_secs(),
        )
    }

    /// Notes payload moving since the last look (the RPC's `activityDate`); an upload ends
    /// an idle stretch of seeding.
    pub(super) fn note_activity(&mut self) {
        let totals = self.totals();
        if totals.0 != self.last_seen_totals.0 {
            self.record.idle_secs = 0;
            if self.idle_since.is_some() {
                self.idle_since = Some(Instant::now());
            }
        }
        if totals != self.last_seen_totals {
            self.last_seen_totals = totals;
            self.record.activity_unix = unix_now();
        }
    }

    pub(super) fn ratio(&self) -> f64 {
        self.totals().0 as f64 / self.size().max(1) as f64
    }

    /// The record with the current run's totals and seeding time in it: what is saved.
    pub(super) fn record_now(&self) -> TorrentRecord {
        let (uploaded, downloaded) = self.totals();
        TorrentRecord {
            uploaded,
            downloaded,
            seeding_secs: self.seeding_secs(),
            downloading_secs: self.downloading_secs(),
            idle_secs: self.idle_secs(),
            ..self.record.clone()
        }
    }

    /// It runs now: seeding when complete, else downloading (its clock for the other stops).
    pub(super) fn start_run_clock(&mut self) {
        self.stop_run_clock();
        if self.complete {
            self.seeding_since = Some(Instant::now());
            self.idle_since = Some(Instant::now());
        } else {
            self.downloading_since = Some(Instant::now());
        }
    }

    /// It stops running: the time so far goes into the record.
    pub(super) fn stop_run_clock(&mut self) {
        self.record.seeding_secs += secs_since(self.seeding_since.take());
        self.record.downloading_secs += secs_since(self.downloading_since.take());
        self.record.idle_secs += secs_since(self.idle_since.take());
    }

    /// Its run with counters `run` has ended: they go into the record.
    pub(super) fn end_run(&mut self, run: &Arc<TorrentStats>) {
        if self.run.as_ref().is_some_and(|r| Arc::ptr_eq(r, run)) {
            self.record.uploaded += run.uploaded.load(Ordering::Relaxed);
            self.record.downloaded += run.downloaded.load(Ordering::Relaxed);
            self.run = None;
        }
    }

    /// A torrent known by its info hash (not a `[[torrent]]` whose file could not be read):
    /// the only kind with a record on disk.
    pub(super) fn has_record(&self) -> bool {
        self.meta.is_some() || self.magnet.is_some()
    }

    /// Saves the record if it changed since the last save; a failure is logged (the next
    /// save tries again).
    pub(super) fn save_record(&mut self, state_dir: &Path) {
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
    pub(super) fn retry_after(&self) -> Duration {
        storage_retry_after(self.storage_failures)
    }

    /// Counts a storage error and schedules the retry.
    pub(super) fn set_retry(&mut self) {
        self.storage_failures = self.storage_failures.saturating_add(1);
        self.retry_at = Some(Instant::now() + self.retry_after());
    }
}

/// Whole seconds since `since`, 0 without one.
fn secs_since(since: Option<Instant>) -> u64 {
    since.map_or(0, |since| since.elapsed().as_secs())
}

/// The wait before retrying a torrent after `failures` storage errors in a row: 60 s, doubling,
/// at most 30 min.
pub(super) fn storage_retry_after(failures: u32) -> Duration {
    STORAGE_RETRY_BASE
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(STORAGE_RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const BLOCK: u64 = crate::wire::BLOCK_LEN as u64;

    fn limits(ratio: f64, time_secs: u64) -> SeedLimits {
        SeedLimits {
            ratio: Some(ratio).filter(|r| *r > 0.0),
            time: Duration::from_secs(time_secs),
            idle: Duration::ZERO,
        }
    }

    #[test]
    fn no_seeding_limit_is_ever_reached_and_allows_any_upload() {
        let none = limits(0.0, 0);
        assert_eq!(none.reached(8 * MIB, u64::MAX, u64::MAX, 0), None);
        assert_eq!(none.upload_allowance(8 * MIB, 100 * MIB), None);
    }

    #[test]
    fn the_ratio_limit_is_reached_at_ratio_times_size_rounded_up() {
        let l = limits(1.5, 0);
        assert_eq!(l.reached(8 * MIB, 12 * MIB - 1, 0, 0), None);
        assert_eq!(
            l.reached(8 * MIB, 12 * MIB, 0, 0),
            Some(LimitReached::Ratio {
                ratio: 1.5,
                limit: 1.5
            })
        );
        // 1/3 of 10 bytes is 3.33: 4 bytes reach it, 3 do not.
        let third = limits(1.0 / 3.0, 0);
        assert_eq!(third.reached(10, 3, 0, 0), None);
        assert!(third.reached(10, 4, 0, 0).is_some());
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
    fn a_torrents_own_ratio_limit_or_none_replaces_the_global_one() {
        let global = limits(2.0, 3600);
        let mut record = TorrentRecord::new(&InfoHash([1; 20]), Path::new("d"));
        assert_eq!(global.for_torrent(&record), global);
        record.ratio_limit = RatioLimit::Unlimited;
        assert_eq!(
            global.for_torrent(&record).reached(MIB, 100 * MIB, 0, 0),
            None
        );
        assert_eq!(global.for_torrent(&record).upload_allowance(MIB, 0), None);
        // Its own limit of 0 (as Transmission means it): done seeding at once.
        record.ratio_limit = RatioLimit::Own(0.0);
        assert!(matches!(
            global.for_torrent(&record).reached(MIB, 0, 0, 0),
            Some(LimitReached::Ratio { .. })
        ));
        record.ratio_limit = RatioLimit::Own(0.5);
        assert_eq!(
            global.for_torrent(&record).reached(MIB, MIB / 2 - 1, 0, 0),
            None
        );
        assert!(
            global
                .for_torrent(&record)
                .reached(MIB, MIB / 2, 0, 0)
                .is_some()
        );
        assert_eq!(global.for_torrent(&record).time, global.time);
    }

    #[test]
    fn the_time_limit_counts_lifetime_seconds_and_the_ratio_is_named_first() {
        let l = limits(2.0, 3600);
        assert_eq!(l.reached(MIB, 0, 3599, 0), None);
        assert_eq!(
            l.reached(MIB, 0, 3600, 0),
            Some(LimitReached::Time {
                seeded_secs: 3600,
                limit_secs: 3600
            })
        );
        assert!(matches!(
            l.reached(MIB, 2 * MIB, 7200, 0),
            Some(LimitReached::Ratio { .. })
        ));
        assert_eq!(
            l.reached(MIB, 0, 4000, 0).unwrap().to_string(),
            "seeding time limit reached (seeded 4000 s, limit 3600 s)"
        );
        assert_eq!(
            l.reached(MIB, 2 * MIB, 0, 0).unwrap().to_string(),
            "ratio limit reached (ratio 2.000, limit 2)"
        );
    }

    #[test]
    fn the_idle_limit_counts_seeding_without_upload_and_comes_after_ratio_and_time() {
        let l = SeedLimits {
            idle: Duration::from_secs(600),
            ..limits(2.0, 3600)
        };
        assert_eq!(l.reached(MIB, 0, 599, 599,), None);
        assert_eq!(
            l.reached(MIB, 0, 1000, 600),
            Some(LimitReached::Idle {
                idle_secs: 600,
                limit_secs: 600
            })
        );
        assert!(matches!(
            l.reached(MIB, 0, 3600, 3600),
            Some(LimitReached::Time { .. })
        ));
        assert_eq!(
            l.reached(MIB, 0, 700, 700).unwrap().to_string(),
            "idle seeding limit reached (no upload for 700 s of seeding, limit 600 s)"
        );
        // Its own limit, or none, instead of the global one.
        let mut record = TorrentRecord::new(&InfoHash([1; 20]), Path::new("d"));
        record.idle_limit = IdleLimit::OwnMins(1);
        assert!(l.for_torrent(&record).reached(MIB, 0, 60, 60).is_some());
        assert_eq!(l.for_torrent(&record).reached(MIB, 0, 59, 59), None);
        record.idle_limit = IdleLimit::Unlimited;
        assert_eq!(l.for_torrent(&record).reached(MIB, 0, 3000, 3000), None);
        assert_eq!(limits(0.0, 0).reached(MIB, 0, u64::MAX, u64::MAX), None);
    }

    #[test]
    fn an_upload_ends_the_idle_count_and_stopping_keeps_it_in_the_record() {
        let record = TorrentRecord::new(&InfoHash([1; 20]), Path::new("d"));
        let mut t = Managed::new(1, InfoHash([1; 20]), "t".into(), Source::Rpc, record);
        t.complete = true;
        t.record.idle_secs = 500;
        let run = Arc::new(TorrentStats::default());
        t.run = Some(Arc::clone(&run));
        t.start_run_clock();
        t.last_seen_totals = t.totals();
        // Idle seconds from earlier runs count on.
        t.idle_since = Some(Instant::now() - Duration::from_secs(100));
        assert_eq!(t.idle_secs(), 600);
        t.note_activity();
        assert_eq!(t.idle_secs(), 600, "no upload, no reset");
        run.uploaded.fetch_add(16_384, Ordering::Relaxed);
        t.note_activity();
        assert_eq!(t.idle_secs(), 0);
        assert!(t.idle_since.is_some(), "still seeding: a new count runs");
        t.idle_since = Some(Instant::now() - Duration::from_secs(42));
        t.stop_run_clock();
        assert_eq!((t.record.idle_secs, t.idle_secs()), (42, 42));
        assert_eq!(t.record_now().idle_secs, 42);
    }

    #[test]
    fn storage_retries_wait_a_minute_then_double_up_to_half_an_hour() {
        let minutes: Vec<u64> = (1..=8)
            .map(|n| storage_retry_after(n).as_secs() / 60)
            .collect();
        assert_eq!(minutes, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(storage_retry_after(u32::MAX), STORAGE_RETRY_MAX);
    }
}
