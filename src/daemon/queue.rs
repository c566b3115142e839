//! The shell around the lifecycle core (`lifecycle.rs`): carrying out its actions (the
//! `check NAME` threads that check data before a start, runs started on the engine and told to
//! stop, `move NAME` threads), feeding it what running torrents report and what the threads
//! end with, and each turn of the queue (slots, seeding limits, storage-error retries). It
//! never decides a torrent's phase: it asks the core and does what the core answers.

use super::*;

/// What a `move NAME` thread ends with.
pub(super) struct Moved {
    pub(super) info_hash: InfoHash,
    pub(super) from: PathBuf,
    pub(super) to: PathBuf,
    pub(super) result: Result<(), crate::relocate::MoveFailed>,
}

/// Most `check NAME` threads at once; further checks wait their turn, first asked first.
const MAX_CHECKS: usize = 4;

/// A check to run on its own thread, which sends its [`Checked`].
pub(super) type CheckJob = Box<dyn FnOnce() + Send>;

/// Checks waiting for a thread, and how many threads run.
#[derive(Default)]
pub(super) struct Checks {
    pub(super) pending: std::collections::VecDeque<(InfoHash, String, CheckJob)>,
    pub(super) running: usize,
}

/// The outcome of checking a torrent's data before it starts.
pub(super) struct Checked {
    pub(super) meta: Arc<Metainfo>,
    /// The core's number of this check.
    pub(super) check: u32,
    pub(super) result: Result<(Storage, Bitfield), String>,
    /// The resume data on disk says what `result` has (it matched the files, or the check
    /// saved what it found): the run need not save it again until a piece is written.
    pub(super) resume_current: bool,
}

impl Daemon {
    // ---- carrying out the core's actions -------------------------------------------------

