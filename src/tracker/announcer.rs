//! Announcing for every torrent of the process: when to announce, with which event, to which
//! tracker.
//!
//! [`Schedule`] makes every timing decision of one torrent (next announce, event, back-off) as a
//! pure function of `Instant` arguments. An `Announcer` holds one torrent's trackers, schedule,
//! UDP connection ids and `tracker id`, and publishes the swarm's size in a [`SwarmStats`].
//! [`AnnouncePool`] runs them all on [`ANNOUNCE_THREADS`] threads named `announce N`, which sleep
//! until the earliest due announce or scrape of any torrent (or a command) and block only in one
//! HTTP or UDP exchange at a time, each bounded by the configured timeout. Announce errors are
//! logged with `warn!` and retried after a back-off, scrape errors with `debug!`; nothing a tracker
//! sends can panic a thread.

use crate::peer::mse::Encryption;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use log::{debug, info, log, warn};

use super::udp::UdpClient;
use super::{
    AnnounceEvent, AnnounceFailure, AnnounceRequest, AnnounceResponse, OurAddrs, SwarmStats, Tiers,
    TrackerError, TrackerPeers, http, udp,
};

/// The first wait after a round in which no tracker answered; it doubles with each failed round.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(15);
/// The longest wait between failed rounds.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30 * 60);
/// The `min interval` assumed when a tracker gives none: the earliest re-announce on
/// [`AnnouncerCommand::NeedPeers`].
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// The shortest `interval` and `min interval` we obey: a tracker saying 0 must not make us spin.
pub const INTERVAL_FLOOR: Duration = Duration::from_secs(5);
/// The longest `interval` and `min interval` we obey; longer ones are shortened to this.
pub const INTERVAL_CEILING: Duration = Duration::from_secs(2 * 60 * 60);
/// The shortest time between two scrapes: a scrape follows a successful announce only when the
/// last one is older than this.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Transfer totals for an announce, read from the torrent when the announce is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnnounceStats {
    /// Payload bytes uploaded this session.
    pub uploaded: u64,
    /// Payload bytes downloaded this session.
    pub downloaded: u64,
    /// Payload bytes still missing.
    pub left: u64,
}

/// Orders for one torrent's announcer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnouncerCommand {
    /// We are short of peers: announce again as soon as `min interval` allows.
    NeedPeers,
    /// The download finished: send `completed` (once per session).
    Completed,
    /// Send `stopped` and exit.
    Stop,
}

/// The announcer's fixed settings.
#[derive(Clone, Debug)]
pub struct AnnouncerConfig {
    /// The torrent's name, for the log (a tracker's warnings and errors name their torrent).
    pub name: String,
    /// The torrent's info hash.
    pub info_hash: [u8; 20],
    /// Our peer id.
    pub peer_id: [u8; 20],
    /// The port we accept peers on.
    pub port: u16,
    /// Our listen address when it is a specific one: UDP announces are sent from it (the
    /// tracker lists the datagram's source). HTTP announces go from wherever the OS picks.
    pub bind: Option<IpAddr>,
    /// Peers to ask for in each announce (`stopped` asks for none).
    pub numwant: u32,
    /// Bound on each regular announce and each scrape (HTTP: connect, and the exchange after
    /// it; UDP: the whole exchange, retransmissions included).
    pub timeout: Duration,
    /// Bound on the `stopped` announce at shutdown.
    pub stop_timeout: Duration,
    /// The UDP retransmission base: a request is sent again after `base * 2^n` (BEP 15 says 15 s).
    pub udp_retransmit_base: Duration,
    /// Our encryption mode, for the announce's `supportcrypto`/`requirecrypto`.
    pub encryption: Encryption,
    /// The shortest time between scrapes ([`SCRAPE_INTERVAL`]); `None` never scrapes.
    pub scrape_interval: Option<Duration>,
    /// Our addresses told to HTTP trackers (BEP 7).
    pub addrs: OurAddrs,
}

/// Whether `completed` has been asked for and sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CompletedState {
    NotAsked,
    Pending,
    Sent,
}

/// When the next announce is due and which event it carries. Pure: time comes in as arguments.
///
/// A session starts with `started`, due at once. After a tracker answers, the next announce is due
/// after its `interval`; [`Schedule::on_need_peers`] brings it forward, but not before `min
/// interval` (default [`DEFAULT_MIN_INTERVAL`]) since the last answer. `completed` goes out once,
/// at once (after `started` has been acknowledged). A round in which no tracker answered is retried
/// after [`BACKOFF_INITIAL`], doubling up to [`BACKOFF_MAX`]; a back-off is never cut short.
#[derive(Clone, Debug)]
pub struct Schedule {
    created: Instant,
    last_answer: Option<Instant>,
    interval: Duration,
    min_interval: Duration,
    started_acked: bool,
    completed: CompletedState,
    need_peers: bool,
    failed_rounds: u32,
    retry_at: Option<Instant>,
}

impl Schedule {
    /// A new session: `started` is due at `now`.
    pub fn new(now: Instant) -> Self {
        Schedule {
            created: now,
            last_answer: None,
            interval: INTERVAL_CEILING,
            min_interval: DEFAULT_MIN_INTERVAL,
            started_acked: false,
            completed: CompletedState::NotAsked,
            need_peers: false,
            failed_rounds: 0,
            retry_at: None,
        }
    }

    /// The event the next announce carries: `started` until a tracker has acknowledged one, then
    /// `completed` if asked for and not yet sent, else none.
    pub fn event(&self) -> Option<AnnounceEvent> {
        if !self.started_acked {
            Some(AnnounceEvent::Started)
        } else if self.completed == CompletedState::Pending {
            Some(AnnounceEvent::Completed)
        } else {
            None
        }
    }

    /// When the next announce is due (possibly in the past: due now).
    pub fn due_at(&self) -> Instant {
        if let Some(retry_at) = self.retry_at {
            return retry_at;
        }
        let Some(last) = self.last_answer else {
            return self.created;
        };
        if self.completed == CompletedState::Pending {
            return last;
        }
        let regular = last + self.interval;
        if self.need_peers {
            regular.min(last + self.min_interval)
        } else {
            regular
        }
    }

