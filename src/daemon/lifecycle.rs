//! The pure core of the daemon's torrent set: one torrent's lifecycle ([`Lifecycle`]: its
//! phase, paused or not, complete or not, a check owed, the storage-error back-off, runs still
//! stopping, an unfinished move, low free space), the queue's scheduling over all of them in queue order
//! ([`schedule`]) and the queue order's moves ([`moved`]).
//!
//! Events come in as methods named after them (`on_added`, `on_checked`, `on_failed`, ...),
//! with the time as an argument where it matters; each returns the [`Action`]s the shell (the
//! daemon's main loop, `queue.rs` and friends) carries out: start a metadata fetch, a check, a
//! run or a move, stop a run or a fetch, save resume data or the record. A `Lifecycle`'s fields
//! are private, so this module is the only writer of a torrent's phase; the shell reads it
//! (`phase()`, `complete()`, ...) and owns the threads, handles and files that go with it.
//! Nothing here touches a thread, a file, a socket or a clock: it is unit-tested below without
//! any of them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A torrent stopped by a storage error (disk full, unwritable directory) is retried after this
/// wait, doubled per failure up to [`STORAGE_RETRY_MAX`]; SIGHUP retries it at once.
pub(super) const STORAGE_RETRY_BASE: Duration = Duration::from_secs(60);
pub(super) const STORAGE_RETRY_MAX: Duration = Duration::from_secs(30 * 60);

/// What a downloading torrent may write between two looks at its free space, at most: a look
/// each second, and up to 16 MiB of pieces queued for the disk that a run told to stop still
/// writes. A torrent pauses once the free space is less than `disk.min_free_mib` plus this much
/// (or plus what it still has to write, when that is less): see [`space_is_low`].
pub(super) const LOW_SPACE_HEADROOM_BYTES: u64 = 64 << 20;

/// Where a torrent is in its life. The shell holds what goes with a phase: the fetch thread of
/// `Metadata`, the check's progress of `Checking`, the coordinator's handle of `Running`.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Phase {
    /// A magnet link's metadata is being fetched.
    Metadata,
    /// Waiting for a download slot, or (complete) for a seed slot.
    Queued,
    /// Its data is being checked.
    Checking,
    /// Its coordinator runs (downloading, or seeding when complete).
    Running,
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
    /// Incomplete, and the file system of its data has too little free space
    /// ([`space_is_low`]): not downloading, no slot held, back to the queue by itself when the
    /// space returns. The figures of the last look.
    LowSpace {
        free_bytes: u64,
        needed_bytes: u64,
    },
}

/// What the shell must do for one torrent, in the imperative.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Action {
    /// Fetch its metadata on a `metadata NAME` thread (ending a fetch already running).
    StartFetch,
    /// End its metadata fetch.
    StopFetch,
    /// Check its data on a `check NAME` thread; `force`: hash everything, resume data set
    /// aside. `check` numbers the check, so a late result of an abandoned one is ignored.
    StartCheck { force: bool, check: u32 },
    /// Start its coordinator with what the check found.
    StartRun,
    /// Tell its coordinator to stop; [`Lifecycle::on_run_ended`] once it has.
    BeginStop,
    /// Record the move's target, then move its files there on a `move NAME` thread.
    StartMove { to: PathBuf },
    /// Save what the check found as its resume data (it was checked while paused).
    SaveResume,
    /// Save its record.
    SaveRecord,
}

/// Why an event was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// It is checking or moving; the phase's name.
    Busy(&'static str),
}

/// How a `move NAME` thread ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum MoveOutcome {
    /// Every file is at the target.
    Moved,
    /// A file could not be moved and the ones moved before it went back: every file is at the
    /// source again.
    RolledBack(String),
    /// A file could not be moved, nor could all the moved ones go back: the files are split
    /// between source and target, and the move stays owed (a resume or the next start tries
    /// it again).
    Split(String),
}

/// One torrent's lifecycle; see the module documentation.
#[derive(Clone, Debug)]
pub(super) struct Lifecycle {
    phase: Phase,
    /// Paused by its owner (an entry, the RPC): it does not run, and goes back to paused after
    /// a check or a move.
    paused: bool,
    /// Every piece verified, as last known.
    complete: bool,
    /// Its metadata is known (always, but for a magnet link still fetching it).
    has_meta: bool,
    /// The next check ignores resume data and hashes everything (data changed under us, or a
    /// verify was asked for).
    force_check: bool,
    /// In phase error after a storage error: when it is retried by itself.
    retry_at: Option<Instant>,
    /// Storage errors in a row (the back-off doubles with each); reset on completion.
    storage_failures: u32,
    /// Runs told to stop that have not ended yet: it neither starts nor moves before they have.
    runs_stopping: u32,
    /// The number of the last check started.
    checks: u32,
    /// A move that has not finished (its target): the data may be split until it does.
    unfinished_move: Option<PathBuf>,
}

impl Lifecycle {
    /// Whether nothing about it changes by the clock or by the queue alone: seeding, paused,
    /// finished, stopped, or in error with no retry due; no run stopping, no check asked for.
    /// The main loop sweeps less often while every torrent is settled.
    pub(super) fn settled(&self) -> bool {
        self.runs_stopping == 0
            && !self.force_check
            && match self.phase {
                Phase::Running => self.complete,
                Phase::Paused | Phase::Finished | Phase::Stopped => true,
                Phase::Error(_) => self.retry_at.is_none(),
                Phase::Metadata
                | Phase::Queued
                | Phase::Checking
                | Phase::Moving { .. }
                | Phase::LowSpace { .. } => false,
            }
    }

    /// A torrent just known: paused, until [`Lifecycle::on_added`].
    pub(super) fn new(has_meta: bool, complete: bool) -> Self {
        Self {
            phase: Phase::Paused,
            paused: false,
            complete,
            has_meta,
            force_check: false,
            retry_at: None,
            storage_failures: 0,
            runs_stopping: 0,
            checks: 0,
            unfinished_move: None,
        }
    }

    /// A `[[torrent]]` entry whose `.torrent` cannot be read: in error with the reason.
    pub(super) fn unreadable(reason: String, paused: bool) -> Self {
        Self {
            phase: Phase::Error(reason),
            paused,
            ..Self::new(false, false)
        }
    }

    // ---- reading -------------------------------------------------------------------------

    pub(super) fn phase(&self) -> &Phase {
        &self.phase
    }

    pub(super) fn paused(&self) -> bool {
        self.paused
    }

    pub(super) fn complete(&self) -> bool {
        self.complete
    }

    pub(super) fn force_check(&self) -> bool {
        self.force_check
    }

    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// A check, a run (or one still stopping) or a move may have its files open: they must
    /// not be renamed under it.
    pub(super) fn files_in_use(&self) -> bool {
        self.runs_stopping > 0
            || matches!(
                self.phase,
                Phase::Checking | Phase::Running | Phase::Moving { started: true, .. }
            )
    }