    /// Carries out the core's `actions` for torrent `index`, in order.
    ///
    /// # Panics
    /// On `StartRun` or `SaveResume`, which the core asks for only from a check's result and
    /// which [`Daemon::on_checked`] carries out itself.
    pub(super) fn apply(&mut self, index: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::StartFetch => self.start_fetching(index),
                Action::StopFetch => self.torrents[index].fetching = None,
                Action::StartCheck { force, check } => self.start_checking(index, force, check),
                Action::BeginStop => self.begin_stop(index),
                Action::StartMove { to } => self.start_move(index, to),
                Action::SaveRecord => {
                    self.torrents[index].save_record(&self.config.state_dir, &self.writer)
                }
                Action::StartRun | Action::SaveResume => {
                    unreachable!("{action:?} comes only with a check's result")
                }
            }
        }
    }

    /// Tells a running torrent's coordinator to stop (announce `stopped`, flush, save resume
    /// data) and keeps it in [`Daemon::stopping`]: nothing here waits for it.
    pub(super) fn begin_stop(&mut self, index: usize) {
        let t = &mut self.torrents[index];
        t.stop_run_clock();
        if let Some(handle) = t.handle.take() {
            self.engine.unregister(&t.info_hash);
            t.verified_bytes = handle.stats.verified_bytes.load(Ordering::Relaxed);
            self.stopping.push((t.info_hash, handle.begin_stop()));
        }
    }

    // ---- scheduling ----------------------------------------------------------------------

    /// Takes in what running torrents reported, then one turn of the queue (`lifecycle::
    /// schedule`): seeding limits, seed slots, storage-error retries, moves and starts.
    /// Whether every torrent is settled (`Lifecycle::settled`, its run parked since the last
    /// look if it has one) and the turn did nothing.
    pub(super) fn schedule(&mut self) -> bool {
        let mut settled = true;
        for index in 0..self.torrents.len() {
            let polled = self.poll_running(index);
            let t = &mut self.torrents[index];
            t.note_state();
            settled &= !polled && t.life.settled();
        }
        let limits = self.seed_limits();
        let reached: Vec<Option<LimitReached>> = self
            .torrents
            .iter()
            .map(|t| {
                t.life
                    .complete()
                    .then(|| t.seed_limit_reached(limits))
                    .flatten()
            })
            .collect();
        let over: Vec<bool> = reached.iter().map(Option::is_some).collect();
        let slots = Slots {
            downloads: self.config.max_active_downloads,
            seeds: self.config.max_active_seeds,
        };
        let mut lives: Vec<&mut Lifecycle> =
            self.torrents.iter_mut().map(|t| &mut t.life).collect();
        let turn = lifecycle::schedule(&mut lives, &over, slots, Instant::now());
        for (index, why, actions) in turn {
            let name = self.torrents[index].name();
            match (why, reached[index]) {
                (Scheduled::Finished, Some(reached)) if actions.contains(&Action::BeginStop) => {
                    info!("torrent {name}: {reached}; stopped, data kept");
                }
                (Scheduled::Finished, Some(reached)) => {
                    info!("torrent {name}: {reached}; not started, data kept");
                }
                (Scheduled::Requeued, _) => info!(
                    "torrent {name}: back in the queue: more than queue.max_active_seeds ({}) \
                     torrents seed",
                    slots.seeds
                ),
                (Scheduled::Retried, _) => {
                    info!("torrent {name}: retrying after the storage error");
                }
                _ => {}
            }
            settled = false;
            self.apply(index, actions);
        }
        settled
    }

    /// Looks at the free space of the file system of each downloading, queued or low-space
    /// torrent's data (one `statvfs` per download directory) and tells the core, which pauses
    /// or resumes it (`Lifecycle::on_space_measured`). A directory whose free space cannot be
    /// told (not there yet: its nearest existing ancestor is asked) leaves its torrents alone.
    pub(super) fn check_free_space(&mut self) {
        let min_free = self.config.min_free_bytes;
        let mut free_in: Vec<(PathBuf, Option<u64>)> = Vec::new();
        for index in 0..self.torrents.len() {
            let t = &self.torrents[index];
            let watched = matches!(
                t.life.phase(),
                Phase::Queued | Phase::Running | Phase::LowSpace { .. }
            );
            if !watched || t.life.complete() || t.meta.is_none() {
                continue;
            }
            let dir = t.download_dir().to_owned();
            let free = match free_in.iter().find(|(d, _)| *d == dir) {
                Some((_, free)) => *free,
                None => {
                    let free = free_bytes_at(&dir);
                    free_in.push((dir.clone(), free));
                    free
                }
            };
            let Some(free) = free else {
                continue;
            };
            let needed = t.left_until_done();
            let was_low = matches!(t.life.phase(), Phase::LowSpace { .. });
            let t = &mut self.torrents[index];
            let actions = t.life.on_space_measured(free, needed, min_free);
            let is_low = matches!(t.life.phase(), Phase::LowSpace { .. });
            if is_low && !was_low {
                warn!(
                    "torrent {}: low on space: {} free in {}, {} still to write, \
                     disk.min_free_mib keeps {} free; downloads paused until there is room",
                    t.name(),
                    crate::status::bytes(free),
                    dir.display(),
                    crate::status::bytes(needed),
                    crate::status::bytes(min_free)
                );
            } else if was_low && !is_low {
                info!(
                    "torrent {}: space is back ({} free in {}); queued again",
                    t.name(),
                    crate::status::bytes(free),
                    dir.display()
                );
            }
            self.apply(index, actions);
        }
    }

    /// Feeds the core what a running torrent reported since the last look. Whether it had a
    /// run to look at (not one parked since the last look).
    pub(super) fn poll_running(&mut self, index: usize) -> bool {
        let t = &mut self.torrents[index];
        let Some(handle) = &t.handle else {
            return false;
        };
        // Parked since the last look: nothing to read (10,000 parked seeds were 10,000 channels
        // and counters polled every second).
        let mark = handle.parked_mark();
        if mark.is_some() && mark == t.parked_seen {
            return false;
        }
        t.parked_seen = mark;
        t.verified_bytes = handle.stats.verified_bytes.load(Ordering::Relaxed);
        let events: Vec<TorrentEvent> = handle.events.try_iter().collect();
        t.note_activity();
        for event in events {
            let t = &mut self.torrents[index];
            if *t.life.phase() != Phase::Running {
                break; // an earlier event stopped it
            }
            let actions = match event {
                TorrentEvent::Completed => {
                    t.record.completed_unix.get_or_insert_with(unix_now);
                    let actions = t.life.on_completed();
                    t.start_run_clock();
                    actions
                }
                TorrentEvent::Incomplete => {
                    // A new file selection wants more: it downloads again.
                    let actions = t.life.on_incomplete();
                    t.start_run_clock();
                    actions
                }
                TorrentEvent::Failed(reason) => {
                    let actions = t.life.on_failed(reason, Instant::now());
                    // The coordinator logged the error itself.
                    info!(
                        "torrent {}: stopped by the storage error; retry in {}s or on SIGHUP",
                        t.name(),
                        t.life.retry_after().as_secs()
                    );
                    actions
                }
                // The coordinator logged why. Stop it and hash the data again.
                TorrentEvent::RecheckNeeded(_) => t.life.on_recheck_needed(),
            };
            self.apply(index, actions);
        }
        true
    }

    /// Retries now, as SIGHUP does, every torrent waiting out a storage-error back-off.
    pub(super) fn retry_errors_now(&mut self) {
        for index in 0..self.torrents.len() {
            let t = &mut self.torrents[index];
            if t.life.retry_at().is_none() {
                continue;
            }
            let actions = t.life.on_retry_due();
            if !matches!(t.life.phase(), Phase::Error(_)) {
                info!("torrent {}: retrying after the storage error", t.name());
            }
            self.apply(index, actions);
        }
    }

    // ---- moves ---------------------------------------------------------------------------

    /// Moves a torrent's files to `to` on a `move NAME` thread, once the move's target is in
    /// its record: a daemon killed during the move finishes it at its next start, so the
    /// record never names a directory without the data and never forgets where it went.
    pub(super) fn start_move(&mut self, index: usize, to: PathBuf) {
        let state_dir = self.config.state_dir.clone();
        let t = &mut self.torrents[index];
        let Some(meta) = t.meta.clone() else {
            let actions = t.life.on_failed_to_start("no metadata to move".into());
            return self.apply(index, actions);
        };
        t.record.moving_to = Some(to.clone());
        if let Err(e) = t.save_record_now(&state_dir, &self.writer) {
            error!("torrent {}: {e}; not moved", t.name());
            let actions = t
                .life
                .on_failed_to_start(format!("cannot record the move: {e}"));
            return self.apply(index, actions);
        }
        info!(
            "torrent {}: moving its data from {} to {}",
            t.name(),
            t.download_dir().display(),
            to.display()
        );
        let from = t.download_dir().to_owned();
        let files: Vec<PathBuf> = meta.files.iter().map(|f| f.path.clone()).collect();
        let done = self.moved_tx.clone();
        let info_hash = t.info_hash;
        let spawned = std::thread::Builder::new()
            .name(format!("move {}", meta.name))
            .spawn(move || {
                let result = crate::relocate::move_files(&files, &from, &to);
                let _ = done.send(Moved {
                    info_hash,
                    from,
                    to,
                    result,
                });
            });
        if let Err(e) = spawned {
            let actions = t
                .life
                .on_failed_to_start(format!("cannot spawn the move thread: {e}"));
            self.apply(index, actions);
        }
    }

    /// A `move NAME` thread is done. Moved: the record names the new directory and it runs
    /// from there (its resume data still matches: the files kept their times). Rolled back:
    /// every file is where it was, and so is the record; it shows why in state error. Split
    /// (a file could not go back either): the record keeps the move's target, and a resume or
    /// the next start tries the move again.
    pub(super) fn on_moved(&mut self, moved: Moved) {
        let Some(index) = self.index_of(&moved.info_hash) else {
            return;
        };
        let t = &mut self.torrents[index];
        let (from, to) = (moved.from.display(), moved.to.display());
        let outcome = match moved.result {
            Ok(()) => {
                info!("torrent {}: data moved to {to}", t.name());
                t.record.download_dir.clone_from(&moved.to);
                t.record.moving_to = None;
                MoveOutcome::Moved
            }
            Err(failed) => match failed.split {
                None => {
                    let why = format!(
                        "moving its data to {to}: {}; its files are back in {from}",
                        failed.reason
                    );
                    error!("torrent {}: {why}", t.name());
                    t.record.moving_to = None;
                    MoveOutcome::RolledBack(why)
                }
                Some(back) => {
                    let why = format!(
                        "moving its data to {to}: {}; moving the files back to {from}: {back}; \
                         the move is tried again when it is started",
                        failed.reason
                    );
                    error!("torrent {}: {why}", t.name());
                    MoveOutcome::Split(why)
                }
            },
        };
        let actions = t.life.on_moved(outcome);
        self.apply(index, actions);
    }

    /// The per-torrent limits `t` runs with: the config's, with its own peer limit.
    /// (Its own rates are on its context: [`apply_own_rates`].)
    pub(super) fn torrent_limits(&self, t: &Managed) -> TorrentLimits {
        let mut limits = self.config.limits.clone();
        if let Some(peers) = t.record.peer_limit {
            limits.max_peers = peers;
        }
        limits
    }

    pub(super) fn seed_limits(&self) -> SeedLimits {
        SeedLimits {
            ratio: Some(self.config.ratio_limit).filter(|r| *r > 0.0),
            time: self.config.seed_time_limit,
            idle: self.config.seed_idle_limit,
        }
    }

    // ---- checks and runs -----------------------------------------------------------------

    /// Opens the torrent's files and checks its data on a `check NAME` thread: resume data
    /// when it still matches the files (unless `force`), a full re-hash otherwise.
    pub(super) fn start_checking(&mut self, index: usize, force: bool, check: u32) {
        let state_dir = self.config.state_dir.clone();
        let threads = self.config.limits.disk_threads;
        let t = &mut self.torrents[index];
        let Some(meta) = t.meta.clone() else {
            let actions = t.life.on_failed_to_start("no metadata to check".into());
            return self.apply(index, actions);
        };
        let progress = Arc::new(AtomicU32::new(0));
        t.check_progress = Arc::clone(&progress);
        let plan = CheckPlan {
            root: t.download_dir().to_owned(),
            resume_path: t.resume_path(&state_dir),
            part_path: TorrentRecord::part_path_in(&state_dir, &t.info_hash),
            wanted: t.record.files.wanted(meta.files.len()),
            force,
        };
        let tx = self.checked_tx.clone();
        let name = format!("check {}", meta.name);
        let job: CheckJob = Box::new(move || {
            // A panic in the check still ends in a `Checked`: the torrent goes to error (and
            // retries) instead of waiting in "checking" forever, and its check slot is freed.
            let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                check_data(&meta, &plan, threads, &progress)
            }))
            .unwrap_or_else(|_| Err("the check of the data panicked (a bug: see the log)".into()));
            let (result, resume_current) = match checked {
                Ok((storage, have, current)) => (Ok((storage, have)), current),
                Err(e) => (Err(e), false),
            };
            let _ = tx.send(Checked {
                meta,
                check,
                result,
                resume_current,
            });
        });
        self.checks.pending.push_back((t.info_hash, name, job));
        self.start_pending_checks();
    }

    /// Spawns the `check NAME` threads of pending checks while fewer than [`MAX_CHECKS`] run
    /// (10,000 torrents queued at start would otherwise be 10,000 check threads at once).
    pub(super) fn start_pending_checks(&mut self) {
        while self.checks.running < MAX_CHECKS {
            let Some((info_hash, name, job)) = self.checks.pending.pop_front() else {
                return;
            };
            match std::thread::Builder::new().name(name).spawn(job) {
                Ok(_) => self.checks.running += 1,
                Err(e) => {
                    if let Some(index) = self.index_of(&info_hash) {
                        let actions = self.torrents[index]
                            .life
                            .on_failed_to_start(format!("cannot spawn check thread: {e}"));
                        self.apply(index, actions);
                    }
                }
            }
        }
    }

    /// A `check NAME` thread is done: the core decides (run, stay paused, error, or nothing
    /// when it no longer waits for this check); the run or the resume data come from here.
    pub(super) fn on_checked(&mut self, checked: Checked) {
        self.checks.running = self.checks.running.saturating_sub(1);
        self.start_pending_checks();
        let meta = checked.meta;
        let Some(index) = self.index_of(&meta.info_hash) else {
            return;
        };
        let t = &mut self.torrents[index];
        let was_checking = *t.life.phase() == Phase::Checking;
        let found = match &checked.result {
            Ok((_, have)) => Ok(covers_wanted(&t.piece_levels(), have)),
            Err(reason) => Err(reason.clone()),
        };
        let actions = t.life.on_checked(checked.check, found, Instant::now());
        let (storage, have) = match checked.result {
            Ok(ok) if !actions.is_empty() => ok,
            Ok(_) => return, // removed, paused or checked again meanwhile
            Err(reason) => {
                if was_checking && matches!(t.life.phase(), Phase::Error(_)) {
                    error!(
                        "torrent {}: {reason}; retry in {}s or on SIGHUP",
                        t.name(),
                        t.life.retry_after().as_secs()
                    );
                }
                return self.apply(index, actions);
            }
        };
        t.have = Some(have.clone());
        t.verified_bytes = have
            .iter_ones()
            .map(|p| u64::from(meta.geometry.piece_len(p)))
            .sum();
        if t.life.complete() {
            t.record.completed_unix.get_or_insert_with(unix_now);
        }
        let mut storage = Some(storage);
        for action in actions {
            match action {
                Action::SaveResume => {
                    // Checked while paused (a verify asked over the RPC): it stays paused, with
                    // what the check found as its resume data (`check_data` saved it).
                    info!(
                        "torrent {}: checked; stays paused",
                        self.torrents[index].name()
                    );
                }
                Action::StartRun => {
                    if let Some(storage) = storage.take() {
                        let (meta, have) = (Arc::clone(&meta), have.clone());
                        self.start_run(index, meta, storage, have, checked.resume_current);
                    }
                }
                other => self.apply(index, vec![other]),
            }
        }
    }

    /// Starts a checked torrent's coordinator on the engine, with its own limits and rates.
    fn start_run(
        &mut self,
        index: usize,
        meta: Arc<Metainfo>,
        storage: Storage,
        have: Bitfield,
        resume_current: bool,
    ) {
        let state_dir = self.config.state_dir.clone();
        let limits = self.seed_limits();
        let own_limits = self.torrent_limits(&self.torrents[index]);
        let t = &mut self.torrents[index];
        let resume = ResumeTarget {
            path: t.resume_path(&state_dir),
            root: t.download_dir().to_owned(),
            current: resume_current,
        };
        let allowance = limits
            .for_torrent(&t.record)
            .upload_allowance(t.size(), t.record.uploaded);
        match self.engine.add(
            meta,
            Arc::new(storage),
            have,
            t.peers.clone(),
            RunOptions {
                resume: Some(resume),
                upload_allowance: allowance,
                selection: t.record.files.clone(),
            },
        ) {
            Ok(handle) => {
                if t.record.peer_limit.is_some() {
                    handle.send(Control::SetLimits(own_limits));
                }
                apply_own_rates(&handle, &t.record);
                t.start_run_clock();
                t.run_started_unix = unix_now();
                t.last_seen_totals = t.totals();
                t.run = Some(Arc::clone(&handle.stats));
                t.handle = Some(handle);
                t.parked_seen = None;
                t.save_record(&state_dir, &self.writer);
            }
            Err(e) => {
                error!("torrent {}: cannot start: {e}", t.name());
                let actions = t.life.on_failed_to_start(e.to_string());
                self.apply(index, actions);
            }
        }
    }
}

