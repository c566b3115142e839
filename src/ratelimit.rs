//! Global limits shared by every peer thread of the process: token buckets for the download and
//! upload rates, and the budget of peer connections. One bucket per direction serves all torrents,
//! so the limit holds however many peers and torrents there are. A bucket's lock is held only for
//! arithmetic, never across I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::peer::conn::EncryptionMode;

/// The most a bucket lets accumulate: this much of its rate.
const BURST: Duration = Duration::from_millis(250);
/// Never less than a block and a bit, so a low limit still lets whole blocks through.
const MIN_BURST_BYTES: u64 = 32 * 1024;

struct Bucket {
    tokens: u64,
    last: Instant,
}

/// A token bucket of bytes per second; rate 0 means unlimited.
pub struct RateLimiter {
    rate: AtomicU64,
    bucket: Mutex<Bucket>,
}

impl RateLimiter {
    /// A limiter of `rate` bytes per second (0 = unlimited).
    pub fn new(rate: u64) -> Self {
        Self {
            rate: AtomicU64::new(rate),
            bucket: Mutex::new(Bucket {
                tokens: 0,
                last: Instant::now(),
            }),
        }
    }

    /// Changes the rate; takes effect at once for every thread.
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    /// Bytes per second, 0 = unlimited.
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Takes up to `want` bytes' worth of tokens and returns how many it got (0 when the bucket
    /// is empty). Unlimited returns `want`.
    pub fn take_up_to(&self, want: usize, now: Instant) -> usize {
        let rate = self.rate();
        if rate == 0 {
            return want;
        }
        let mut bucket = self.bucket.lock();
        refill(&mut bucket, rate, now);
        let got = bucket.tokens.min(want as u64);
        bucket.tokens -= got;
        usize::try_from(got).expect("at most `want`")
    }

    /// Takes exactly `n` tokens if the bucket holds them.
    pub fn try_take(&self, n: usize, now: Instant) -> bool {
        let rate = self.rate();
        if rate == 0 {
            return true;
        }
        let mut bucket = self.bucket.lock();
        refill(&mut bucket, rate, now);
        if bucket.tokens >= n as u64 {
            bucket.tokens -= n as u64;
            true
        } else {
            false
        }
    }

    /// Returns tokens taken but not used (a read that returned fewer bytes).
    pub fn give_back(&self, n: usize) {
        let rate = self.rate();
        if rate == 0 || n == 0 {
            return;
        }
        let mut bucket = self.bucket.lock();
        bucket.tokens = (bucket.tokens + n as u64).min(capacity(rate));
    }

    /// How long until `n` tokens could be there (for a thread with nothing else to do).
    pub fn wait_hint(&self, n: usize) -> Duration {
        let rate = self.rate();
        if rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros((n as u64).saturating_mul(1_000_000) / rate).min(BURST)
    }
}

/// Two buckets a transfer must pass both of: a torrent's own rate inside the process's. Tokens
/// are taken from the inner one first; what the outer one refuses goes back to the inner.
#[derive(Clone, Copy)]
pub struct RateChain<'a> {
    pub inner: &'a RateLimiter,
    pub outer: &'a RateLimiter,
}

impl RateChain<'_> {
    /// Takes up to `want` bytes' worth from both; returns how many it got.
    pub fn take_up_to(&self, want: usize, now: Instant) -> usize {
        let inner = self.inner.take_up_to(want, now);
        let both = self.outer.take_up_to(inner, now);
        self.inner.give_back(inner - both);
        both
    }

    /// Takes exactly `n` from both, or nothing.
    pub fn try_take(&self, n: usize, now: Instant) -> bool {
        if !self.inner.try_take(n, now) {
            return false;
        }
        if self.outer.try_take(n, now) {
            return true;
        }
        self.inner.give_back(n);
        false
    }

    /// Returns `n` unused tokens to both.
    pub fn give_back(&self, n: usize) {
        self.inner.give_back(n);
        self.outer.give_back(n);
    }

    /// How long until `n` tokens could be in both.
    pub fn wait_hint(&self, n: usize) -> Duration {
        self.inner.wait_hint(n).max(self.outer.wait_hint(n))
    }
}

fn capacity(rate: u64) -> u64 {
    (rate / 4).max(MIN_BURST_BYTES)
}

fn refill(bucket: &mut Bucket, rate: u64, now: Instant) {
    let elapsed = now.saturating_duration_since(bucket.last);
    let new = u64::try_from(elapsed.as_micros().saturating_mul(u128::from(rate)) / 1_000_000)
        .unwrap_or(u64::MAX);
    if new > 0 {
        bucket.tokens = bucket.tokens.saturating_add(new).min(capacity(rate));
        bucket.last = now;
    }
}

/// The process-wide budget of peer connections, and how many incoming ones one IP address may
/// hold (the listener counts those).
pub struct PeerBudget {
    max: AtomicUsize,
    used: AtomicUsize,
    max_per_ip: AtomicUsize,
}

impl PeerBudget {
    /// A budget of `max` connections, any number of them from one IP.
    pub fn new(max: usize) -> Self {
        Self {
            max: AtomicUsize::new(max),
            used: AtomicUsize::new(0),
            max_per_ip: AtomicUsize::new(usize::MAX),
        }
    }

    /// Changes the maximum; connections over a lowered limit stay until they end.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Changes how many incoming connections one IP may hold; those over it stay.
    pub fn set_max_per_ip(&self, max: usize) {
        self.max_per_ip.store(max, Ordering::Relaxed);
    }