    /// Whether an announce is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.due_at()
    }

    /// Whether any tracker has answered this session (so `stopped` is worth sending).
    pub fn has_announced(&self) -> bool {
        self.last_answer.is_some()
    }

    /// How many rounds in a row no tracker answered.
    pub fn failed_rounds(&self) -> u32 {
        self.failed_rounds
    }

    /// The torrent is short of peers: announce as soon as `min interval` allows.
    pub fn on_need_peers(&mut self) {
        self.need_peers = true;
    }

    /// The download finished: send `completed`, unless it was already asked for.
    pub fn on_completed(&mut self) {
        if self.completed == CompletedState::NotAsked {
            self.completed = CompletedState::Pending;
        }
    }

    /// A tracker answered at `now` an announce that carried `sent`, with its `interval` and `min
    /// interval` (both clamped to [`INTERVAL_FLOOR`]..=[`INTERVAL_CEILING`]).
    pub fn on_announced(
        &mut self,
        now: Instant,
        sent: Option<AnnounceEvent>,
        interval: Duration,
        min_interval: Option<Duration>,
    ) {
        match sent {
            Some(AnnounceEvent::Started) => self.started_acked = true,
            Some(AnnounceEvent::Completed) => self.completed = CompletedState::Sent,
            Some(AnnounceEvent::Stopped) | None => {}
        }
        self.last_answer = Some(now);
        self.interval = interval.clamp(INTERVAL_FLOOR, INTERVAL_CEILING);
        self.min_interval = min_interval
            .unwrap_or(DEFAULT_MIN_INTERVAL)
            .clamp(INTERVAL_FLOOR, INTERVAL_CEILING);
        self.need_peers = false;
        self.failed_rounds = 0;
        self.retry_at = None;
    }

    /// No tracker answered the round that ended at `now`. Returns the back-off before the next try.
    pub fn on_round_failed(&mut self, now: Instant) -> Duration {
        self.failed_rounds = self.failed_rounds.saturating_add(1);
        let backoff =
            crate::backoff::doubling(BACKOFF_INITIAL, self.failed_rounds - 1, BACKOFF_MAX);
        self.retry_at = Some(now + backoff);
        backoff
    }
}

/// How many announce threads the process runs ([`AnnouncePool`]): the most announces, scrapes and
/// `stopped` announces in flight at once, for all torrents together.
pub const ANNOUNCE_THREADS: usize = 8;

/// The process's announce threads ("announce N") and the schedule of every registered torrent's
/// next announce or scrape, ordered by time. Owned by the engine; torrents hold [`Registration`]s.
///
/// An idle torrent costs no thread and no wake-up: a thread sleeps until the earliest time in the
/// schedule (or a command), takes that torrent's announcer out, runs what is due (one announce
/// round, or one scrape, or the commands queued), and puts it back at its next due time. So at most
/// [`ANNOUNCE_THREADS`] exchanges with trackers are in flight, and nothing is polled.
pub struct AnnouncePool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Every thread holds a sender: disconnects when the last one has ended.
    ended: Receiver<()>,
}

/// A pool thread sleeps this much past the next due time, so that announcers due close together
/// (a retry round of thousands of torrents, spread over the seconds their first announces took)
/// run after one wake-up, not one each: at most this late, never early.
const COALESCE: Duration = Duration::from_millis(100);

/// How long [`AnnouncePool::stop`] waits for threads still in an exchange with a tracker.
/// Their torrents have already waited their stop budget for them (`announce.stop_timeout_secs`),
/// so a thread still busy then is left to end by itself, within its own timeout.
const POOL_STOP_WAIT: Duration = Duration::from_millis(200);

/// The schedule, shared by the pool's threads and the torrents' registrations.
struct Shared {
    state: Mutex<PoolState>,
    /// Signalled when the schedule's first entry may have moved earlier, or at close.
    changed: Condvar,
}

#[derive(Default)]
struct PoolState {
    closed: bool,
    next_id: u64,
    /// `(due, id)` of every announcer not in a thread's hands, earliest first.
    queue: BTreeSet<(Instant, u64)>,
    /// The due time a thread sleeps until, if one does: the others sleep until woken, so one
    /// due announcer wakes one thread, not all of them.
    timer: Option<Instant>,
    slots: HashMap<u64, Slot>,
}

/// One registered torrent's announcer.
struct Slot {
    /// `None` while a pool thread works on it.
    announcer: Option<Box<Announcer>>,
    /// Its entry in `queue` while idle.
    due: Option<Instant>,
    /// A command arrived while a thread had it: look again at once.
    woken: bool,
}

impl PoolState {
    /// Moves an idle announcer's entry to `at` (earlier only); false if it is not idle.
    fn bring_forward(&mut self, id: u64, at: Instant) -> bool {
        let Some(slot) = self.slots.get_mut(&id) else {
            return false;
        };
        match slot.due {
            Some(due) if slot.announcer.is_some() => {
                if at < due {
                    self.queue.remove(&(due, id));
                    self.queue.insert((at, id));
                    slot.due = Some(at);
                }
                true
            }
            _ => {
                slot.woken = true;
                false
            }
        }
    }
}