/// True when the verified pieces `have` include every piece of a nonzero level.
pub(super) fn covers_wanted(levels: &[u8], have: &Bitfield) -> bool {
    levels
        .iter()
        .zip(0u32..)
        .all(|(level, piece)| *level == 0 || have.get(piece))
}

/// Where a torrent's data and state are, for a check.
pub(super) struct CheckPlan {
    /// The download directory.
    pub(super) root: PathBuf,
    pub(super) resume_path: PathBuf,
    pub(super) part_path: PathBuf,
    /// Which files are wanted (the others are not created).
    pub(super) wanted: Vec<bool>,
    /// Ignore resume data and hash everything.
    pub(super) force: bool,
}

/// Opens the files and finds the verified pieces: from resume data when it still matches the
/// files, else by hashing, then saving what it found as the resume data. With `true` when the
/// resume data on disk says what the files have. Runs on a `check NAME` thread.
pub(super) fn check_data(
    meta: &Metainfo,
    plan: &CheckPlan,
    threads: usize,
    progress: &AtomicU32,
) -> Result<(Storage, Bitfield, bool), String> {
    let (root, resume_path) = (plan.root.as_path(), plan.resume_path.as_path());
    if plan.force {
        // The data changed under a running torrent: the resume data may list pieces that are
        // gone. Remove it first, so a crash during the check cannot bring it back.
        if let Err(e) = std::fs::remove_file(resume_path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(format!("{}: cannot remove: {e}", resume_path.display()));
        }
    }
    let storage = Storage::open_selected(root, meta, &plan.wanted, &plan.part_path)
        .map_err(|e| e.to_string())?;
    let why = match ResumeData::load(resume_path) {
        Ok(Some(resume)) => match resume.check(meta, root, storage.part_path()) {
            Ok(have) => {
                info!(
                    "torrent {}: resume data matches, {}/{} pieces",
                    meta.name,
                    have.count_ones(),
                    meta.geometry.num_pieces
                );
                return Ok((storage, have, true));
            }
            Err(stale) => format!("resume data not used: {stale}"),
        },
        Ok(None) if plan.force => {
            "resume data set aside (a check was asked for, or its data changed \
                               while it ran)"
                .to_owned()
        }
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
    // What the check found is the resume data from now on. Saved here, on the check's thread,
    // the run starts with nothing to save: a seed starts parked, without a thread (a first start
    // of 10,000 seeds held thousands of threads while the disk threads saved for them).
    let capture = ResumeData::capture(meta, root, &have, storage.part_path());
    match capture.save(resume_path) {
        Ok(()) => Ok((storage, have, true)),
        Err(e) => {
            warn!(
                "torrent {}: {e}; a run saves it later, else the next start checks the data again",
                meta.name
            );
            Ok((storage, have, false))
        }
    }
}

/// Puts a torrent's own rate limits (its record's) on its running peer threads' context.
pub(super) fn apply_own_rates(handle: &TorrentHandle, record: &TorrentRecord) {
    handle
        .context
        .download_rate
        .set_rate(record.rates.download_bytes());
    handle
        .context
        .upload_rate
        .set_rate(record.rates.upload_bytes());
}

/// The bytes an unprivileged user may still write on the file system of `path` (or of its
/// nearest existing ancestor, for a directory not created yet); `None` when none can be told.
pub(super) fn free_bytes_at(path: &Path) -> Option<u64> {
    path.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .find_map(|p| nix::sys::statvfs::statvfs(p).ok())
        .map(|stat| stat.blocks_available().saturating_mul(stat.fragment_size()))
}