    /// Checking or running: it holds a download or seed slot.
    pub(super) fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Checking | Phase::Running)
    }

    /// The wait before the next retry after the storage errors so far.
    pub(super) fn retry_after(&self) -> Duration {
        storage_retry_after(self.storage_failures)
    }

    /// The phase's name in the status file: `queued_seed` and `seeding` when complete.
    pub(super) fn name(&self) -> &'static str {
        match &self.phase {
            Phase::Metadata => "metadata",
            Phase::Queued if self.complete => "queued_seed",
            Phase::Queued => "queued",
            Phase::Checking => "checking",
            Phase::Running if self.complete => "seeding",
            Phase::Running => "downloading",
            Phase::Paused => "paused",
            Phase::Finished => "finished",
            Phase::Stopped => "stopped",
            Phase::Moving { .. } => "moving",
            Phase::Error(_) => "error",
            Phase::LowSpace { .. } => "low-space",
        }
    }

    // ---- events from its owner (entries, watch files, the RPC) ----------------------------

    /// It was added, paused or not; `unfinished_move`: its record names a move that did not
    /// finish (the daemon was killed during it, or it failed half way), which is finished
    /// first.
    pub(super) fn on_added(
        &mut self,
        paused: bool,
        unfinished_move: Option<PathBuf>,
    ) -> Vec<Action> {
        self.paused = paused;
        match unfinished_move.filter(|_| self.has_meta) {
            Some(to) => {
                self.unfinished_move = Some(to.clone());
                self.phase = Phase::Moving { to, started: false };
                Vec::new()
            }
            None if paused => Vec::new(),
            None => self.unpause(),
        }
    }

    /// Paused by its owner: it stops (a move under way finishes first).
    pub(super) fn on_pause_requested(&mut self) -> Vec<Action> {
        self.paused = true;
        match self.phase {
            Phase::Paused | Phase::Moving { .. } => Vec::new(),
            _ => self.leave(Phase::Paused),
        }
    }

    /// Started by its owner: one that is paused, finished, stopped or in error goes to the
    /// queue (or fetches its metadata, or finishes its move).
    pub(super) fn on_resume_requested(&mut self) -> Vec<Action> {
        self.paused = false;
        if !matches!(
            self.phase,
            Phase::Paused | Phase::Finished | Phase::Stopped | Phase::Error(_)
        ) {
            return Vec::new();
        }
        self.retry_at = None;
        let mut actions = self.unpause();
        actions.push(Action::SaveRecord);
        actions
    }

    /// A check was asked for: its data is hashed again, resume data set aside; a running
    /// torrent stops for it and runs again after, a paused one stays paused. A checking or
    /// moving one is checked once that is over.
    pub(super) fn on_verify_requested(&mut self) -> Vec<Action> {
        if !self.has_meta {
            return Vec::new();
        }
        self.force_check = true;
        match self.phase {
            Phase::Running => self.leave(Phase::Queued),
            Phase::Checking | Phase::Moving { .. } => Vec::new(),
            _ => {
                self.phase = Phase::Queued;
                Vec::new()
            }
        }
    }

    /// Its data is to be looked for elsewhere (the shell changed its directory): it stops and
    /// is checked there, fully.
    pub(super) fn on_relocated(&mut self) -> Result<Vec<Action>, Refused> {
        self.refuse_if_busy()?;
        self.force_check = true;
        let next = if self.paused {
            Phase::Paused
        } else {
            Phase::Queued
        };
        Ok(self.leave(next))
    }

    /// Its data is to move to `to`: it stops, and once its run has ended [`schedule`] starts
    /// the move.
    pub(super) fn on_move_requested(&mut self, to: PathBuf) -> Result<Vec<Action>, Refused> {
        self.refuse_if_busy()?;
        Ok(self.leave(Phase::Moving { to, started: false }))
    }

    /// Files of it are to be renamed (`torrent-rename-path`): a running torrent stops and goes
    /// back to the queue, so its files are renamed once its run has ended
    /// ([`Lifecycle::files_in_use`]) and it runs again after, from resume data that follows
    /// the rename; in any other phase it stays as it is and they are renamed at once. Refused
    /// while it checks or moves, or while a move it has not finished may have split its files.
    pub(super) fn on_rename_requested(&mut self) -> Result<Vec<Action>, Refused> {
        self.refuse_if_busy()?;
        if self.unfinished_move.is_some() {
            return Err(Refused::Busy("moving"));
        }
        Ok(match self.phase {
            Phase::Running => self.leave(Phase::Queued),
            _ => Vec::new(),
        })
    }

    /// It is removed: it stops (the shell forgets it).
    pub(super) fn on_removed(&mut self) -> Vec<Action> {
        self.leave(Phase::Paused)
    }

    /// The daemon stops: queued, checking and running torrents become `stopped`; a fetch ends.
    /// Paused, finished, moving and errored ones say so in the last status file.
    pub(super) fn on_shutdown(&mut self) -> Vec<Action> {
        match self.phase {
            Phase::Metadata | Phase::Queued | Phase::Checking | Phase::Running | Phase::Stopped => {
                self.leave(Phase::Stopped)
            }
            _ => Vec::new(),
        }
    }

    /// Its magnet link's peers or trackers changed: a fetch under way starts again with them.
    pub(super) fn on_peers_changed(&mut self) -> Vec<Action> {
        if self.phase == Phase::Metadata {
            vec![Action::StartFetch]
        } else {
            Vec::new()
        }
    }

    /// Retry now (SIGHUP, or its back-off is over): one in error from a storage error goes back
    /// to the queue unless paused.
    pub(super) fn on_retry_due(&mut self) -> Vec<Action> {
        self.retry_at = None;
        if matches!(self.phase, Phase::Error(_)) && !self.paused && self.has_meta {
            return self.unpause();
        }
        Vec::new()
    }

    /// Its seeding limits changed; `reached`: whether it has reached the new ones. A finished
    /// torrent under them goes back to the queue.
    pub(super) fn on_limits_changed(&mut self, reached: bool) -> Vec<Action> {
        if self.phase == Phase::Finished && !reached {
            self.phase = Phase::Queued;
        }
        Vec::new()
    }

    /// The shell looked at the free space of its data's file system: `free_bytes` free, and
    /// `needed_bytes` it still has to write (what is left of its wanted files), with
    /// `min_free_bytes` to keep free (0: the guard is off). An incomplete torrent that is
    /// queued or downloading pauses in phase low-space when [`space_is_low`] says so (a run
    /// is told to stop; its slot is free for others); one in low-space goes back to the queue
    /// once it no longer is. Complete torrents write nothing and are left alone, as are all
    /// other phases (a check writes nothing: its run is looked at next time).
    pub(super) fn on_space_measured(
        &mut self,
        free_bytes: u64,
        needed_bytes: u64,
        min_free_bytes: u64,
    ) -> Vec<Action> {
        let low = !self.complete && space_is_low(free_bytes, needed_bytes, min_free_bytes);
        let figures = Phase::LowSpace {
            free_bytes,
            needed_bytes,
        };
        match self.phase {
            Phase::LowSpace { .. } if low => {
                self.phase = figures;
                Vec::new()
            }
            Phase::LowSpace { .. } => {
                self.phase = Phase::Queued;
                Vec::new()
            }
            Phase::Queued | Phase::Running if low => self.leave(figures),
            _ => Vec::new(),
        }
    }

    // ---- events from its threads ---------------------------------------------------------

    /// A thread could not be spawned, or the engine refused the run: in error with why.
    pub(super) fn on_failed_to_start(&mut self, reason: String) -> Vec<Action> {
        self.phase = Phase::Error(reason);
        Vec::new()
    }

    /// Its metadata arrived (`Ok`), or is no usable torrent (`Err`).
    pub(super) fn on_metadata(&mut self, result: Result<(), String>) -> Vec<Action> {
        if self.has_meta {
            return Vec::new(); // from an earlier fetch, stopped too late
        }
        let fetching = self.phase == Phase::Metadata;
        match result {
            Ok(()) => {
                self.has_meta = true;
                if fetching {
                    self.phase = Phase::Queued;
                }
            }
            Err(reason) if fetching => self.phase = Phase::Error(reason),
            Err(_) => {}
        }
        Vec::new()
    }

    /// Check number `check` ended: `Ok(complete)` with the pieces found, or `Err` (files that
    /// cannot be opened or created) at `now`. A check it no longer waits for (paused, removed,
    /// a newer check) is ignored.
    pub(super) fn on_checked(
        &mut self,
        check: u32,
        result: Result<bool, String>,
        now: Instant,
    ) -> Vec<Action> {
        if self.phase != Phase::Checking || check != self.checks {
            return Vec::new();
        }
        match result {
            Err(reason) => {
                self.schedule_retry(now);
                self.phase = Phase::Error(reason);
                Vec::new()
            }
            Ok(complete) => {
                self.complete = complete;
                if self.paused {
                    self.phase = Phase::Paused;
                    vec![Action::SaveResume, Action::SaveRecord]
                } else {
                    self.phase = Phase::Running;
                    vec![Action::StartRun]
                }
            }
        }
    }

    /// Its run has every piece now.
    pub(super) fn on_completed(&mut self) -> Vec<Action> {
        self.complete = true;
        self.storage_failures = 0;
        vec![Action::SaveRecord]
    }

    /// Its run wants pieces it lacks again (a new file selection, after it completed).
    pub(super) fn on_incomplete(&mut self) -> Vec<Action> {
        self.complete = false;
        vec![Action::SaveRecord]
    }

    /// Its file selection changed while it does not run: `complete` is whether the pieces it
    /// is known to have cover what it wants now (false when they are not known). A running
    /// torrent's run says so itself ([`Lifecycle::on_completed`], [`Lifecycle::on_incomplete`]).
    pub(super) fn on_selection_changed(&mut self, complete: bool) -> Vec<Action> {
        if self.phase != Phase::Running {
            self.complete = complete;
        }
        vec![Action::SaveRecord]
    }

    /// Its run stopped on a storage error at `now`: in error, retried after the back-off.
    pub(super) fn on_failed(&mut self, reason: String, now: Instant) -> Vec<Action> {
        self.schedule_retry(now);
        self.leave(Phase::Error(reason))
    }

    /// Its run found its files changed under it: it stops and is checked again, fully.
    pub(super) fn on_recheck_needed(&mut self) -> Vec<Action> {
        self.force_check = true;
        self.leave(Phase::Queued)
    }

    /// A run told to stop has ended.
    pub(super) fn on_run_ended(&mut self) {
        self.runs_stopping = self.runs_stopping.saturating_sub(1);
    }

    /// Its `move NAME` thread ended. Moved: it runs from the target (the shell records it),
    /// or stays paused. Rolled back: in error, its data where it was. Split: in error, the
    /// move still owed.
    pub(super) fn on_moved(&mut self, outcome: MoveOutcome) -> Vec<Action> {
        if !matches!(self.phase, Phase::Moving { started: true, .. }) {
            return Vec::new();
        }
        match outcome {
            MoveOutcome::Moved => {
                self.unfinished_move = None;
                self.phase = if self.paused {
                    Phase::Paused
                } else {
                    Phase::Queued
                };
            }
            MoveOutcome::RolledBack(reason) => {
                self.unfinished_move = None;
                self.phase = Phase::Error(reason);
            }
            MoveOutcome::Split(reason) => self.phase = Phase::Error(reason),
        }
        vec![Action::SaveRecord]
    }

    // ---- the transitions -----------------------------------------------------------------

    /// Leaves the current phase for `next`: a run is told to stop, a fetch ends, the record is
    /// saved.
    fn leave(&mut self, next: Phase) -> Vec<Action> {
        let mut actions = Vec::new();
        match std::mem::replace(&mut self.phase, next) {
            Phase::Running => {
                self.runs_stopping += 1;
                actions.push(Action::BeginStop);
            }
            Phase::Metadata => actions.push(Action::StopFetch),
            _ => {}
        }
        actions.push(Action::SaveRecord);
        actions
    }

    /// Out of paused (or just added): its owed move first, else queued when its metadata is
    /// known, else fetching it.
    fn unpause(&mut self) -> Vec<Action> {
        if let Some(to) = self.unfinished_move.clone() {
            self.phase = Phase::Moving { to, started: false };
            Vec::new()
        } else if self.has_meta {
            self.phase = Phase::Queued;
            Vec::new()
        } else {
            self.phase = Phase::Metadata;
            vec![Action::StartFetch]
        }
    }

    fn refuse_if_busy(&self) -> Result<(), Refused> {
        match self.phase {
            Phase::Checking | Phase::Moving { .. } => Err(Refused::Busy(self.name())),
            _ => Ok(()),
        }
    }

    fn schedule_retry(&mut self, now: Instant) {
        self.storage_failures = self.storage_failures.saturating_add(1);
        self.retry_at = Some(now + self.retry_after());
    }

    /// Starts it from the queue: a check, or a fetch without metadata.
    fn start(&mut self) -> Action {
        if !self.has_meta {
            self.phase = Phase::Metadata;
            return Action::StartFetch;
        }
        self.phase = Phase::Checking;
        self.checks = self.checks.wrapping_add(1);
        Action::StartCheck {
            force: std::mem::take(&mut self.force_check),
            check: self.checks,
        }
    }
}

