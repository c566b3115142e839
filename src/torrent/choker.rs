//! The choker: which interested peers get upload slots. Pure: the coordinator calls it every
//! [`CHOKE_INTERVAL`] with a snapshot of its peers and applies the answer.
//!
//! Regular slots go to the peers with the best rate: the rate they give us while we leech (tit for
//! tat), the rate we reach them while we seed. One more slot, the optimistic unchoke, rotates
//! every [`OPTIMISTIC_INTERVAL`] to a choked interested peer, newly connected peers weighted up,
//! so a newcomer with nothing to trade can get its first pieces.

use std::collections::HashSet;
use std::time::Duration;

use rand::RngExt;

use super::picker::PeerKey;

pub const CHOKE_INTERVAL: Duration = Duration::from_secs(10);
pub const OPTIMISTIC_INTERVAL: Duration = Duration::from_secs(30);
/// Peers connected less than this get a triple share of optimistic chances.
const NEW_PEER_AGE: Duration = Duration::from_secs(60);

/// What the choker needs to know of one peer.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub peer: PeerKey,
    pub interested: bool,
    /// Bytes per second: from the peer while leeching, to the peer while seeding.
    pub rate: u64,
    pub connected_for: Duration,
}

/// Picks the peers to unchoke: the `slots` best-rated interested peers, plus `optimistic` when
/// it is still interested (or a new optimistic pick when `rotate` is set or it is gone).
/// Returns the unchoke set and the optimistic peer.
pub fn choose(
    candidates: &[Candidate],
    slots: usize,
    optimistic: Option<PeerKey>,
    rotate: bool,
    rng: &mut impl rand::Rng,
) -> (HashSet<PeerKey>, Option<PeerKey>) {
    let mut interested: Vec<&Candidate> = candidates.iter().filter(|c| c.interested).collect();
    interested.sort_by_key(|c| std::cmp::Reverse(c.rate));
    let mut unchoked: HashSet<PeerKey> = interested.iter().take(slots).map(|c| c.peer).collect();
    let keep = optimistic.filter(|o| !rotate && interested.iter().any(|c| c.peer == *o));
    let optimistic = keep.or_else(|| {
        let rest: Vec<&&Candidate> = interested
            .iter()
            .filter(|c| !unchoked.contains(&c.peer))
            .collect();
        let weight = |c: &Candidate| if c.connected_for < NEW_PEER_AGE { 3 } else { 1 };
        let total: u32 = rest.iter().map(|c| weight(c)).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = rng.random_range(0..total);
        rest.into_iter().find_map(|c| {
            let w = weight(c);
            if ticket < w {
                Some(c.peer)
            } else {
                ticket -= w;
                None
            }
        })
    });
    unchoked.extend(optimistic);
    (unchoked, optimistic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(peer: PeerKey, interested: bool, rate: u64) -> Candidate {
        Candidate {
            peer,
            interested,
            rate,
            connected_for: Duration::from_secs(600),
        }
    }

    #[test]
    fn unchokes_the_fastest_interested_peers_plus_one_optimistic() {
        let peers = [
            c(1, true, 10),
            c(2, true, 50),
            c(3, false, 99),
            c(4, true, 30),
            c(5, true, 1),
        ];
        let mut rng = rand::rng();
        let (set, opt) = choose(&peers, 2, None, true, &mut rng);
        assert!(set.contains(&2) && set.contains(&4));
        assert!(!set.contains(&3), "not interested");
        let opt = opt.expect("an optimistic pick among 1 and 5");
        assert!(opt == 1 || opt == 5);
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn keeps_the_optimistic_peer_until_rotation() {
        let peers = [c(1, true, 10), c(2, true, 50), c(3, true, 0)];
        let mut rng = rand::rng();
        let (set, opt) = choose(&peers, 1, Some(3), false, &mut rng);
        assert_eq!(opt, Some(3));
        assert_eq!(set, HashSet::from([2, 3]));
    }

    #[test]
    fn no_optimistic_when_everyone_interested_is_unchoked() {
        let peers = [c(1, true, 10), c(2, false, 50)];
        let (set, opt) = choose(&peers, 4, None, true, &mut rand::rng());
        assert_eq!((set, opt), (HashSet::from([1]), None));
    }
}
