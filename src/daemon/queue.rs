//! Starting and stopping torrents: the queue (download and seed slots), taking in what running
//! torrents report, seeding limits, storage-error retries, the `check NAME` threads that check
//! data before a start, and the runs that are still stopping.

use super::*;

/// What a `move NAME` thread ends with.
pub(super) struct Moved {
    pub(super) info_hash: InfoHash,
    pub(super) to: PathBuf,
    pub(super) result: Result<(), String>,
}

/// The outcome of checking a torrent's data before it starts.
pub(super) struct Checked {
    pub(super) meta: Arc<Metainfo>,
    pub(super) result: Result<(Storage, Bitfield), String>,
}

impl Daemon {
    // ---- scheduling ----------------------------------------------------------------------

    /// Takes in what running torrents reported, applies seeding limits, and starts queued
    /// torrents while the queue limits allow.
    pub(super) fn schedule(&mut self) {
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
            if !matches!(t.state, State::Queued) || still_stopping(&self.stopping, &t.info_hash) {
                continue;
            }
            if t.complete
                && !t.force_check
                && let Some(reached) = t.seed_limit_reached(limits)
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

    pub(super) fn poll_running(&mut self, index: usize) {
        let t = &mut self.torrents[index];
        let State::Running(handle) = &t.state else {
            return;
        };
        t.verified_bytes = handle.stats.verified_bytes.load(Ordering::Relaxed);
        let events: Vec<TorrentEvent> = handle.events.try_iter().collect();
        t.note_activity();
        let mut next = None;
        for event in events {
            match event {
                TorrentEvent::Completed => {
                    t.complete = true;
                    t.record.completed_unix.get_or_insert_with(unix_now);
                    t.start_run_clock();
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
            let t = &self.torrents[index];
            if let Some(reached) = t.seed_limit_reached(self.seed_limits()) {
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

    /// Starts the moves whose torrents' last runs have ended: a `move NAME` thread each.
    pub(super) fn start_moves(&mut self) {
        for index in 0..self.torrents.len() {
            let t = &self.torrents[index];
            let State::Moving { to, started: false } = &t.state else {
                continue;
            };
            if still_stopping(&self.stopping, &t.info_hash) {
                continue;
            }
            let Some(meta) = t.meta.clone() else {
                continue;
            };
            let (from, to) = (t.download_dir().to_owned(), to.clone());
            let files: Vec<PathBuf> = meta.files.iter().map(|f| f.path.clone()).collect();
            let done = self.moved_tx.clone();
            let info_hash = t.info_hash;
            let target = to.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("move {}", meta.name))
                .spawn(move || {
                    let result = crate::relocate::move_files(&files, &from, &target);
                    let _ = done.send(Moved {
                        info_hash,
                        to: target,
                        result,
                    });
                });
            self.torrents[index].state = match spawned {
                Ok(_) => State::Moving { to, started: true },
                Err(e) => State::Error(format!("cannot spawn the move thread: {e}")),
            };
        }
    }

    /// A `move NAME` thread is done: the torrent runs from its new directory (its resume data
    /// still matches: the files kept their times), or shows why not in state error.
    pub(super) fn on_moved(&mut self, moved: Moved) {
        let Some(index) = self.index_of(&moved.info_hash) else {
            return;
        };
        let t = &mut self.torrents[index];
        match moved.result {
            Ok(()) => {
                info!("torrent {}: data moved to {}", t.name(), moved.to.display());
                t.record.download_dir = moved.to;
                t.state = if t.paused {
                    State::Paused
                } else {
                    State::Queued
                };
            }
            Err(reason) => {
                error!("torrent {}: moving its data: {reason}", t.name());
                // The files moved so far are at the target: it is checked where it was told
                // to be, so nothing moved is fetched again.
                t.record.download_dir = moved.to;
                t.force_check = true;
                t.state = State::Error(format!("moving its data: {reason}"));
            }
        }
        t.save_record(&self.config.state_dir);
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

    /// Queues a torrent that a storage error stopped, to check its data and run again.
    pub(super) fn retry(&mut self, index: usize) {
        let t = &mut self.torrents[index];
        t.retry_at = None;
        if matches!(t.state, State::Error(_)) && !t.paused && t.meta.is_some() {
            info!("torrent {}: retrying after the storage error", t.name());
            t.state = State::Queued;
        }
    }

    /// Opens the torrent's files and checks its data on a `check NAME` thread: resume data
    /// when it still matches the files, a full re-hash otherwise.
    pub(super) fn start_checking(&mut self, index: usize) {
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

    pub(super) fn on_checked(&mut self, checked: Checked) {
        let meta = checked.meta;
        let Some(index) = self.index_of(&meta.info_hash) else {
            return;
        };
        let state_dir = self.config.state_dir.clone();
        let limits = self.seed_limits();
        let own_limits = self.torrent_limits(&self.torrents[index]);
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
        if t.paused {
            // Checked while paused (a verify asked over the RPC): it stays paused, with what
            // the check found saved as its resume data.
            info!("torrent {}: checked; stays paused", t.name());
            let path = t.resume_path(&state_dir);
            if let Err(e) = ResumeData::capture(&meta, t.download_dir(), &have).save(&path) {
                warn!("torrent {}: {e}", t.name());
            }
            t.state = State::Paused;
            t.save_record(&state_dir);
            return;
        }
        let resume = ResumeTarget {
            path: t.resume_path(&state_dir),
            root: t.download_dir().to_owned(),
        };
        let allowance = limits
            .for_torrent(&t.record)
            .upload_allowance(t.size(), t.record.uploaded);
        match self.engine.add(
            meta,
            Arc::new(storage),
            have,
            t.peers.clone(),
            Some(resume),
            allowance,
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
                t.state = State::Running(handle);
                t.save_record(&state_dir);
            }
            Err(e) => {
                error!("torrent {}: cannot start: {e}", t.name());
                t.state = State::Error(e.to_string());
            }
        }
    }
}

pub(super) fn is_active(t: &Managed) -> bool {
    matches!(t.state, State::Checking(_) | State::Running(_))
}

/// Opens the files and finds the verified pieces: from resume data when it still matches the
/// files, else by hashing. Runs on a `check NAME` thread.
pub(super) fn check_data(
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
        Ok(None) if force => "resume data set aside (a check was asked for, or its data changed \
                               while it ran)"
            .to_owned(),
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

/// A run of this torrent is still stopping: it must end before the torrent starts or moves.
fn still_stopping(stopping: &[(InfoHash, Stopping)], info_hash: &InfoHash) -> bool {
    stopping.iter().any(|(hash, _)| hash == info_hash)
}