/// The queue limits: how many torrents may download and seed at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slots {
    pub(super) downloads: usize,
    pub(super) seeds: usize,
}

/// Why [`schedule`] stopped or did not start a torrent (for the shell's log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scheduled {
    /// Its seeding limit is reached: stopped (or not started), data kept.
    Finished,
    /// More torrents seed than `slots.seeds` allow: back in the queue.
    Requeued,
    /// Its storage-error back-off is over: back in the queue.
    Retried,
    /// The actions of a start (a check or a fetch) or a move.
    Started,
}

/// One turn of the queue at `now`, over every torrent in queue order; `reached[i]`: whether
/// torrent `i` (complete) has reached its seeding limits. Running seeds over their limits
/// finish; seeds beyond `slots.seeds` go back to the queue, the last in the queue first; errors
/// whose back-off is over are retried; moves whose runs have ended start; then queued
/// torrents start, first in the queue first, while slots are free (a complete one over its
/// limits finishes instead). Returns, per torrent index, why and the actions.
pub(super) fn schedule(
    queue: &mut [&mut Lifecycle],
    reached: &[bool],
    slots: Slots,
    now: Instant,
) -> Vec<(usize, Scheduled, Vec<Action>)> {
    let mut out = Vec::new();
    let seeding =
        |queue: &[&mut Lifecycle]| queue.iter().filter(|t| t.is_active() && t.complete).count();
    for (i, t) in queue.iter_mut().enumerate() {
        if t.phase == Phase::Running && t.complete && !t.force_check && reached[i] {
            out.push((i, Scheduled::Finished, t.leave(Phase::Finished)));
        }
    }
    // Counted once: each seed requeued here stops being active.
    let mut seeds = seeding(queue);
    for i in (0..queue.len()).rev() {
        if seeds <= slots.seeds {
            break;
        }
        let t = &mut queue[i];
        if t.phase == Phase::Running && t.complete && !t.force_check {
            out.push((i, Scheduled::Requeued, t.leave(Phase::Queued)));
            seeds -= 1;
        }
    }
    for (i, t) in queue.iter_mut().enumerate() {
        if t.retry_at.is_some_and(|at| at <= now) {
            let was_error = matches!(t.phase, Phase::Error(_));
            let actions = t.on_retry_due();
            if was_error && !matches!(t.phase, Phase::Error(_)) {
                out.push((i, Scheduled::Retried, actions));
            }
        }
    }
    for (i, t) in queue.iter_mut().enumerate() {
        if let Phase::Moving { to, started } = &mut t.phase
            && !*started
            && t.runs_stopping == 0
            && t.has_meta
        {
            *started = true;
            let to = to.clone();
            t.unfinished_move = Some(to.clone());
            out.push((i, Scheduled::Started, vec![Action::StartMove { to }]));
        }
    }
    let downloading = queue
        .iter()
        .filter(|t| t.is_active() && !t.complete)
        .count();
    let mut free_down = slots.downloads.saturating_sub(downloading);
    let mut free_seed = slots.seeds.saturating_sub(seeding(queue));
    for (i, t) in queue.iter_mut().enumerate() {
        // A torrent starts again only once its last run has ended.
        if t.phase != Phase::Queued || t.runs_stopping > 0 {
            continue;
        }
        if t.complete && !t.force_check && reached[i] {
            t.phase = Phase::Finished;
            out.push((i, Scheduled::Finished, Vec::new()));
            continue;
        }
        let free = if t.complete {
            &mut free_seed
        } else {
            &mut free_down
        };
        if *free > 0 {
            *free -= 1;
            out.push((i, Scheduled::Started, vec![t.start()]));
        }
    }
    out
}

