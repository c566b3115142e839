//! Exponential back-off: the one "wait, doubling, up to a cap" behind every retry in btd (dial
//! retries of the coordinator and the metadata fetch, web seed errors, tracker rounds and UDP
//! retransmits, storage errors, metadata and DHT lookups).

use std::time::Duration;

/// `base` doubled `doublings` times, at most `max`; saturates instead of overflowing, however
/// many doublings.
#[must_use]
pub fn doubling(base: Duration, doublings: u32, max: Duration) -> Duration {
    base.saturating_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_up_to_the_cap_and_never_overflows() {
        let s = Duration::from_secs;
        let waits: Vec<u64> = (0..8).map(|n| doubling(s(2), n, s(60)).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(doubling(s(15), 40, s(1800)), s(1800));
        assert_eq!(doubling(s(15), 31, Duration::MAX), s(15) * (1 << 31));
        assert_eq!(doubling(Duration::MAX, 3, Duration::MAX), Duration::MAX);
        // Doubling once, as the waits that grow by themselves do.
        assert_eq!(doubling(s(40), 1, s(60)), s(60));
    }
}
