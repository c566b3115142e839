//! The announcer thread of one torrent: when to announce, with which event, to which tracker.
//!
//! [`Schedule`] makes every timing decision (next announce, event, back-off) as a pure function of
//! `Instant` arguments; [`spawn`] runs it on a thread named `announcer {info hash prefix}` that
//! blocks only in one HTTP or UDP announce or scrape at a time (each bounded by the configured
//! timeout) and in `commands.recv_timeout`. It keeps the UDP trackers' connection ids across
//! announces and publishes the swarm's size in a [`SwarmStats`]. Announce errors are logged with
//! `warn!` and retried after a back-off, scrape errors with `debug!`; nothing a tracker sends can
//! panic the thread.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use log::{debug, warn};

use super::udp::UdpClient;
use super::{
    AnnounceEvent, AnnounceFailure, AnnounceRequest, AnnounceResponse, OurAddrs, SwarmStats, Tiers,
    TrackerError, http, udp,
};
use crate::watched::{self, Watched};

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

/// Orders for the announcer thread.
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
        let doublings = (self.failed_rounds - 1).min(16);
        let backoff = BACKOFF_INITIAL
            .saturating_mul(1 << doublings)
            .min(BACKOFF_MAX);
        self.retry_at = Some(now + backoff);
        backoff
    }
}

/// Spawns the announcer thread of one torrent, named `announcer {first 4 bytes of the info hash in
/// hex}`.
///
/// It announces `started` at once, then again every `interval` of the last reply, earlier on
/// [`AnnouncerCommand::NeedPeers`] but never before `min interval`, `completed` once on
/// [`AnnouncerCommand::Completed`], and `stopped` (bounded by `stop_timeout`, to the tracker that
/// last answered, if any did) on [`AnnouncerCommand::Stop`] or when `commands` disconnects; then
/// it exits. Each round tries the trackers tier by tier, in order, until one answers (`http://`,
/// `https://` and `udp://`; other schemes are skipped, and a tracker that fails or stays silent for
/// `timeout` gives way to the next); that one moves to the front of its tier and only it gets our
/// `trackerid` back. Every non-empty peer list goes to `peers_tx` with `try_send`: a full channel
/// drops that list, a disconnected one means the torrent is gone and the thread exits without
/// `stopped`.
///
/// The seeders and leechers of each reply go to `swarm`; after a successful announce, when
/// `scrape_interval` allows, the tracker that answered is scraped for all three counts (a tracker
/// without a scrape URL, or whose scrape fails, keeps the announce's counts). Commands are checked
/// between the trackers of a round and before a scrape, so `Stop` waits for at most one announce or
/// scrape in flight plus the `stopped` one.
///
/// # Errors
/// The error of [`thread::Builder::spawn`].
pub fn spawn(
    tiers: Tiers,
    config: AnnouncerConfig,
    stats: Arc<dyn Fn() -> AnnounceStats + Send + Sync>,
    swarm: Arc<SwarmStats>,
    peers_tx: Sender<Vec<SocketAddr>>,
    commands: Receiver<AnnouncerCommand>,
) -> std::io::Result<Watched<()>> {
    let prefix = crate::hex::encode(&config.info_hash[..4]);
    let announcer = Announcer {
        schedule: Schedule::new(Instant::now()),
        tiers,
        udp: UdpClient::new(config.udp_retransmit_base).bound_to(config.bind),
        key: rand::random(),
        config,
        stats,
        swarm,
        peers_tx,
        commands,
        current: None,
        tracker_id: None,
        scrape_due: None,
        last_scrape: None,
        prefix,
    };
    watched::spawn(
        thread::Builder::new().name(format!("announcer {}", announcer.prefix)),
        move || crate::profile::run_as(crate::profile::Role::Announcer, || announcer.run()),
    )
}

/// What the thread does after handling something.
enum Flow {
    Continue,
    /// Send `stopped`, then exit.
    Stop,
    /// The torrent dropped its peer receiver: exit at once.
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
    peers_tx: Sender<Vec<SocketAddr>>,
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
}