impl AnnouncePool {
    /// Starts `threads` (at least one) announce threads.
    ///
    /// # Errors
    /// When a thread cannot be spawned (those already started are stopped).
    pub fn start(threads: usize) -> std::io::Result<AnnouncePool> {
        let (ended_tx, ended) = crossbeam_channel::bounded::<()>(0);
        let mut pool = AnnouncePool {
            shared: Arc::new(Shared {
                state: Mutex::new(PoolState::default()),
                changed: Condvar::new(),
            }),
            threads: Vec::new(),
            ended,
        };
        for i in 0..threads.max(1) {
            let shared = Arc::clone(&pool.shared);
            let ended_tx = ended_tx.clone();
            let spawned = thread::Builder::new()
                .name(format!("announce {i}"))
                .spawn(move || {
                    crate::profile::run_as(crate::profile::Role::Announcer, || work(&shared));
                    drop(ended_tx);
                });
            match spawned {
                Ok(thread) => pool.threads.push(thread),
                Err(e) => {
                    pool.stop();
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// A handle torrents register with.
    pub fn handle(&self) -> AnnouncePoolHandle {
        AnnouncePoolHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops the threads: idle ones at once, joined; one still in an exchange with a tracker is
    /// waited for up to 200 ms, then left to end when that exchange times out.
    /// Announcers still registered are dropped without `stopped` (their torrents stop first).
    pub fn stop(&mut self) {
        let mut state = lock(&self.shared);
        state.closed = true;
        // Idle announcers end now, so a registration still waiting sees `done` at once.
        let idle: Vec<Slot> = state
            .slots
            .extract_if(|_, slot| slot.announcer.is_some())
            .map(|(_, slot)| slot)
            .collect();
        state.queue.clear();
        drop(state);
        drop(idle);
        self.shared.changed.notify_all();
        if self.threads.is_empty() {
            return;
        }
        let ended = matches!(
            self.ended.recv_deadline(Instant::now() + POOL_STOP_WAIT),
            Err(RecvTimeoutError::Disconnected)
        );
        if ended {
            for thread in self.threads.drain(..) {
                let _ = thread.join();
            }
        } else {
            debug!("announce threads still in an exchange with a tracker at stop; not waited for");
            self.threads.clear();
        }
    }
}

impl Drop for AnnouncePool {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, PoolState> {
    // A panicking announcer is caught in `work`; the lock is never held across one.
    shared
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A way into the [`AnnouncePool`], cloned into each torrent's parameters.
#[derive(Clone)]
pub struct AnnouncePoolHandle {
    shared: Arc<Shared>,
}

impl AnnouncePoolHandle {
    /// Registers one torrent's trackers; its first announce (`started`) is due at once.
    ///
    /// It announces again every `interval` of the last reply, earlier on
    /// [`AnnouncerCommand::NeedPeers`] but never before `min interval`, `completed` once on
    /// [`AnnouncerCommand::Completed`], and `stopped` (bounded by `stop_timeout`, to the tracker
    /// that last answered, if any did) on [`AnnouncerCommand::Stop`] or when the [`Registration`]
    /// is dropped; then it is gone. Each round tries the trackers tier by tier, in order, until one
    /// answers (`http://`, `https://` and `udp://`; other schemes are skipped, and a tracker that
    /// fails or stays silent for `timeout` gives way to the next); that one moves to the front of
    /// its tier and only it gets our `trackerid` back. Every non-empty peer list goes to `peers_tx`
    /// with `try_send` (and rings `doorbell`, so a parked coordinator takes it): a full channel drops that list, a disconnected one means the torrent is
    /// gone and its announcer ends without `stopped`.
    ///
    /// The seeders and leechers of each reply go to `swarm`; after a successful announce, when
    /// `scrape_interval` allows, the tracker that answered is scraped for all three counts (a
    /// tracker without a scrape URL, or whose scrape fails, keeps the announce's counts). Commands
    /// are looked at between the trackers of a round and before a scrape, so `Stop` waits for at
    /// most one announce or scrape in flight plus the `stopped` one (and for a free pool thread).
    pub fn register(
        &self,
        tiers: Tiers,
        config: AnnouncerConfig,
        stats: Arc<dyn Fn() -> AnnounceStats + Send + Sync>,
        swarm: Arc<SwarmStats>,
        peers_tx: Sender<TrackerPeers>,
        doorbell: Arc<crate::torrent::parking::Doorbell>,
    ) -> Registration {
        let (commands_tx, commands) = crossbeam_channel::unbounded();
        let (done_tx, done) = crossbeam_channel::bounded(0);
        let prefix = crate::hex::encode(&config.info_hash[..4]);
        let now = Instant::now();
        let announcer = Announcer {
            schedule: Schedule::new(now),
            tiers,
            udp: UdpClient::new(config.udp_retransmit_base).bound_to(config.bind),
            key: rand::random(),
            config,
            stats,
            swarm,
            peers_tx,
            doorbell,
            commands,
            current: None,
            tracker_id: None,
            scrape_due: None,
            last_scrape: None,
            prefix,
            _done: done_tx,
        };
        let mut state = lock(&self.shared);
        let id = state.next_id;
        state.next_id += 1;
        state.slots.insert(
            id,
            Slot {
                announcer: Some(Box::new(announcer)),
                due: Some(now),
                woken: false,
            },
        );
        state.queue.insert((now, id));
        drop(state);
        self.shared.changed.notify_one();
        Registration {
            id,
            shared: Arc::clone(&self.shared),
            commands: Some(commands_tx),
            done,
        }
    }
}

/// One torrent's place in the [`AnnouncePool`]: its commands go in here, and
/// [`Registration::wait_until`] waits for its announcer to finish. Dropping it means
/// [`AnnouncerCommand::Stop`].
pub struct Registration {
    id: u64,
    shared: Arc<Shared>,
    commands: Option<Sender<AnnouncerCommand>>,
    /// Disconnects when the announcer is dropped (finished, or the pool stopped).
    done: Receiver<()>,
}

impl Registration {
    /// Hands `command` to the announcer and wakes it.
    pub fn send(&self, command: AnnouncerCommand) {
        if let Some(tx) = &self.commands {
            let _ = tx.send(command);
        }
        self.wake(command == AnnouncerCommand::Stop);
    }

    /// Makes the announcer look at its commands at once. A stop of an idle announcer that has
    /// nothing to tell a tracker ends it here, without waiting for a pool thread.
    fn wake(&self, stopping: bool) {
        let mut state = lock(&self.shared);
        if stopping
            && let Some(slot) = state.slots.get(&self.id)
            && slot.announcer.as_ref().is_some_and(|a| !a.owes_stopped())
        {
            let slot = state.slots.remove(&self.id).expect("looked up above");
            if let Some(due) = slot.due {
                state.queue.remove(&(due, self.id));
            }
            drop(state);
            drop(slot);
            return;
        }
        if state.bring_forward(self.id, Instant::now()) {
            drop(state);
            self.shared.changed.notify_one();
        }
    }

    /// Waits until the announcer has finished (after `Stop`), or `deadline`; true if it has.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        matches!(
            self.done.recv_deadline(deadline),
            Err(RecvTimeoutError::Disconnected)
        )
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // A disconnected command channel is a stop.
        drop(self.commands.take());
        self.wake(true);
    }
}

/// A pool thread: runs whatever announcer is due, sleeps until the next one is.
fn work(shared: &Shared) {
    let mut state = lock(shared);
    loop {
        if state.closed {
            return;
        }
        let now = Instant::now();
        match state.queue.first().copied() {
            Some((due, id)) if due <= now => {
                state.queue.remove(&(due, id));
                // Someone must watch the next one while this thread is busy.
                if state
                    .queue
                    .first()
                    .is_some_and(|&(next, _)| state.timer.is_none_or(|timer| next < timer))
                {
                    shared.changed.notify_one();
                }
                let slot = state
                    .slots
                    .get_mut(&id)
                    .expect("queued announcers have slots");
                slot.due = None;
                slot.woken = false;
                let mut announcer = slot.announcer.take().expect("queued announcers are idle");
                drop(state);
                let next =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| announcer.step()));
                let next = next.unwrap_or_else(|_| {
                    warn!(
                        "announcer {}: panicked; its torrent no longer announces",
                        announcer.prefix
                    );
                    None
                });
                state = lock(shared);
                match next {
                    None => {
                        state.slots.remove(&id);
                        drop(announcer);
                    }
                    Some(at) => {
                        let slot = state
                            .slots
                            .get_mut(&id)
                            .expect("only threads remove busy slots");
                        let at = if slot.woken { Instant::now() } else { at };
                        slot.woken = false;
                        slot.due = Some(at);
                        slot.announcer = Some(announcer);
                        state.queue.insert((at, id));
                    }
                }
            }
            Some((due, _)) if state.timer.is_none_or(|timer| due < timer) => {
                state.timer = Some(due);
                state = shared
                    .changed
                    .wait_timeout(state, due - now + COALESCE)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
                // Another thread may have taken over the timer for an earlier time.
                if state.timer == Some(due) {
                    state.timer = None;
                }
            }
            Some(_) | None => {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
    }
}

/// What the announcer does after handling something.
enum Flow {
    Continue,
    /// Send `stopped`, then end.
    Stop,
    /// The torrent dropped its peer receiver: end at once.
    Gone,
}

struct Announcer {
    schedule: Schedule,
    tiers: Tiers,
    /// The UDP trackers' connection ids, kept across announces.
    udp: UdpClient,
    /// Our BEP 15 `key` for this session.
    key: u32,
    config: AnnouncerConfig,
    stats: Arc<dyn Fn() -> AnnounceStats + Send + Sync>,
    swarm: Arc<SwarmStats>,
    peers_tx: Sender<TrackerPeers>,
    /// Rung after each peer list sent: it resumes a parked coordinator.
    doorbell: Arc<crate::torrent::parking::Doorbell>,
    commands: Receiver<AnnouncerCommand>,
    /// The tracker that answered last.
    current: Option<String>,
    /// The `tracker id` that `current` gave us.
    tracker_id: Option<Vec<u8>>,
    /// When `current` is to be scraped.
    scrape_due: Option<Instant>,
    /// When the last scrape was tried.
    last_scrape: Option<Instant>,
    /// Hex prefix of the info hash, for logs.
    prefix: String,
    /// Dropped with the announcer: its [`Registration`] sees `done` disconnect.
    _done: Sender<()>,
}

impl Announcer {
    /// Runs what is due: the queued commands, then an announce round or a scrape. Returns when
    /// to look again, or `None` when the announcer is finished (after `stopped`, or when its
    /// torrent is gone).
    fn step(&mut self) -> Option<Instant> {
        let flow = match self.drain_commands() {
            Flow::Continue => {
                let now = Instant::now();
                let due = self.schedule.due_at();
                if now >= due {
                    self.announce_round()
                } else if self.scrape_due.is_some_and(|at| at < due && now >= at) {
                    self.scrape()
                } else {
                    Flow::Continue
                }
            }
            flow => flow,
        };
        match flow {
            Flow::Continue => {
                let due = self.schedule.due_at();
                Some(self.scrape_due.map_or(due, |at| at.min(due)))
            }
            Flow::Stop => {
                self.send_stopped();
                None
            }
            Flow::Gone => {
                debug!("announcer {}: torrent gone", self.prefix);
                None
            }
        }
    }

    /// Whether a stop has anything to tell a tracker: a tracker answered this session.
    fn owes_stopped(&self) -> bool {
        self.current.is_some() && self.schedule.has_announced()
    }

    fn apply(&mut self, command: AnnouncerCommand) -> Flow {
        match command {
            AnnouncerCommand::NeedPeers => self.schedule.on_need_peers(),
            AnnouncerCommand::Completed => self.schedule.on_completed(),
            AnnouncerCommand::Stop => return Flow::Stop,
        }
        Flow::Continue
    }

    /// Handles the commands already queued, without waiting.
    fn drain_commands(&mut self) -> Flow {
        loop {
            match self.commands.try_recv() {
                Ok(command) => {
                    if let Flow::Stop = self.apply(command) {
                        return Flow::Stop;
                    }
                }
                Err(TryRecvError::Empty) => return Flow::Continue,
                Err(TryRecvError::Disconnected) => return Flow::Stop,
            }
        }
    }

    fn request(&self, url: &str, event: Option<AnnounceEvent>) -> AnnounceRequest {
        let stats = (self.stats)();
        let tracker_id = if self.current.as_deref() == Some(url) {
            self.tracker_id.clone()
        } else {
            None
        };
        AnnounceRequest {
            info_hash: self.config.info_hash,
            peer_id: self.config.peer_id,
            port: self.config.port,
            uploaded: stats.uploaded,
            downloaded: stats.downloaded,
            left: stats.left,
            event,
            numwant: if event == Some(AnnounceEvent::Stopped) {
                0
            } else {
                self.config.numwant
            },
            tracker_id,
            key: self.key,
            addrs: self.config.addrs,
            encryption: self.config.encryption,
        }
    }

    /// Announces `req` to `url` over HTTP(S) or UDP, bounded by `timeout`.
    fn announce_to(
        &mut self,
        url: &str,
        req: &AnnounceRequest,
        timeout: Duration,
    ) -> Result<AnnounceResponse, TrackerError> {
        if udp::is_supported(url) {
            self.udp.announce(url, req, Instant::now() + timeout)
        } else {
            http::announce(url, req, timeout)
        }
    }

    /// Scrapes the tracker that answered last and publishes its counts.
    fn scrape(&mut self) -> Flow {
        self.scrape_due = None;
        let Some(url) = self.current.clone() else {
            return Flow::Continue;
        };
        self.last_scrape = Some(Instant::now());
        let info_hash = self.config.info_hash;
        let result = if udp::is_supported(&url) {
            self.udp
                .scrape(&url, &info_hash, Instant::now() + self.config.timeout)
        } else {
            http::scrape(&url, &info_hash, self.config.timeout)
        };
        match result {
            Ok(counts) => {
                debug!(
                    "tracker {url}: scrape: {} seeders, {} leechers, {:?} completed",
                    counts.seeders, counts.leechers, counts.completed
                );
                self.swarm.on_scraped(counts);
            }
            Err(err) => debug!("{err} (scrape)"),
        }
        Flow::Continue
    }

    /// One announce round: tier by tier until a tracker answers, or a back-off when none does.
    fn announce_round(&mut self) -> Flow {
        let event = self.schedule.event();
        let urls: Vec<String> = self.tiers.urls().map(str::to_owned).collect();
        let mut errors: Vec<TrackerError> = Vec::new();
        for url in &urls {
            if let Flow::Stop = self.drain_commands() {
                return Flow::Stop;
            }
            if !http::is_supported(url) && !udp::is_supported(url) {
                debug!("tracker {url}: unsupported scheme; skipped");
                continue;
            }
            let req = self.request(url, event);
            match self.announce_to(url, &req, self.config.timeout) {
                Ok(reply) => {
                    self.swarm
                        .on_outcome(url, crate::record::unix_now(), Ok(()));
                    let failed = self.schedule.failed_rounds();
                    if failed > 0 {
                        info!(
                            "torrent {}: tracker {url} answers again, after {failed} failed rounds",
                            self.config.name
                        );
                    }
                    return self.on_reply(url, event, reply);
                }
                Err(err) => {
                    let failure = AnnounceFailure::of(&err);
                    self.swarm
                        .on_outcome(url, crate::record::unix_now(), Err(failure));
                    errors.push(err);
                }
            }
        }
        // The first failed round of a streak is a warning; the next ones, until a tracker
        // answers again, only debug lines: thousands of torrents on one tracker that is down
        // would otherwise log thousands of lines a round (and that was most of the CPU an
        // idle daemon spent on them).
        let (level, later) = if self.schedule.failed_rounds() == 0 {
            (
                log::Level::Warn,
                "; until a tracker answers, further failures are debug lines",
            )
        } else {
            (log::Level::Debug, "")
        };
        let backoff = self.schedule.on_round_failed(Instant::now());
        match errors.split_last() {
            None => debug!(
                "announcer {}: no HTTP or UDP tracker to announce to; next look in {}s",
                self.prefix,
                backoff.as_secs()
            ),
            Some((last, earlier)) => {
                for err in earlier {
                    log!(level, "torrent {}: {err}", self.config.name);
                }
                log!(
                    level,
                    "torrent {}: {last}; retry in {}s{later}",
                    self.config.name,
                    backoff.as_secs()
                );
            }
        }
        Flow::Continue
    }

    fn on_reply(
        &mut self,
        url: &str,
        event: Option<AnnounceEvent>,
        reply: AnnounceResponse,
    ) -> Flow {
        self.tiers.promote(url);
        if self.current.as_deref() != Some(url) {
            self.current = Some(url.to_owned());
            self.tracker_id = None;
        }
        if reply.tracker_id.is_some() {
            self.tracker_id = reply.tracker_id;
        }
        if let Some(warning) = &reply.warning {
            warn!(
                "torrent {}: tracker {url}: warning: {warning}",
                self.config.name
            );
        }
        let now = Instant::now();
        self.schedule
            .on_announced(now, event, reply.interval, reply.min_interval);
        self.swarm.on_announced(reply.complete, reply.incomplete);
        if let Some(every) = self.config.scrape_interval
            && self
                .last_scrape
                .is_none_or(|last| now.saturating_duration_since(last) >= every)
        {
            self.scrape_due = Some(now);
        }
        debug!(
            "tracker {url}: {} peers, {:?} seeders, {:?} leechers; next announce in {}s",
            reply.peers.len(),
            reply.complete,
            reply.incomplete,
            self.schedule
                .due_at()
                .saturating_duration_since(Instant::now())
                .as_secs()
        );
        if reply.peers.is_empty() {
            return Flow::Continue;
        }
        let found = TrackerPeers {
            peers: reply.peers,
            requires_encryption: reply.requires_encryption,
        };
        match self.peers_tx.try_send(found) {
            Ok(()) => {
                self.doorbell.ring();
                Flow::Continue
            }
            Err(TrySendError::Full(found)) => {
                debug!(
                    "tracker {url}: peer channel full; dropped {} peers",
                    found.peers.len()
                );
                Flow::Continue
            }
            Err(TrySendError::Disconnected(_)) => Flow::Gone,
        }
    }

    /// Tells the tracker that last answered that we are leaving, if any did.
    fn send_stopped(&mut self) {
        let Some(url) = self.current.clone() else {
            return;
        };
        if !self.schedule.has_announced() {
            return;
        }
        let deadline = Instant::now() + self.config.stop_timeout;
        // Finished just before the stop (a one-shot download that exits when done): the tracker
        // counts downloads by `completed`, so send it first, within the same budget.
        if self.schedule.event() == Some(AnnounceEvent::Completed) {
            let req = self.request(&url, Some(AnnounceEvent::Completed));
            match self.announce_to(&url, &req, self.config.stop_timeout) {
                Ok(_) => debug!("tracker {url}: completed (before stopping)"),
                Err(err) => warn!(
                    "torrent {}: {err} (sending completed before stopped)",
                    self.config.name
                ),
            }
        }
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
        else {
            warn!(
                "torrent {}: tracker {url}: no time left to send stopped",
                self.config.name
            );
            return;
        };
        let req = self.request(&url, Some(AnnounceEvent::Stopped));
        match self.announce_to(&url, &req, left) {
            Ok(_) => debug!("tracker {url}: stopped"),
            // Many trackers answer `stopped` with an empty or partial body; the request got there.
            Err(err @ TrackerError::Malformed { .. }) => debug!("{err} (after stopped)"),
            Err(err) => warn!("torrent {}: {err} (sending stopped)", self.config.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener};

    use std::sync::atomic::Ordering;

    use super::super::ScrapeCounts;
    use super::super::http::fake::{FakeTracker, ok};
    use super::super::udp::fake::{
        FakeUdpTracker, action as udp_action, well_behaved as udp_well_behaved,
    };
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn answered(s: &mut Schedule, now: Instant, interval_s: u64, min_s: Option<u64>) {
        let sent = s.event();
        s.on_announced(
            now,
            sent,
            Duration::from_secs(interval_s),
            min_s.map(Duration::from_secs),
        );
    }

    #[test]
    fn schedule_starts_with_started_due_at_once() {
        let t0 = Instant::now();
        let s = Schedule::new(t0);
        assert_eq!(s.event(), Some(AnnounceEvent::Started));
        assert_eq!(s.due_at(), t0);
        assert!(s.is_due(t0));
        assert!(!s.has_announced());
    }

    #[test]
    fn schedule_respects_the_interval_after_an_answer() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        answered(&mut s, t0 + SEC, 1800, Some(60));
        assert_eq!(s.event(), None);
        assert!(s.has_announced());
        assert_eq!(s.due_at(), t0 + SEC + 1800 * SEC);
        assert!(!s.is_due(t0 + 1800 * SEC));
        assert!(s.is_due(t0 + 1801 * SEC));
        answered(&mut s, t0 + 1801 * SEC, 900, None);
        assert_eq!(s.due_at(), t0 + 2701 * SEC);
    }

    #[test]
    fn schedule_keeps_started_until_a_tracker_acknowledges_it() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.on_round_failed(t0);
        assert_eq!(s.event(), Some(AnnounceEvent::Started));
        s.on_announced(t0 + 20 * SEC, None, 1800 * SEC, None);
        assert_eq!(s.event(), Some(AnnounceEvent::Started));
        s.on_announced(
            t0 + 40 * SEC,
            Some(AnnounceEvent::Started),
            1800 * SEC,
            None,
        );
        assert_eq!(s.event(), None);
    }

    #[test]
    fn need_peers_is_honoured_only_after_min_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        answered(&mut s, t0, 1800, Some(120));
        s.on_need_peers();
        assert_eq!(s.due_at(), t0 + 120 * SEC);
        assert!(!s.is_due(t0 + 119 * SEC));
        assert!(s.is_due(t0 + 120 * SEC));
        answered(&mut s, t0 + 120 * SEC, 1800, Some(120));
        assert_eq!(s.due_at(), t0 + 1920 * SEC, "the answer satisfies the need");
    }

    #[test]
    fn need_peers_after_min_interval_is_due_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        answered(&mut s, t0, 1800, Some(60));
        s.on_need_peers();
        assert!(s.is_due(t0 + 500 * SEC));
        assert_eq!(s.event(), None);
    }

    #[test]
    fn min_interval_defaults_to_thirty_seconds() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        answered(&mut s, t0, 1800, None);
        s.on_need_peers();
        assert_eq!(s.due_at(), t0 + DEFAULT_MIN_INTERVAL);
        assert_eq!(DEFAULT_MIN_INTERVAL, 30 * SEC);
    }

    #[test]
    fn need_peers_never_delays_a_regular_announce() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        answered(&mut s, t0, 20, Some(600));
        s.on_need_peers();
        assert_eq!(s.due_at(), t0 + 20 * SEC);
    }

    #[test]
    fn completed_is_sent_once_and_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        answered(&mut s, t0, 1800, Some(900));
        s.on_completed();
        assert_eq!(s.event(), Some(AnnounceEvent::Completed));
        assert!(s.is_due(t0 + SEC));
        answered(&mut s, t0 + SEC, 1800, None);
        assert_eq!(s.event(), None);
        s.on_completed();
        assert_eq!(s.event(), None);
        assert_eq!(s.due_at(), t0 + 1801 * SEC);
    }