/// Whether a torrent that still has to write `needed_bytes` must not download where
/// `free_bytes` are free and `min_free_bytes` must stay free: when the free space is less than
/// `min_free_bytes` plus what it may write before the next look (what it still needs, at most
/// [`LOW_SPACE_HEADROOM_BYTES`]). Never with the guard off (`min_free_bytes` 0) or nothing to
/// write. The same test pauses and resumes: what brings it back is space freed by others.
pub(super) fn space_is_low(free_bytes: u64, needed_bytes: u64, min_free_bytes: u64) -> bool {
    min_free_bytes > 0
        && needed_bytes > 0
        && free_bytes < min_free_bytes.saturating_add(needed_bytes.min(LOW_SPACE_HEADROOM_BYTES))
}

/// The wait before retrying a torrent after `failures` storage errors in a row: 60 s, doubling,
/// at most 30 min.
pub(super) fn storage_retry_after(failures: u32) -> Duration {
    crate::backoff::doubling(
        STORAGE_RETRY_BASE,
        failures.saturating_sub(1),
        STORAGE_RETRY_MAX,
    )
}

/// Where `queue-move-*` puts the torrents it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum QueueMove {
    Top,
    Up,
    Down,
    Bottom,
    /// To this position (`torrent-set`'s `queuePosition`), past the end meaning the end.
    To(usize),
}