impl Announcer {
    fn run(mut self) {
        if self.tiers.is_empty() {
            debug!("announcer {}: no trackers", self.prefix);
        }
        loop {
            let now = Instant::now();
            let due = self.schedule.due_at();
            let scrape_due = self.scrape_due.filter(|&at| at < due);
            let flow = if now >= due {
                self.announce_round()
            } else if scrape_due.is_some_and(|at| now >= at) {
                match self.drain_commands() {
                    Flow::Continue => self.scrape(),
                    flow => flow,
                }
            } else {
                match self.commands.recv_timeout(scrape_due.unwrap_or(due) - now) {
                    Ok(command) => self.apply(command),
                    Err(RecvTimeoutError::Timeout) => Flow::Continue,
                    Err(RecvTimeoutError::Disconnected) => Flow::Stop,
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Stop => {
                    self.send_stopped();
                    return;
                }
                Flow::Gone => {
                    debug!("announcer {}: torrent gone; exiting", self.prefix);
                    return;
                }
            }
        }
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
        let backoff = self.schedule.on_round_failed(Instant::now());
        match errors.split_last() {
            None => debug!(
                "announcer {}: no HTTP or UDP tracker to announce to; next look in {}s",
                self.prefix,
                backoff.as_secs()
            ),
            Some((last, earlier)) => {
                for err in earlier {
                    warn!("torrent {}: {err}", self.config.name);
                }
                warn!(
                    "torrent {}: {last}; retry in {}s",
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
        match self.peers_tx.try_send(reply.peers) {
            Ok(()) => Flow::Continue,
            Err(TrySendError::Full(peers)) => {
                debug!(
                    "tracker {url}: peer channel full; dropped {} peers",
                    peers.len()
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
    use std::net::TcpListener;

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
        }
    }

    fn stats() -> Arc<dyn Fn() -> AnnounceStats + Send + Sync> {
        Arc::new(|| AnnounceStats {
            uploaded: 7,
            downloaded: 8,
            left: 9,
        })
    }

    fn join_within(mut handle: Watched<()>, limit: Duration) {
        assert!(
            handle.wait_until(Instant::now() + limit),
            "announcer still running after {limit:?}"
        );
        assert!(!handle.panicked(), "announcer panicked");
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

    /// Spawns an announcer over `tiers` with the test's `stats()`; gives its thread, the peers it
    /// delivers and its command sender.
    fn start_announcer(
        tiers: Tiers,
        config: AnnouncerConfig,
        swarm: Arc<SwarmStats>,
    ) -> (
        Watched<()>,
        Receiver<Vec<SocketAddr>>,
        Sender<AnnouncerCommand>,
    ) {
        let (peers_tx, peers_rx) = crossbeam_channel::unbounded();
        let (commands_tx, commands_rx) = crossbeam_channel::unbounded();
        let handle = spawn(tiers, config, stats(), swarm, peers_tx, commands_rx).unwrap();
        (handle, peers_rx, commands_tx)
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
            peers_rx.recv_timeout(PATIENCE).unwrap(),
            vec!["127.0.0.3:6881".parse::<SocketAddr>().unwrap()]
        );

        commands_tx.send(AnnouncerCommand::Completed).unwrap();
        commands_tx.send(AnnouncerCommand::Completed).unwrap();
        let completed = tracker.next_request();
        assert_eq!(event_of(&completed), Some("completed"), "{completed}");

        commands_tx.send(AnnouncerCommand::Stop).unwrap();
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
        commands_tx.send(AnnouncerCommand::Completed).unwrap();
        commands_tx.send(AnnouncerCommand::Stop).unwrap();
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
            peers_rx.recv_timeout(PATIENCE).unwrap(),
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
        commands_tx.send(AnnouncerCommand::Stop).unwrap();
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
        let (_commands_tx, commands_rx) = crossbeam_channel::unbounded();
        let tiers = Tiers::new(Some(&tracker.url), None);
        let handle = spawn(
            tiers,
            config(),
            stats(),
            Arc::default(),
            peers_tx,
            commands_rx,
        )
        .unwrap();
        assert_eq!(handle.name(), Some("announcer 5a5a5a5a"));
        join_within(handle, PATIENCE);
        tracker.join();
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
            peers_rx.recv_timeout(PATIENCE).unwrap(),
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

        commands_tx.send(AnnouncerCommand::Stop).unwrap();
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
        commands_tx.send(AnnouncerCommand::Stop).unwrap();
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
        commands_tx.send(AnnouncerCommand::NeedPeers).unwrap();
        commands_tx.send(AnnouncerCommand::Stop).unwrap();
        join_within(handle, Duration::from_secs(3));
    }
}