    #[test]
    fn completed_before_started_is_acknowledged_goes_out_after_started() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        s.on_completed();
        assert_eq!(s.event(), Some(AnnounceEvent::Started));
        answered(&mut s, t0, 1800, None);
        assert_eq!(s.event(), Some(AnnounceEvent::Completed));
        assert!(s.is_due(t0));
    }

    #[test]
    fn completed_is_retried_until_a_tracker_takes_it() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        answered(&mut s, t0, 1800, None);
        s.on_completed();
        assert_eq!(s.on_round_failed(t0 + SEC), 15 * SEC);
        assert_eq!(s.event(), Some(AnnounceEvent::Completed));
        assert_eq!(s.due_at(), t0 + 16 * SEC);
    }

    #[test]
    fn back_off_doubles_from_fifteen_seconds_and_caps_at_thirty_minutes() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        let got: Vec<u64> = (0..12).map(|_| s.on_round_failed(t0).as_secs()).collect();
        assert_eq!(
            got,
            [15, 30, 60, 120, 240, 480, 960, 1800, 1800, 1800, 1800, 1800]
        );
        assert_eq!(s.failed_rounds(), 12);
        for _ in 0..100 {
            assert_eq!(s.on_round_failed(t0), BACKOFF_MAX);
        }
        assert_eq!(s.due_at(), t0 + BACKOFF_MAX);
    }

    #[test]
    fn back_off_is_not_cut_short_by_need_peers_and_ends_with_an_answer() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        answered(&mut s, t0, 1800, Some(30));
        s.on_round_failed(t0 + 1800 * SEC);
        s.on_round_failed(t0 + 1815 * SEC);
        s.on_need_peers();
        assert_eq!(s.due_at(), t0 + 1845 * SEC);
        answered(&mut s, t0 + 1845 * SEC, 1800, Some(30));
        assert_eq!(s.failed_rounds(), 0);
        assert_eq!(s.due_at(), t0 + 3645 * SEC);
        assert_eq!(s.on_round_failed(t0 + 3645 * SEC), 15 * SEC);
    }

    #[test]
    fn intervals_are_clamped_to_the_floor_and_the_ceiling() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        answered(&mut s, t0, 0, Some(0));
        assert_eq!(s.due_at(), t0 + INTERVAL_FLOOR);
        s.on_need_peers();
        assert_eq!(s.due_at(), t0 + INTERVAL_FLOOR);
        s.on_announced(t0, None, Duration::MAX, Some(Duration::MAX));
        assert_eq!(s.due_at(), t0 + INTERVAL_CEILING);
    }

    // Threads, on loopback.

    const PATIENCE: Duration = Duration::from_secs(10);

    fn config() -> AnnouncerConfig {
        AnnouncerConfig {
            name: "test torrent".into(),
            info_hash: [0x5A; 20],
            peer_id: *b"-BT0001-announcertst",
            port: 6881,
            bind: None,
            numwant: 50,
            timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(5),
            udp_retransmit_base: Duration::from_millis(50),
            scrape_interval: None,
            addrs: super::OurAddrs::default(),
            encryption: Encryption::Preferred,
        }
    }

    fn stats() -> Arc<dyn Fn() -> AnnounceStats + Send + Sync> {
        Arc::new(|| AnnounceStats {
            uploaded: 7,
            downloaded: 8,
            left: 9,
        })
    }

    /// Waits until the pool has no announcer left: every one has finished.
    fn join_within(pool: AnnouncePool, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !lock(&pool.shared).slots.is_empty() {
            assert!(
                Instant::now() < deadline,
                "announcer still running after {limit:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn compact_reply(peers: &[u8]) -> Vec<u8> {
        let mut body = format!("d8:intervali1800e5:peers{}:", peers.len()).into_bytes();
        body.extend_from_slice(peers);
        body.push(b'e');
        body
    }

    fn event_of(target: &str) -> Option<&str> {
        target
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("event="))
    }

    fn closed_port_url() -> String {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("http://127.0.0.1:{port}/announce")
    }

    fn closed_udp_url() -> String {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        format!("udp://127.0.0.1:{port}/announce")
    }

    /// Registers an announcer over `tiers` with the test's `stats()` in a pool of its own; gives
    /// the pool, the peers it delivers and its registration.
    fn start_announcer(
        tiers: Tiers,
        config: AnnouncerConfig,
        swarm: Arc<SwarmStats>,
    ) -> (AnnouncePool, Receiver<TrackerPeers>, Registration) {
        let (peers_tx, peers_rx) = crossbeam_channel::unbounded();
        let pool = AnnouncePool::start(1).unwrap();
        let registration =
            pool.handle()
                .register(tiers, config, stats(), swarm, peers_tx, Arc::default());
        (pool, peers_rx, registration)
    }

    #[test]
    fn a_pool_of_three_threads_serves_every_announcer_registered_at_once() {
        const N: usize = 8;
        let tracker = FakeTracker::serve((0..2 * N).map(|_| ok(&compact_reply(&[]))).collect());
        let pool = AnnouncePool::start(3).unwrap();
        let (peers_tx, peers_rx) = crossbeam_channel::unbounded();
        let registrations: Vec<Registration> = (0..N)
            .map(|_| {
                pool.handle().register(
                    Tiers::new(Some(&tracker.url), None),
                    config(),
                    stats(),
                    Arc::default(),
                    peers_tx.clone(),
                    Arc::default(),
                )
            })
            .collect();
        for _ in 0..N {
            assert_eq!(event_of(&tracker.next_request()), Some("started"));
        }
        drop(registrations);
        for _ in 0..N {
            assert_eq!(event_of(&tracker.next_request()), Some("stopped"));
        }
        join_within(pool, PATIENCE);
        tracker.join();
        drop(peers_rx);
    }

    #[test]
    fn announcer_sends_started_completed_and_stopped_and_delivers_peers() {
        let tracker = FakeTracker::serve(vec![
            ok(&compact_reply(&[127, 0, 0, 3, 0x1A, 0xE1])),
            ok(b"d8:intervali1800e5:peers0:10:tracker id3:xyze"),
            ok(b""),
        ]);
        let tiers = Tiers::new(Some(&tracker.url), None);
        let (handle, peers_rx, commands_tx) = start_announcer(tiers, config(), Arc::default());

        let started = tracker.next_request();
        assert_eq!(event_of(&started), Some("started"), "{started}");
        assert!(
            started.contains("&uploaded=7&downloaded=8&left=9&"),
            "{started}"
        );
        assert!(started.contains("&numwant=50"), "{started}");
        assert_eq!(
            peers_rx.recv_timeout(PATIENCE).unwrap().peers,
            vec!["127.0.0.3:6881".parse::<SocketAddr>().unwrap()]
        );

        commands_tx.send(AnnouncerCommand::Completed);
        commands_tx.send(AnnouncerCommand::Completed);
        let completed = tracker.next_request();
        assert_eq!(event_of(&completed), Some("completed"), "{completed}");

        commands_tx.send(AnnouncerCommand::Stop);
        let stopped = tracker.next_request();
        assert_eq!(event_of(&stopped), Some("stopped"), "{stopped}");
        assert!(stopped.contains("&numwant=0"), "{stopped}");
        assert!(stopped.ends_with("&trackerid=xyz"), "{stopped}");
        join_within(handle, PATIENCE);
        tracker.join();
        assert!(peers_rx.try_recv().is_err(), "an empty peer list was sent");
    }

    #[test]
    fn completed_then_stop_at_once_sends_completed_before_stopped() {
        let tracker = FakeTracker::serve(vec![
            ok(&compact_reply(&[127, 0, 0, 3, 0x1A, 0xE1])),
            ok(&compact_reply(&[])),
            ok(b""),
        ]);
        let tiers = Tiers::new(Some(&tracker.url), None);
        let (handle, peers_rx, commands_tx) = start_announcer(tiers, config(), Arc::default());
        assert_eq!(event_of(&tracker.next_request()), Some("started"));
        peers_rx.recv_timeout(PATIENCE).unwrap();
        // Both queued before the announcer looks: it sees them in one drain.
        commands_tx.send(AnnouncerCommand::Completed);
        commands_tx.send(AnnouncerCommand::Stop);
        let completed = tracker.next_request();
        assert_eq!(event_of(&completed), Some("completed"), "{completed}");
        let stopped = tracker.next_request();
        assert_eq!(event_of(&stopped), Some("stopped"), "{stopped}");
        join_within(handle, PATIENCE);
        tracker.join();
    }

    #[test]
    fn announcer_skips_dead_trackers_and_unknown_schemes_until_one_answers() {
        let tracker = FakeTracker::serve(vec![ok(&compact_reply(&[10, 0, 0, 1, 0, 80])), ok(b"")]);
        let tiers = Tiers::new(
            None,
            Some(&[
                vec![closed_udp_url()],
                vec![closed_port_url()],
                vec!["wss://tracker.example/".to_owned(), tracker.url.clone()],
            ]),
        );
        let (handle, peers_rx, commands_tx) = start_announcer(tiers, config(), Arc::default());
        assert_eq!(
            peers_rx.recv_timeout(PATIENCE).unwrap().peers,
            vec!["10.0.0.1:80".parse::<SocketAddr>().unwrap()]
        );
        drop(commands_tx);
        assert_eq!(event_of(&tracker.next_request()), Some("started"));
        assert_eq!(
            event_of(&tracker.next_request()),
            Some("stopped"),
            "a disconnected command channel means stop"
        );
        join_within(handle, PATIENCE);
        tracker.join();
    }

    #[test]
    fn announcer_survives_a_garbage_reply_and_stops_promptly_without_stopped() {
        let tracker = FakeTracker::serve(vec![ok(b"\xff\xfe garbage"), ok(b"")]);
        let tiers = Tiers::new(Some(&tracker.url), None);
        let (handle, peers_rx, commands_tx) = start_announcer(tiers, config(), Arc::default());
        assert_eq!(event_of(&tracker.next_request()), Some("started"));
        // Now backing off for 15 s; Stop must not wait for that.
        commands_tx.send(AnnouncerCommand::Stop);
        join_within(handle, Duration::from_secs(3));
        assert!(peers_rx.try_recv().is_err());
        assert!(
            tracker
                .requests
                .recv_timeout(Duration::from_millis(200))
                .is_err(),
            "stopped was sent although no tracker ever answered"
        );
    }

    #[test]
    fn announcer_exits_quietly_when_the_torrent_is_gone() {
        let tracker = FakeTracker::serve(vec![ok(&compact_reply(&[10, 0, 0, 1, 0, 80]))]);
        let (peers_tx, peers_rx) = crossbeam_channel::bounded(1);
        drop(peers_rx);
        let tiers = Tiers::new(Some(&tracker.url), None);
        let pool = AnnouncePool::start(1).unwrap();
        let registration = pool.handle().register(
            tiers,
            config(),
            stats(),
            Arc::default(),
            peers_tx,
            Arc::default(),
        );
        assert!(registration.wait_until(Instant::now() + PATIENCE));
        join_within(pool, PATIENCE);
        tracker.join();
    }

    #[test]
    fn one_pool_thread_serves_many_torrents_in_order_of_due_time() {
        let tracker = FakeTracker::serve(
            (0..6)
                .map(|i| ok(&compact_reply(&[10, 0, 0, i, 0, 80])))
                .collect(),
        );
        let pool = AnnouncePool::start(1).unwrap();
        let mut torrents = Vec::new();
        for i in 0..3u8 {
            let (peers_tx, peers_rx) = crossbeam_channel::unbounded();
            let mut config = config();
            config.info_hash = [i; 20];
            let tiers = Tiers::new(Some(&tracker.url), None);
            let registration = pool.handle().register(
                tiers,
                config,
                stats(),
                Arc::default(),
                peers_tx,
                Arc::default(),
            );
            torrents.push((registration, peers_rx));
        }
        for (_, peers_rx) in &torrents {
            assert_eq!(peers_rx.recv_timeout(PATIENCE).unwrap().peers.len(), 1);
        }
        for _ in 0..3 {
            assert_eq!(event_of(&tracker.next_request()), Some("started"));
        }
        // Each stop is sent by the one thread; the registrations see their announcers end.
        for (registration, _) in &torrents {
            registration.send(AnnouncerCommand::Stop);
        }
        for _ in 0..3 {
            assert_eq!(event_of(&tracker.next_request()), Some("stopped"));
        }
        for (registration, _) in &torrents {
            assert!(registration.wait_until(Instant::now() + PATIENCE));
        }
        join_within(pool, PATIENCE);
        tracker.join();
    }

    #[test]
    fn a_registration_sees_its_announcer_end_when_the_pool_stops() {
        let tracker = FakeTracker::serve(vec![ok(&compact_reply(&[10, 0, 0, 1, 0, 80]))]);
        let (pool, peers_rx, registration) = start_announcer(
            Tiers::new(Some(&tracker.url), None),
            config(),
            Arc::default(),
        );
        peers_rx.recv_timeout(PATIENCE).unwrap();
        wait_for(
            || {
                lock(&pool.shared)
                    .slots
                    .values()
                    .all(|s| s.announcer.is_some())
            },
            "the announcer back in the schedule",
        );
        assert!(!registration.wait_until(Instant::now() + Duration::from_millis(50)));
        drop(pool);
        assert!(registration.wait_until(Instant::now() + Duration::from_millis(50)));
        tracker.join();
    }

    #[test]
    fn stopping_an_announcer_that_never_got_an_answer_needs_no_pool_thread() {
        // The pool's only thread is held by a tracker that never answers.
        let silent = FakeUdpTracker::serve("127.0.0.1:0", Box::new(|_| vec![])).unwrap();
        let pool = AnnouncePool::start(1).unwrap();
        let mut config = config();
        config.timeout = Duration::from_secs(3);
        let (peers_tx, _peers_rx) = crossbeam_channel::unbounded();
        let busy = pool.handle().register(
            Tiers::new(Some(&silent.url), None),
            config.clone(),
            stats(),
            Arc::default(),
            peers_tx.clone(),
            Arc::default(),
        );
        silent.next_datagram();
        let waiting = pool.handle().register(
            Tiers::new(Some(&closed_port_url()), None),
            config,
            stats(),
            Arc::default(),
            peers_tx,
            Arc::default(),
        );
        let start = Instant::now();
        waiting.send(AnnouncerCommand::Stop);
        assert!(waiting.wait_until(Instant::now() + Duration::from_secs(1)));
        assert!(start.elapsed() < Duration::from_secs(1));
        busy.send(AnnouncerCommand::Stop);
    }

    fn udp_event(datagram: &[u8]) -> Option<u8> {
        (udp_action(datagram) == Some(1)).then(|| datagram[83])
    }

    #[test]
    fn announcer_moves_past_a_silent_udp_tracker_in_its_tier_and_publishes_the_swarm() {
        let silent = FakeUdpTracker::serve("127.0.0.1:0", Box::new(|_| vec![])).unwrap();
        let good = FakeUdpTracker::serve(
            "127.0.0.1:0",
            udp_well_behaved(0, vec![127, 0, 0, 9, 0x1A, 0xE1]),
        )
        .unwrap();
        let tiers = Tiers::new(None, Some(&[vec![silent.url.clone(), good.url.clone()]]));
        let mut config = config();
        config.timeout = Duration::from_millis(400);
        config.scrape_interval = Some(SCRAPE_INTERVAL);
        let swarm = Arc::new(SwarmStats::default());
        let start = Instant::now();
        let (handle, peers_rx, commands_tx) = start_announcer(tiers, config, Arc::clone(&swarm));
        assert_eq!(
            peers_rx.recv_timeout(PATIENCE).unwrap().peers,
            vec!["127.0.0.9:6881".parse::<SocketAddr>().unwrap()]
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "a silent tracker held the round for {:?}",
            start.elapsed()
        );
        // Connect, started (event 2), then the scrape on the same connection id.
        assert_eq!(udp_action(&good.next_datagram()), Some(0));
        let started = good.next_datagram();
        assert_eq!(udp_event(&started), Some(2));
        assert_eq!(started[84..88], [0; 4], "ip");
        assert_eq!(started[92..98], [0, 0, 0, 50, 0x1A, 0xE1], "numwant, port");
        assert_eq!(udp_action(&good.next_datagram()), Some(2));
        wait_for(
            || swarm.completed.load(Ordering::Relaxed) == 9,
            "the scrape's counts",
        );
        assert!(swarm.known.load(Ordering::Acquire));
        assert_eq!(swarm.seeders.load(Ordering::Relaxed), 4);
        assert_eq!(swarm.leechers.load(Ordering::Relaxed), 2);

        commands_tx.send(AnnouncerCommand::Stop);
        let stopped = good.next_datagram();
        assert_eq!(udp_event(&stopped), Some(3), "{stopped:?}");
        assert_eq!(stopped[92..96], [0; 4], "stopped asks for no peers");
        assert_eq!(stopped[..8], started[..8], "the connection id is reused");
        assert_ne!(stopped[96..98], [0, 0]);
        join_within(handle, PATIENCE);
        assert!(good.received().is_empty(), "only one connect was needed");
    }

    #[test]
    fn announcer_scrapes_an_http_tracker_after_announcing_and_keeps_the_counts() {
        let tracker = FakeTracker::serve(vec![
            ok(b"d8:completei3e10:incompletei1e8:intervali1800e5:peers0:e"),
            ok(b"d5:filesd20:ZZZZZZZZZZZZZZZZZZZZd8:completei5e10:downloadedi17e10:incompletei2eeee"),
            ok(b""),
        ]);
        let mut config = config();
        config.info_hash = *b"ZZZZZZZZZZZZZZZZZZZZ";
        config.scrape_interval = Some(SCRAPE_INTERVAL);
        let swarm = Arc::new(SwarmStats::default());
        let tiers = Tiers::new(Some(&tracker.url), None);
        let (handle, _peers_rx, commands_tx) = start_announcer(tiers, config, Arc::clone(&swarm));
        assert_eq!(event_of(&tracker.next_request()), Some("started"));
        assert_eq!(
            tracker.next_request(),
            format!("/scrape?info_hash={}", "Z".repeat(20))
        );
        wait_for(
            || swarm.completed.load(Ordering::Relaxed) == 17,
            "the scrape's counts",
        );
        assert_eq!(swarm.seeders.load(Ordering::Relaxed), 5);
        assert_eq!(swarm.leechers.load(Ordering::Relaxed), 2);
        commands_tx.send(AnnouncerCommand::Stop);
        assert_eq!(event_of(&tracker.next_request()), Some("stopped"));
        join_within(handle, PATIENCE);
        tracker.join();
    }

    #[test]
    fn swarm_counts_come_from_the_announce_when_the_tracker_cannot_scrape() {
        let swarm = SwarmStats::default();
        assert!(!swarm.known.load(Ordering::Acquire));
        swarm.on_announced(None, None);
        assert!(
            !swarm.known.load(Ordering::Acquire),
            "no counts, nothing known"
        );
        swarm.on_announced(Some(8), None);
        assert!(swarm.known.load(Ordering::Acquire));
        assert_eq!(swarm.seeders.load(Ordering::Relaxed), 8);
        swarm.on_scraped(ScrapeCounts {
            seeders: 1,
            leechers: 2,
            completed: None,
        });
        assert_eq!(
            [&swarm.seeders, &swarm.leechers, &swarm.completed].map(|a| a.load(Ordering::Relaxed)),
            [1, 2, 0]
        );
    }

    fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn announcer_without_trackers_waits_for_stop() {
        let (handle, _peers_rx, commands_tx) =
            start_announcer(Tiers::new(None, None), config(), Arc::default());
        commands_tx.send(AnnouncerCommand::NeedPeers);
        commands_tx.send(AnnouncerCommand::Stop);
        join_within(handle, Duration::from_secs(3));
    }
}
