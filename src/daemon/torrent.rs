//! One torrent as the daemon sees it (`Managed`): where it came from, its lifecycle (written
//! only by `lifecycle.rs`), what goes with its phase (fetch thread, check progress, the running
//! coordinator's handle), its record and the counters of its current run; the seeding limits as
//! pure functions.

use std::borrow::Cow;

use super::*;

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
    pub(super) fn describe(&self) -> Cow<'_, str> {
        match self {
            Source::Config(_) => "config".into(),
            Source::Watch(file) => file.to_string_lossy(),
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
    /// Never sent on: dropping it (`Managed::fetching`) ends the fetch.
    pub(super) _stop: Sender<()>,
    pub(super) thread: Watched<()>,
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
    /// When this daemon last saved the record, or loaded it (`None`: neither yet).
    pub(super) saved_at: Option<Instant>,
    /// When the sweeps last looked whether the record is due for a save (`None`: not yet).
    pub(super) looked_at: Option<Instant>,
    pub(super) peers: Vec<SocketAddr>,
    /// Its phase and what drives it: read here, written only by `lifecycle.rs`.
    pub(super) life: Lifecycle,
    /// Its metadata fetch, while in phase metadata (dropping it ends the fetch).
    pub(super) fetching: Option<Fetching>,
    /// While checking: the pieces checked so far.
    pub(super) check_progress: Arc<AtomicU32>,
    /// Its coordinator, while in phase running.
    pub(super) handle: Option<TorrentHandle>,
    pub(super) verified_bytes: u64,
    /// The verified pieces as last known: from its check, then from the end of each run
    /// (while it runs, its run's own are current).
    pub(super) have: Option<Bitfield>,
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
    /// The run's parked mark when the main loop last looked (`TorrentHandle::parked_mark`).
    pub(super) parked_seen: Option<(u64, u64)>,
    /// When the current run started (seconds since the Unix epoch).
    pub(super) run_started_unix: u64,
    /// The state's name when the main loop last looked, and since when (seconds since the
    /// Unix epoch): the RPC's `recently-active` lists torrents whose state changed lately.
    pub(super) state_seen: (&'static str, u64),
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
    /// A torrent just added with its lifecycle; metadata and run unknown, the caller fills in
    /// the rest.
    pub(super) fn new(
        id: u32,
        info_hash: InfoHash,
        name: String,
        source: Source,
        record: TorrentRecord,
        life: Lifecycle,
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
            saved_at: None,
            looked_at: None,
            peers: Vec::new(),
            life,
            fetching: None,
            check_progress: Arc::new(AtomicU32::new(0)),
            handle: None,
            verified_bytes: 0,
            have: None,
            run: None,
            seeding_since: None,
            downloading_since: None,
            idle_since: None,
            last_seen_totals: (0, 0),
            parked_seen: None,
            run_started_unix: 0,
            // Not yet looked at: added just now counts as a change.
            state_seen: ("", unix_now()),
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
        self.handle.as_ref().map(|handle| &handle.stats)
    }

    /// Verified bytes (when complete and not checked since the daemon started: what its
    /// wanted files hold).
    pub(super) fn have_bytes(&self) -> u64 {
        if self.life.complete() && self.have.is_none() && self.running().is_none() {
            self.wanted_size()
        } else {
            self.verified_bytes
        }
    }

    /// The verified pieces: its run's while it runs, else as last known; `None` when not
    /// known (not checked since the daemon started) and not complete.
    pub(super) fn have_pieces(&self) -> Option<Bitfield> {
        let meta = self.meta.as_ref()?;
        if let Some(run) = self.running() {
            return Some(run.have.lock().clone());
        }
        match &self.have {
            Some(have) => Some(have.clone()),
            None if self.life.complete() && self.record.files.is_all() => {
                Some(Bitfield::full(meta.geometry.num_pieces))
            }
            None => None,
        }
    }

    /// Each piece's priority level by its file selection (0: not wanted).
    pub(super) fn piece_levels(&self) -> Vec<u8> {
        self.meta.as_ref().map_or_else(Vec::new, |m| {
            self.record.files.piece_levels(&m.geometry, &m.files)
        })
    }

    /// Bytes of the pieces its file selection wants (Transmission's `sizeWhenDone`).
    pub(super) fn wanted_size(&self) -> u64 {
        match &self.meta {
            Some(m) if !self.record.files.is_all() => {
                crate::selection::wanted_bytes(&m.geometry, &self.piece_levels())
            }
            _ => self.size(),
        }
    }

    /// Bytes of wanted pieces not verified (Transmission's `leftUntilDone`).
    pub(super) fn left_until_done(&self) -> u64 {
        if let Some(run) = self.running() {
            return run.left();
        }
        if self.life.complete() {
            return 0;
        }
        let Some(meta) = &self.meta else {
            return 0;
        };
        match &self.have {
            Some(have) => self
                .piece_levels()
                .iter()
                .zip(0u32..)
                .filter(|(level, piece)| **level > 0 && !have.get(*piece))
                .map(|(_, piece)| u64::from(meta.geometry.piece_len(piece)))
                .sum(),
            None => self.wanted_size().saturating_sub(self.verified_bytes),
        }
    }

    /// While checking: the fraction of pieces checked so far.
    pub(super) fn check_fraction(&self) -> Option<f64> {
        match (self.life.phase(), &self.meta) {
            (Phase::Checking, Some(meta)) => Some(
                f64::from(self.check_progress.load(Ordering::Relaxed))
                    / f64::from(meta.geometry.num_pieces.max(1)),
            ),
            _ => None,
        }
    }

    /// Seconds left at the current download rate, while downloading with one.
    pub(super) fn eta_secs(&self) -> Option<u64> {
        let rate = self
            .running()
            .filter(|_| !self.life.complete())
            .map_or(0, |s| s.download_rate.load(Ordering::Relaxed));
        (rate > 0).then(|| self.left_until_done() / rate)
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
        let limits = global.for_torrent(&self.record);
        if limits.ratio.is_none() && limits.time.is_zero() && limits.idle.is_zero() {
            // No limit (the usual case): nothing to read, no clock to look at.
            return None;
        }
        limits.reached(
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

    /// Notes a change of state since the last look (once per main-loop turn).
    pub(super) fn note_state(&mut self) {
        let name = self.life.name();
        if name != self.state_seen.0 {
            self.state_seen = (name, unix_now());
        }
    }

    /// Whether it runs, or moved payload or changed state (added, paused, resumed, finished,
    /// ...) within the last `secs` seconds: Transmission's `recently-active`, which its web
    /// client polls, so that it sees a torrent it has just paused stop.
    pub(super) fn recently_active(&self, secs: u64) -> bool {
        let since = unix_now().saturating_sub(secs);
        self.handle.is_some()
            || self.life.name() != self.state_seen.0
            || self.state_seen.1 >= since
            || self.record.activity_unix >= since
    }

    /// Its row of the status file, refreshed in place: strings are rewritten into the
    /// row's own, so a refresh allocates nothing for a torrent whose row already held them.
    pub(super) fn fill_status(&self, row: &mut TorrentStatus) {
        let (uploaded, downloaded) = self.totals();
        let run = self.running();
        row.id = self.id;
        set_str(&mut row.name, &self.name);
        row.info_hash.clear();
        if self.has_record() {
            crate::hex::encode_into(&mut row.info_hash, &self.info_hash.0);
        }
        set_str(&mut row.state, self.life.name());
        row.progress = if self.meta.is_none() {
            0.0
        } else {
            let wanted = self.wanted_size();
            wanted.saturating_sub(self.left_until_done()) as f64 / wanted.max(1) as f64
        };
        row.check_progress = self.check_fraction();
        row.size_bytes = self.size();
        row.have_bytes = self.have_bytes();
        row.eta_secs = self.eta_secs();
        set_str(
            &mut row.download_dir,
            &self.download_dir().to_string_lossy(),
        );
        row.added_unix = self.record.added_unix;
        row.seeding_secs = self.seeding_secs();
        row.downloaded_bytes = downloaded;
        row.uploaded_bytes = uploaded;
        row.download_rate = run.map_or(0, |s| s.download_rate.load(Ordering::Relaxed));
        row.upload_rate = run.map_or(0, |s| s.upload_rate.load(Ordering::Relaxed));
        row.peers = run.map_or(0, |s| s.peers.load(Ordering::Relaxed));
        row.web_seeds = run.map_or(0, |s| s.web_seeds.load(Ordering::Relaxed));
        row.peers_by_source = run
            .map(|s| (*s.peers_by_source.lock()).into())
            .unwrap_or_default();
        row.ratio = self.ratio();
        let (error, free_bytes, needed_bytes) = match self.life.phase() {
            Phase::Error(e) => (Some(e.as_str()), None, None),
            Phase::LowSpace {
                free_bytes,
                needed_bytes,
                ..
            } => (None, Some(*free_bytes), Some(*needed_bytes)),
            _ => (None, None, None),
        };
        set_opt_str(&mut row.error, error);
        row.free_bytes = free_bytes;
        row.needed_bytes = needed_bytes;
        row.tracker_error = run
            .and_then(|run| run.swarm.refusal())
            .map(|(url, reason)| format!("{url}: {reason}"));
        set_str(&mut row.source, &self.source.describe());
        row.swarm = match &self.handle {
            Some(h) if h.stats.swarm.known.load(Ordering::Acquire) => Some(SwarmCounts {
                seeders: h.stats.swarm.seeders.load(Ordering::Relaxed),
                leechers: h.stats.swarm.leechers.load(Ordering::Relaxed),
                completed: h.stats.swarm.completed.load(Ordering::Relaxed),
            }),
            _ => None,
        };
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
        if self.life.complete() {
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
            self.verified_bytes = run.verified_bytes.load(Ordering::Relaxed);
            self.have = Some(run.have.lock().clone());
            self.run = None;
        }
    }

    /// A torrent known by its info hash (not a `[[torrent]]` whose file could not be read):
    /// the only kind with a record on disk.
    pub(super) fn has_record(&self) -> bool {
        self.meta.is_some() || self.magnet.is_some()
    }

    /// Whether the record changed since its last save in more than its clocks (see
    /// `TorrentRecord::differs_beyond_clocks`); a record never saved has changed.
    pub(super) fn record_changed_beyond_clocks(&self) -> bool {
        self.has_record()
            && self
                .saved
                .as_ref()
                .is_none_or(|saved| self.record_now().differs_beyond_clocks(saved))
    }

    /// Hands the record to the state writer if it changed since the last save. A write that
    /// fails comes back through `StateWriter::failed` (`Daemon::take_failed_saves`), which
    /// marks it unsaved, so a later sweep tries again.
    pub(super) fn save_record(&mut self, state_dir: &Path, writer: &StateWriter) {
        if !self.has_record() {
            return;
        }
        let now = self.record_now();
        if self.saved.as_ref() == Some(&now) {
            return;
        }
        writer.write(
            TorrentRecord::path_in(state_dir, &self.info_hash),
            now.to_file_bytes(),
        );
        self.saved = Some(now);
        self.saved_at = Some(Instant::now());
    }

    /// Saves the record (when it has one) and waits for it, saying whether that worked: for
    /// what must be on disk before going on (a move's target).
    pub(super) fn save_record_now(
        &mut self,
        state_dir: &Path,
        writer: &StateWriter,
    ) -> Result<(), AtomicFileError> {
        if !self.has_record() {
            return Ok(());
        }
        let now = self.record_now();
        writer.write_now(
            &TorrentRecord::path_in(state_dir, &self.info_hash),
            now.to_file_bytes(),
        )?;
        self.saved = Some(now);
        self.saved_at = Some(Instant::now());
        Ok(())
    }
}

/// Whole seconds since `since`, 0 without one.
fn secs_since(since: Option<Instant>) -> u64 {
    since.map_or(0, |since| since.elapsed().as_secs())
}

/// `text`, written into `s`'s own allocation.
fn set_str(s: &mut String, text: &str) {
    s.clear();
    s.push_str(text);
}

/// `text`, written into `s`'s own allocation when it has one.
fn set_opt_str(s: &mut Option<String>, text: Option<&str>) {
    match (s.as_mut(), text) {
        (Some(s), Some(text)) => set_str(s, text),
        (_, text) => *s = text.map(str::to_owned),
    }
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
    fn a_torrent_is_recently_active_for_a_minute_after_it_was_added_or_paused() {
        let hash = InfoHash([2; 20]);
        let record = TorrentRecord::new(&hash, Path::new("d"));
        let mut t = Managed::new(
            1,
            hash,
            "t".into(),
            Source::Rpc,
            record,
            Lifecycle::new(true, false),
        );
        // Added, not yet looked at by the main loop, then looked at: a change either way.
        assert!(t.recently_active(60));
        t.note_state();
        assert!(t.recently_active(60));
        // A minute later, paused and idle: not active.
        t.state_seen.1 -= 61;
        assert!(!t.recently_active(60));
        // Resumed (queued) and not yet looked at by the main loop: a change.
        t.life.on_pause_requested();
        t.life.on_resume_requested();
        assert_eq!(t.life.name(), "queued");
        assert!(t.recently_active(60));
        t.note_state();
        t.state_seen.1 -= 61;
        assert!(!t.recently_active(60));
        // Payload moved lately.
        t.record.activity_unix = unix_now();
        assert!(t.recently_active(60));
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
        let mut t = Managed::new(
            1,
            InfoHash([1; 20]),
            "t".into(),
            Source::Rpc,
            record,
            Lifecycle::new(true, true),
        );
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
        // What the lifecycle core is told as "reached": the idle rule is part of it.
        let ten_minutes = SeedLimits {
            idle: Duration::from_secs(600),
            ..limits(0.0, 0)
        };
        assert!(matches!(
            t.seed_limit_reached(ten_minutes),
            Some(LimitReached::Idle { idle_secs: 600, .. })
        ));
        run.uploaded.fetch_add(16_384, Ordering::Relaxed);
        t.note_activity();
        assert_eq!(t.idle_secs(), 0);
        assert_eq!(t.seed_limit_reached(ten_minutes), None);
        assert!(t.idle_since.is_some(), "still seeding: a new count runs");
        t.idle_since = Some(Instant::now() - Duration::from_secs(42));
        t.stop_run_clock();
        assert_eq!((t.record.idle_secs, t.idle_secs()), (42, 42));
        assert_eq!(t.record_now().idle_secs, 42);
    }
}