/// The queue after moving the torrents at `selected` (indices into `order`), keeping their
/// order among themselves: to the top or bottom, one place up or down, or to a position.
pub(super) fn moved<T>(order: Vec<T>, selected: &[usize], how: QueueMove) -> Vec<T> {
    let len = order.len();
    let chosen: Vec<bool> = (0..len).map(|i| selected.contains(&i)).collect();
    let mut slots: Vec<Option<T>> = order.into_iter().map(Some).collect();
    let mut positions: Vec<usize> = (0..len).collect();
    match how {
        QueueMove::Top | QueueMove::Bottom | QueueMove::To(_) => {
            let (mut first, mut rest): (Vec<usize>, Vec<usize>) =
                positions.iter().partition(|&&i| chosen[i]);
            let at = match how {
                QueueMove::Top => 0,
                QueueMove::To(at) => at.min(rest.len()),
                _ => rest.len(),
            };
            let tail = rest.split_off(at);
            rest.append(&mut first);
            rest.extend(tail);
            positions = rest;
        }
        QueueMove::Up => {
            for i in 1..len {
                if chosen[positions[i]] && !chosen[positions[i - 1]] {
                    positions.swap(i, i - 1);
                }
            }
        }
        QueueMove::Down => {
            for i in (0..len.saturating_sub(1)).rev() {
                if chosen[positions[i]] && !chosen[positions[i + 1]] {
                    positions.swap(i, i + 1);
                }
            }
        }
    }
    positions
        .into_iter()
        .map(|i| slots[i].take().expect("each position once"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: Slots = Slots {
        downloads: 2,
        seeds: 2,
    };

    fn t0() -> Instant {
        Instant::now()
    }

    /// A torrent with metadata, added (not paused), complete or not.
    fn added(complete: bool) -> Lifecycle {
        let mut t = Lifecycle::new(true, complete);
        assert_eq!(t.on_added(false, None), []);
        t
    }

    /// The phases' names, one per torrent, as the status file says them.
    fn names(queue: &[Lifecycle]) -> Vec<&'static str> {
        queue.iter().map(Lifecycle::name).collect()
    }

    /// One turn of the queue with no seeding limit reached.
    fn turn(queue: &mut [Lifecycle], slots: Slots, now: Instant) -> Vec<(usize, Action)> {
        turn_reached(queue, &vec![false; queue.len()], slots, now)
    }

    fn turn_reached(
        queue: &mut [Lifecycle],
        reached: &[bool],
        slots: Slots,
        now: Instant,
    ) -> Vec<(usize, Action)> {
        let mut refs: Vec<&mut Lifecycle> = queue.iter_mut().collect();
        schedule(&mut refs, reached, slots, now)
            .into_iter()
            .flat_map(|(i, _, actions)| actions.into_iter().map(move |a| (i, a)))
            .collect()
    }

    /// Runs the check the turn started for torrent `i`: it finds the data complete or not.
    fn check_done(t: &mut Lifecycle, complete: bool) -> Vec<Action> {
        let check = t.checks;
        t.on_checked(check, Ok(complete), t0())
    }

    fn start_check(check: u32) -> Action {
        Action::StartCheck {
            force: false,
            check,
        }
    }

    #[test]
    fn queued_torrents_start_in_queue_order_while_download_and_seed_slots_are_free() {
        let mut q = vec![
            added(false),
            added(true),
            added(false),
            added(false),
            added(true),
        ];
        let slots = Slots {
            downloads: 2,
            seeds: 1,
        };
        let started = turn(&mut q, slots, t0());
        assert_eq!(
            started,
            [
                (0, start_check(1)),
                (1, start_check(1)),
                (2, start_check(1))
            ]
        );
        assert_eq!(
            names(&q),
            ["checking", "checking", "checking", "queued", "queued_seed"]
        );
        // Nothing more while the slots are taken, checking or running.
        assert_eq!(check_done(&mut q[0], false), [Action::StartRun]);
        assert_eq!(turn(&mut q, slots, t0()), []);
        // A download that completes moves to the seed slots: it is over them, and the last
        // seed in the queue goes back (the first keeps its slot); a download slot frees.
        assert_eq!(check_done(&mut q[1], true), [Action::StartRun]);
        assert_eq!(check_done(&mut q[2], false), [Action::StartRun]);
        assert_eq!(q[2].on_completed(), [Action::SaveRecord]);
        let turned = turn(&mut q, slots, t0());
        assert_eq!(
            turned,
            [
                (2, Action::BeginStop),
                (2, Action::SaveRecord),
                (3, start_check(1))
            ]
        );
        assert_eq!(
            names(&q),
            [
                "downloading",
                "seeding",
                "queued_seed",
                "checking",
                "queued_seed"
            ]
        );
        // More seed slots: the seeds waiting start, once the stopped run has ended.
        let more = Slots {
            downloads: 2,
            seeds: 3,
        };
        assert_eq!(turn(&mut q, more, t0()), [(4, start_check(1))]);
        q[2].on_run_ended();
        assert_eq!(turn(&mut q, more, t0()), [(2, start_check(2))]);
    }

    #[test]
    fn fewer_seed_slots_send_the_last_seeds_back_as_many_as_are_over() {
        let mut q: Vec<Lifecycle> = (0..5).map(|_| added(true)).collect();
        let five = Slots {
            downloads: 0,
            seeds: 5,
        };
        assert_eq!(turn(&mut q, five, t0()).len(), 5);
        for t in &mut q[..4] {
            assert_eq!(check_done(t, true), [Action::StartRun]);
        }
        // The last is still checking: it holds a seed slot but has no run to stop.
        let two = Slots {
            downloads: 0,
            seeds: 2,
        };
        let turned = turn(&mut q, two, t0());
        assert_eq!(
            turned,
            [
                (3, Action::BeginStop),
                (3, Action::SaveRecord),
                (2, Action::BeginStop),
                (2, Action::SaveRecord),
                (1, Action::BeginStop),
                (1, Action::SaveRecord)
            ]
        );
        assert_eq!(
            names(&q),
            [
                "seeding",
                "queued_seed",
                "queued_seed",
                "queued_seed",
                "checking"
            ]
        );
        // Within its slots now: nothing more goes back.
        assert_eq!(turn(&mut q, two, t0()), []);
    }

    #[test]
    fn a_new_file_selection_moves_a_torrent_between_seed_and_download_slots() {
        let mut q = vec![added(false)];
        turn(&mut q, TWO, t0());
        check_done(&mut q[0], true);
        assert_eq!(q[0].name(), "seeding");
        // Running: the run reports it (it wants more now), and so does the core.
        assert_eq!(q[0].on_selection_changed(true), [Action::SaveRecord]);
        assert!(q[0].complete(), "a running torrent's run decides");
        assert_eq!(q[0].on_incomplete(), [Action::SaveRecord]);
        assert_eq!(q[0].name(), "downloading");
        assert_eq!(q[0].on_completed(), [Action::SaveRecord]);
        assert_eq!(q[0].name(), "seeding");
        // Not running: what its known pieces cover decides.
        q[0].on_pause_requested();
        assert_eq!(q[0].on_selection_changed(false), [Action::SaveRecord]);
        assert_eq!((q[0].name(), q[0].complete()), ("paused", false));
    }

    #[test]
    fn zero_slots_start_nothing_and_a_paused_torrent_never_queues() {
        let mut q = vec![added(false), Lifecycle::new(true, false)];
        assert_eq!(q[1].on_added(true, None), []);
        let none = Slots {
            downloads: 0,
            seeds: 0,
        };
        assert_eq!(turn(&mut q, none, t0()), []);
        assert_eq!(turn(&mut q[1..], TWO, t0()), []);
        assert_eq!(names(&q), ["queued", "paused"]);
    }

    #[test]
    fn pausing_while_checking_ignores_that_checks_result_and_resuming_checks_again() {
        let mut q = vec![added(false)];
        assert_eq!(turn(&mut q, TWO, t0()), [(0, start_check(1))]);
        let t = &mut q[0];
        assert_eq!(t.on_pause_requested(), [Action::SaveRecord]);
        assert_eq!(t.name(), "paused");
        // The abandoned check ends: nothing starts.
        assert_eq!(t.on_checked(1, Ok(true), t0()), []);
        assert_eq!((t.name(), t.complete()), ("paused", false));
        assert_eq!(t.on_resume_requested(), [Action::SaveRecord]);
        assert_eq!(turn(&mut q, TWO, t0()), [(0, start_check(2))]);
        // The first check's late result is not the second's.
        assert_eq!(q[0].on_checked(1, Ok(true), t0()), []);
        assert_eq!(q[0].on_checked(2, Ok(false), t0()), [Action::StartRun]);
        assert_eq!(q[0].name(), "downloading");
    }

    #[test]
    fn pausing_a_running_torrent_stops_its_run_and_it_restarts_only_after_the_run_ended() {
        let mut q = vec![added(false)];
        turn(&mut q, TWO, t0());
        check_done(&mut q[0], false);
        assert_eq!(
            q[0].on_pause_requested(),
            [Action::BeginStop, Action::SaveRecord]
        );
        // Paused twice: nothing more to stop.
        assert_eq!(q[0].on_pause_requested(), []);
        q[0].on_resume_requested();
        assert_eq!(q[0].name(), "queued");
        assert_eq!(turn(&mut q, TWO, t0()), [], "its last run has not ended");
        q[0].on_run_ended();
        assert_eq!(turn(&mut q, TWO, t0()), [(0, start_check(2))]);
    }

    #[test]
    fn only_seeding_paused_finished_stopped_and_unretried_errors_are_settled() {
        let mut q = vec![added(false), added(true)];
        assert!(!q[0].settled(), "queued");
        turn(&mut q, TWO, t0());
        assert!(!q[0].settled(), "checking");
        check_done(&mut q[0], false);
        check_done(&mut q[1], true);
        assert_eq!(names(&q), ["downloading", "seeding"]);
        assert!(!q[0].settled(), "a download changes by itself");
        assert!(q[1].settled(), "seeding");
        q[1].on_pause_requested();
        assert!(!q[1].settled(), "paused, its run still stopping");
        q[1].on_run_ended();
        assert!(q[1].settled(), "paused");
        // A storage error retries by the clock.
        q[0].on_failed("disk full".into(), t0());
        assert!(!q[0].settled(), "an error with a retry due");
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn space_is_low_below_the_minimum_plus_what_it_still_writes_at_most_the_headroom() {
        // 100 MiB to keep free, 10 MiB left to write: 110 MiB free is enough, one byte less is not.
        assert!(!space_is_low(110 * MIB, 10 * MIB, 100 * MIB));
        assert!(space_is_low(110 * MIB - 1, 10 * MIB, 100 * MIB));
        // A big torrent needs only the headroom beyond the minimum, not all it still writes.
        let headroom = LOW_SPACE_HEADROOM_BYTES;
        assert!(!space_is_low(100 * MIB + headroom, 50_000 * MIB, 100 * MIB));
        assert!(space_is_low(
            100 * MIB + headroom - 1,
            50_000 * MIB,
            100 * MIB
        ));
        // Off, or nothing left to write: never low.
        assert!(!space_is_low(0, 10 * MIB, 0));
        assert!(!space_is_low(0, 0, 100 * MIB));
    }

    #[test]
    fn low_space_stops_a_download_frees_its_slot_and_it_queues_again_when_space_returns() {
        let mut q = vec![added(false), added(false), added(false)];
        let one = Slots {
            downloads: 1,
            seeds: 1,
        };
        assert_eq!(turn(&mut q, one, t0()), [(0, start_check(1))]);
        check_done(&mut q[0], false);
        assert_eq!(names(&q), ["downloading", "queued", "queued"]);
        // Enough space: nothing happens.
        assert_eq!(q[0].on_space_measured(500 * MIB, 10 * MIB, 100 * MIB), []);
        // Too little: the run stops, nothing is an error, and the next one takes the slot.
        assert_eq!(
            q[0].on_space_measured(105 * MIB, 10 * MIB, 100 * MIB),
            [Action::BeginStop, Action::SaveRecord]
        );
        assert_eq!(
            *q[0].phase(),
            Phase::LowSpace {
                free_bytes: 105 * MIB,
                needed_bytes: 10 * MIB
            }
        );
        assert_eq!(q[0].name(), "low-space");
        assert!(!q[0].is_active());
        q[0].on_run_ended();
        // A queued torrent on the same file system pauses too, without starting.
        assert_eq!(
            q[1].on_space_measured(105 * MIB, 10 * MIB, 100 * MIB),
            [Action::SaveRecord]
        );
        assert_eq!(turn(&mut q, one, t0()), [(2, start_check(1))]);
        // Still low: the figures follow, it stays; resuming it asks nothing of a low-space one.
        assert_eq!(q[0].on_space_measured(104 * MIB, 9 * MIB, 100 * MIB), []);
        assert_eq!(
            *q[0].phase(),
            Phase::LowSpace {
                free_bytes: 104 * MIB,
                needed_bytes: 9 * MIB
            }
        );
        assert_eq!(q[0].on_resume_requested(), []);
        assert_eq!(q[0].name(), "low-space");
        // Space back: queued again, and it starts once a slot is free.
        assert_eq!(q[0].on_space_measured(300 * MIB, 9 * MIB, 100 * MIB), []);
        assert_eq!(names(&q), ["queued", "low-space", "checking"]);
        check_done(&mut q[2], true);
        assert_eq!(turn(&mut q, one, t0()), [(0, start_check(2))]);
        // The guard turned off (0) lets the other one go too.
        assert_eq!(q[1].on_space_measured(0, 9 * MIB, 0), []);
        assert_eq!(q[1].name(), "queued");
    }

    #[test]
    fn low_space_leaves_seeds_paused_checking_and_errors_alone_and_a_pause_wins() {
        let mut seed = added(true);
        let mut q = vec![seed.clone()];
        turn(&mut q, TWO, t0());
        check_done(&mut q[0], true);
        assert_eq!(q[0].on_space_measured(0, 0, 100 * MIB), []);
        assert_eq!(q[0].name(), "seeding");
        seed.on_pause_requested();
        assert_eq!(seed.on_space_measured(0, 10 * MIB, 100 * MIB), []);
        assert_eq!(seed.name(), "paused");
        let mut q = vec![added(false)];
        turn(&mut q, TWO, t0());
        assert_eq!(q[0].on_space_measured(0, 10 * MIB, 100 * MIB), []);
        assert_eq!(q[0].name(), "checking");
        check_done(&mut q[0], false);
        q[0].on_space_measured(0, 10 * MIB, 100 * MIB);
        q[0].on_run_ended();
        // Paused while low on space: paused, and space coming back does not start it.
        assert_eq!(q[0].on_pause_requested(), [Action::SaveRecord]);
        assert_eq!(q[0].on_space_measured(500 * MIB, 10 * MIB, 100 * MIB), []);
        assert_eq!(q[0].name(), "paused");
        // Shutdown leaves a low-space torrent saying so.
        let mut low = added(false);
        low.on_space_measured(0, 10 * MIB, 100 * MIB);
        assert_eq!(low.on_shutdown(), []);
        assert_eq!(low.name(), "low-space");
    }

    #[test]
    fn removing_a_stopping_torrent_ends_its_fetch_or_run_once() {
        let mut t = added(false);
        check_done(&mut t, false); // not checking: ignored
        let mut q = vec![t];
        turn(&mut q, TWO, t0());
        check_done(&mut q[0], false);
        assert_eq!(q[0].on_removed(), [Action::BeginStop, Action::SaveRecord]);
        // Already stopping (paused): removing it again stops nothing twice.
        assert_eq!(q[0].on_removed(), [Action::SaveRecord]);
        // A magnet link fetching its metadata: the fetch ends.
        let mut magnet = Lifecycle::new(false, false);
        assert_eq!(magnet.on_added(false, None), [Action::StartFetch]);
        assert_eq!(magnet.name(), "metadata");
        assert_eq!(magnet.on_removed(), [Action::StopFetch, Action::SaveRecord]);
    }

    #[test]
    fn storage_errors_back_off_a_minute_doubling_and_sighup_retries_at_once() {
        let now = t0();
        let mut q = vec![added(false)];
        for (n, wait_mins) in [(1, 1), (2, 2), (3, 4)] {
            turn(&mut q, TWO, now);
            check_done(&mut q[0], false);
            assert_eq!(
                q[0].on_failed("disk full".into(), now),
                [Action::BeginStop, Action::SaveRecord],
                "failure {n}"
            );
            q[0].on_run_ended();
            assert_eq!(q[0].name(), "error");
            let due = now + Duration::from_secs(60 * wait_mins);
            assert_eq!(q[0].retry_at(), Some(due));
            assert_eq!(turn(&mut q, TWO, due - Duration::from_secs(1)), []);
            assert_eq!(q[0].name(), "error");
            // At the due time it is queued and starts in the same turn.
            assert_eq!(turn(&mut q, TWO, due).len(), 1);
            assert_eq!(q[0].name(), "checking");
        }
        // A check that cannot open the files counts as a failure too; SIGHUP retries it now.
        let check = q[0].checks;
        assert_eq!(q[0].on_checked(check, Err("EACCES".into()), now), []);
        assert_eq!(q[0].retry_after(), Duration::from_secs(8 * 60));
        q[0].on_retry_due();
        assert_eq!((q[0].name(), q[0].retry_at()), ("queued", None));
        // Completion resets the back-off.
        turn(&mut q, TWO, now);
        check_done(&mut q[0], false);
        q[0].on_completed();
        q[0].on_failed("EIO".into(), now);
        assert_eq!(q[0].retry_after(), Duration::from_secs(60));
    }

    #[test]
    fn a_paused_torrent_in_error_is_not_retried_until_resumed() {
        let now = t0();
        let mut q = vec![added(false)];
        turn(&mut q, TWO, now);
        check_done(&mut q[0], false);
        q[0].on_failed("disk full".into(), now);
        q[0].on_run_ended();
        q[0].on_pause_requested();
        assert_eq!(turn(&mut q, TWO, now + STORAGE_RETRY_MAX), []);
        assert_eq!(q[0].name(), "paused");
        q[0].on_resume_requested();
        assert_eq!(turn(&mut q, TWO, now).len(), 1);
    }

    #[test]
    fn a_seed_over_its_limit_finishes_and_raised_limits_queue_it_again() {
        let mut q = vec![added(true)];
        turn(&mut q, TWO, t0());
        check_done(&mut q[0], true);
        assert_eq!(q[0].name(), "seeding");
        assert_eq!(
            turn_reached(&mut q, &[true], TWO, t0()),
            [(0, Action::BeginStop), (0, Action::SaveRecord)]
        );
        assert_eq!(q[0].name(), "finished");
        q[0].on_run_ended();
        // Still over the (new) limits: stays finished.
        q[0].on_limits_changed(true);
        assert_eq!(q[0].name(), "finished");
        q[0].on_limits_changed(false);
        assert_eq!(q[0].name(), "queued_seed");
        assert_eq!(turn(&mut q, TWO, t0()), [(0, start_check(2))]);
    }

    #[test]
    fn a_queued_seed_over_its_limit_finishes_without_starting_unless_a_check_is_owed() {
        let mut q = vec![added(true), added(true)];
        q[1].on_verify_requested();
        let turned = turn_reached(&mut q, &[true, true], TWO, t0());
        assert_eq!(
            turned,
            [(
                1,
                Action::StartCheck {
                    force: true,
                    check: 1
                }
            )]
        );
        assert_eq!(names(&q), ["finished", "checking"]);
        // Resumed while over its limit: finished again at the next turn.
        q[0].on_resume_requested();
        turn_reached(&mut q, &[true, false], TWO, t0());
        assert_eq!(q[0].name(), "finished");
    }

    #[test]
    fn verifying_a_running_torrent_stops_it_and_checks_everything_then_it_runs_again() {
        let mut q = vec![added(false)];
        turn(&mut q, TWO, t0());
        check_done(&mut q[0], false);
        assert_eq!(
            q[0].on_verify_requested(),
            [Action::BeginStop, Action::SaveRecord]
        );
        assert_eq!(q[0].name(), "queued");
        assert!(q[0].force_check());
        q[0].on_run_ended();
        assert_eq!(
            turn(&mut q, TWO, t0()),
            [(
                0,
                Action::StartCheck {
                    force: true,
                    check: 2
                }
            )]
        );
        assert!(!q[0].force_check(), "the check took it");
        // A verify while checking: the check under way stands, the next one hashes.
        assert_eq!(q[0].on_verify_requested(), []);
        assert_eq!(q[0].name(), "checking");
        assert_eq!(check_done(&mut q[0], true), [Action::StartRun]);
        assert_eq!(q[0].name(), "seeding");
    }

    #[test]
    fn a_paused_torrent_verified_stays_paused_with_what_the_check_found() {
        let mut q = vec![Lifecycle::new(true, false)];
        q[0].on_added(true, None);
        assert_eq!(q[0].on_verify_requested(), []);
        assert_eq!(q[0].name(), "queued");
        turn(&mut q, TWO, t0());
        assert_eq!(
            check_done(&mut q[0], true),
            [Action::SaveResume, Action::SaveRecord]
        );
        assert_eq!((q[0].name(), q[0].complete()), ("paused", true));
        assert_eq!(turn(&mut q, TWO, t0()), []);
    }

    #[test]
    fn data_changed_under_a_run_stops_it_and_checks_everything() {
        let mut q = vec![added(true)];
        turn(&mut q, TWO, t0());
        check_done(&mut q[0], true);
        assert_eq!(
            q[0].on_recheck_needed(),
            [Action::BeginStop, Action::SaveRecord]
        );
        q[0].on_run_ended();
        // Over its limit, but the owed check comes first.
        let turned = turn_reached(&mut q, &[true], TWO, t0());
        assert_eq!(
            turned,
            [(
                0,
                Action::StartCheck {
                    force: true,
                    check: 2
                }
            )]
        );
    }

    #[test]
    fn a_move_waits_for_the_run_to_end_then_the_torrent_runs_again_or_stays_paused() {
        let to = PathBuf::from("/new");
        let mut q = vec![added(true)];
        turn(&mut q, TWO, t0());
        check_done(&mut q[0], true);
        assert_eq!(
            q[0].on_move_requested(to.clone()),
            Ok(vec![Action::BeginStop, Action::SaveRecord])
        );
        assert_eq!(q[0].name(), "moving");
        assert_eq!(turn(&mut q, TWO, t0()), [], "its run has not ended");
        // Busy: no second move, no relocation, no check while it moves; a pause waits.
        assert_eq!(
            q[0].on_move_requested("/other".into()),
            Err(Refused::Busy("moving"))
        );
        assert_eq!(q[0].on_relocated(), Err(Refused::Busy("moving")));
        assert_eq!(q[0].on_verify_requested(), []);
        q[0].on_run_ended();
        assert_eq!(
            turn(&mut q, TWO, t0()),
            [(0, Action::StartMove { to: to.clone() })]
        );
        assert_eq!(turn(&mut q, TWO, t0()), [], "started once");
        assert_eq!(q[0].on_pause_requested(), []);
        assert_eq!(q[0].name(), "moving");
        assert_eq!(q[0].on_moved(MoveOutcome::Moved), [Action::SaveRecord]);
        assert_eq!(q[0].name(), "paused");
        // The verify asked for during the move is still owed.
        q[0].on_resume_requested();
        assert_eq!(
            turn(&mut q, TWO, t0()),
            [(
                0,
                Action::StartCheck {
                    force: true,
                    check: 2
                }
            )]
        );
    }

    #[test]
    fn a_move_rolled_back_leaves_it_in_error_and_a_resume_runs_it_where_it_was() {
        let mut q = vec![added(false)];
        q[0].on_move_requested("/new".into()).unwrap();
        turn(&mut q, TWO, t0());
        q[0].on_moved(MoveOutcome::RolledBack("EACCES".into()));
        assert_eq!(*q[0].phase(), Phase::Error("EACCES".into()));
        q[0].on_resume_requested();
        assert_eq!(turn(&mut q, TWO, t0()), [(0, start_check(1))]);
    }

    #[test]
    fn a_split_move_stays_owed_and_a_resume_or_the_next_start_finishes_it() {
        let to = PathBuf::from("/new");
        let mut q = vec![added(false)];
        q[0].on_move_requested(to.clone()).unwrap();
        turn(&mut q, TWO, t0());
        q[0].on_moved(MoveOutcome::Split("EIO".into()));
        assert_eq!(q[0].name(), "error");
        assert_eq!(turn(&mut q, TWO, t0()), [], "never checked half moved");
        q[0].on_resume_requested();
        assert_eq!(
            turn(&mut q, TWO, t0()),
            [(0, Action::StartMove { to: to.clone() })]
        );
        // The next start of the daemon, paused or not: the move is finished first.
        let mut restarted = vec![Lifecycle::new(true, false)];
        assert_eq!(restarted[0].on_added(true, Some(to.clone())), []);
        assert_eq!(restarted[0].name(), "moving");
        assert_eq!(
            turn(&mut restarted, TWO, t0()),
            [(0, Action::StartMove { to })]
        );
        restarted[0].on_moved(MoveOutcome::Moved);
        assert_eq!(restarted[0].name(), "paused");
    }

    #[test]
    fn a_rename_stops_a_run_and_its_files_are_free_once_the_run_ended_then_it_runs_again() {
        let mut q = vec![added(true)];
        turn(&mut q, TWO, t0());
        assert!(q[0].files_in_use(), "checking");
        check_done(&mut q[0], true);
        assert!(q[0].files_in_use(), "running");
        assert_eq!(
            q[0].on_rename_requested(),
            Ok(vec![Action::BeginStop, Action::SaveRecord])
        );
        assert_eq!(q[0].name(), "queued_seed");
        assert!(q[0].files_in_use(), "its run has not ended");
        assert_eq!(turn(&mut q, TWO, t0()), [], "nor does it start again");
        // A second rename before the run ended: nothing more to stop.
        assert_eq!(q[0].on_rename_requested(), Ok(vec![]));
        q[0].on_run_ended();
        assert!(!q[0].files_in_use());
        // Resume data follows the rename: no full check is owed.
        assert_eq!(turn(&mut q, TWO, t0()), [(0, start_check(2))]);
        assert_eq!(check_done(&mut q[0], true), [Action::StartRun]);
    }

    #[test]
    fn a_rename_leaves_a_torrent_that_does_not_run_as_it_is_and_waits_for_checks_and_moves() {
        // Paused, queued or finished: renamed at once, phase unchanged.
        let mut paused = Lifecycle::new(true, true);
        paused.on_added(true, None);
        assert_eq!(paused.on_rename_requested(), Ok(vec![]));
        assert_eq!((paused.name(), paused.files_in_use()), ("paused", false));
        let mut q = vec![added(true)];
        assert_eq!(q[0].on_rename_requested(), Ok(vec![]));
        turn_reached(&mut q, &[true], TWO, t0());
        assert_eq!(q[0].name(), "finished");
        assert_eq!(q[0].on_rename_requested(), Ok(vec![]));
        assert_eq!(q[0].name(), "finished");
        // Checking or moving: refused, phase unchanged.
        let mut q = vec![added(false)];
        turn(&mut q, TWO, t0());
        assert_eq!(q[0].on_rename_requested(), Err(Refused::Busy("checking")));
        assert_eq!(q[0].name(), "checking");
        q[0].on_pause_requested();
        q[0].on_move_requested("/new".into()).unwrap();
        assert_eq!(q[0].on_rename_requested(), Err(Refused::Busy("moving")));
        turn(&mut q, TWO, t0());
        assert!(q[0].files_in_use(), "the move has started");
        // A move split half way: its files are in two places until it is finished.
        q[0].on_moved(MoveOutcome::Split("EIO".into()));
        assert_eq!(q[0].name(), "error");
        assert!(!q[0].files_in_use());
        assert_eq!(q[0].on_rename_requested(), Err(Refused::Busy("moving")));
    }

    #[test]
    fn relocating_checks_everything_where_it_is_told_to_look() {
        let mut q = vec![added(true)];
        turn(&mut q, TWO, t0());
        check_done(&mut q[0], true);
        assert_eq!(
            q[0].on_relocated(),
            Ok(vec![Action::BeginStop, Action::SaveRecord])
        );
        assert_eq!(q[0].on_relocated(), Ok(vec![Action::SaveRecord]));
        q[0].on_run_ended();
        turn(&mut q, TWO, t0());
        assert_eq!(q[0].name(), "checking");
        assert_eq!(q[0].on_relocated(), Err(Refused::Busy("checking")));
    }

    #[test]
    fn a_magnet_link_fetches_its_metadata_then_queues_unless_paused_meanwhile() {
        let mut t = Lifecycle::new(false, false);
        assert_eq!(t.on_added(false, None), [Action::StartFetch]);
        assert_eq!(t.on_peers_changed(), [Action::StartFetch]);
        assert_eq!(t.on_metadata(Ok(())), []);
        assert_eq!(t.name(), "queued");
        assert_eq!(t.on_metadata(Err("late".into())), [], "an earlier fetch's");
        assert_eq!(t.name(), "queued");

        let mut paused = Lifecycle::new(false, false);
        paused.on_added(false, None);
        assert_eq!(
            paused.on_pause_requested(),
            [Action::StopFetch, Action::SaveRecord]
        );
        paused.on_metadata(Ok(()));
        assert_eq!(paused.name(), "paused");

        let mut bad = Lifecycle::new(false, false);
        bad.on_added(false, None);
        bad.on_metadata(Err("not a torrent".into()));
        assert_eq!(*bad.phase(), Phase::Error("not a torrent".into()));
        // Not retried by the back-off: it has no metadata.
        bad.on_retry_due();
        assert_eq!(bad.name(), "error");
    }

    #[test]
    fn shutdown_stops_what_runs_and_leaves_paused_finished_and_errors_saying_so() {
        let mut q = vec![
            added(false),
            added(false),
            Lifecycle::new(false, false),
            Lifecycle::unreadable("no such file".into(), false),
        ];
        q[2].on_added(false, None);
        turn(&mut q[..1], TWO, t0());
        check_done(&mut q[0], false);
        let actions: Vec<Vec<Action>> = q.iter_mut().map(Lifecycle::on_shutdown).collect();
        assert_eq!(
            actions,
            [
                vec![Action::BeginStop, Action::SaveRecord],
                vec![Action::SaveRecord],
                vec![Action::StopFetch, Action::SaveRecord],
                vec![]
            ]
        );
        assert_eq!(names(&q), ["stopped", "stopped", "stopped", "error"]);
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
    fn queue_moves_keep_the_moved_torrents_in_their_order() {
        let q = || vec!['a', 'b', 'c', 'd', 'e'];
        let s = |v: Vec<char>| v.into_iter().collect::<String>();
        assert_eq!(s(moved(q(), &[3, 1], QueueMove::Top)), "bdace");
        assert_eq!(s(moved(q(), &[3, 1], QueueMove::Bottom)), "acebd");
        assert_eq!(s(moved(q(), &[3, 1], QueueMove::Up)), "badce");
        assert_eq!(s(moved(q(), &[3, 1], QueueMove::Down)), "acbed");
        assert_eq!(s(moved(q(), &[3, 1], QueueMove::To(1))), "abdce");
        assert_eq!(s(moved(q(), &[0], QueueMove::To(99))), "bcdea");
        // At the edge already, or next to each other: nothing jumps over a moved one.
        assert_eq!(s(moved(q(), &[0, 1], QueueMove::Up)), "abcde");
        assert_eq!(s(moved(q(), &[3, 4], QueueMove::Down)), "abcde");
        assert_eq!(s(moved(q(), &[], QueueMove::Top)), "abcde");
    }
}