    /// Incoming connections one IP may hold at once.
    pub fn max_per_ip(&self) -> usize {
        self.max_per_ip.load(Ordering::Relaxed)
    }

    /// True when every connection slot is taken.
    pub fn is_full(&self) -> bool {
        self.used() >= self.max.load(Ordering::Relaxed)
    }

    /// Takes one connection slot if there is one (held as a [`PeerPermit`]).
    fn try_acquire(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < max).then_some(used + 1)
            })
            .is_ok()
    }

    /// Returns a slot taken with `try_acquire` (a [`PeerPermit`]'s drop).
    fn release(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_sub(1)
            });
    }

    /// The most connections at once.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Connections in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// The global limits, shared by the engine, the coordinators and every peer thread.
pub struct Limits {
    pub download: RateLimiter,
    pub upload: RateLimiter,
    pub peers: PeerBudget,
    /// How connections are encrypted (`[network] encryption`), read by the listener and by
    /// every dialling thread when a connection opens.
    pub encryption: EncryptionMode,
}

/// One connection's slot in the process-wide peer budget, given back when dropped: the
/// connection holds it while it dials and while it runs, and a peer dropped to make room hands
/// it to the newcomer, so no path can forget to give it back or give it back twice.
pub struct PeerPermit(Arc<Limits>);

impl Drop for PeerPermit {
    fn drop(&mut self) {
        self.0.peers.release();
    }
}

impl Limits {
    /// A slot of the peer budget, if one is free.
    pub fn try_peer_permit(self: &Arc<Self>) -> Option<PeerPermit> {
        self.peers
            .try_acquire()
            .then(|| PeerPermit(Arc::clone(self)))
    }

    /// The given rates (0 = unlimited) and peer budget, encryption `preferred`.
    pub fn new(download_rate: u64, upload_rate: u64, max_peers: usize) -> Self {
        Self {
            download: RateLimiter::new(download_rate),
            upload: RateLimiter::new(upload_rate),
            peers: PeerBudget::new(max_peers),
            encryption: EncryptionMode::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_gives_everything() {
        let l = RateLimiter::new(0);
        assert_eq!(l.take_up_to(1 << 20, Instant::now()), 1 << 20);
        assert!(l.try_take(1 << 30, Instant::now()));
    }

    #[test]
    fn a_chain_gives_what_both_buckets_have_and_returns_the_rest_to_the_inner_one() {
        let torrent = RateLimiter::new(1_000_000);
        let process = RateLimiter::new(2_000_000);
        let chain = RateChain {
            inner: &torrent,
            outer: &process,
        };
        // Both emptied at t0 (a millisecond on, so each refills and restarts its clock there),
        // whatever they filled up since they were made.
        let t0 = Instant::now() + Duration::from_millis(1);
        torrent.take_up_to(usize::MAX, t0);
        process.take_up_to(usize::MAX, t0);
        let t1 = t0 + Duration::from_millis(100);
        // The torrent's 100 kB bound it, though the process had 200 kB.
        assert_eq!(chain.take_up_to(usize::MAX, t1), 100_000);
        assert!(!chain.try_take(1, t1));
        assert_eq!(
            process.take_up_to(usize::MAX, t1),
            100_000,
            "the rest stayed"
        );

        // The process's bucket empty: the torrent's tokens come back to it.
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(process.take_up_to(usize::MAX, t2), 200_000);
        assert_eq!(chain.take_up_to(50_000, t2), 0);
        assert!(!chain.try_take(50_000, t2));
        assert_eq!(torrent.take_up_to(usize::MAX, t2), 100_000);
    }

    #[test]
    fn limited_bucket_refills_at_its_rate_and_caps_bursts() {
        let l = RateLimiter::new(1_000_000);
        let t0 = Instant::now();
        l.take_up_to(usize::MAX, t0);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.take_up_to(usize::MAX, t1), 100_000);
        assert_eq!(l.take_up_to(10, t1), 0);
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(
            l.take_up_to(usize::MAX, t2),
            250_000,
            "burst is a quarter second"
        );
    }

    #[test]
    fn over_a_second_the_total_matches_the_rate() {
        let l = RateLimiter::new(200_000);
        let t0 = Instant::now();
        l.take_up_to(usize::MAX, t0);
        let mut total = 0;
        for ms in 1..=1000 {
            total += l.take_up_to(16384, t0 + Duration::from_millis(ms));
        }
        assert!((190_000..=210_000).contains(&total), "{total}");
    }

    #[test]
    fn given_back_tokens_can_be_taken_again() {
        let l = RateLimiter::new(100_000);
        let t0 = Instant::now();
        l.take_up_to(usize::MAX, t0);
        l.give_back(5000);
        assert!(l.try_take(5000, t0));
        assert!(!l.try_take(1, t0));
    }

    #[test]
    fn peer_permits_refuse_past_the_maximum_and_give_their_slot_back_when_dropped() {
        let limits = Arc::new(Limits::new(0, 0, 2));
        let first = limits.try_peer_permit().expect("a slot");
        let second = limits.try_peer_permit().expect("a slot");
        assert!(limits.try_peer_permit().is_none());
        drop(first);
        assert_eq!(limits.peers.used(), 1);
        let third = limits.try_peer_permit().expect("the slot given back");
        // A lowered maximum refuses newcomers; those over it stay until they end.
        limits.peers.set_max(1);
        assert!(limits.try_peer_permit().is_none());
        assert_eq!(limits.peers.used(), 2);
        drop((second, third));
        assert_eq!(limits.peers.used(), 0);
    }
}
