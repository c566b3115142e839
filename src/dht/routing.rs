//! The routing table of one address family (BEP 5), pure: time comes in as an argument, and
//! what needs sending comes out as a list of nodes to ping. Bucket `i` holds nodes whose id
//! shares exactly `i` leading bits with ours (160 buckets, each at most [`K`] nodes), so the
//! table is bounded at 1,280 nodes and a node's bucket is found without splitting.
//!
//! A node is *good* when it answered us within [`GOOD_FOR`] (or queried us after having answered
//! once), *questionable* after that, and *bad* after [`MAX_FAILURES`] unanswered queries in a
//! row. A full bucket takes a newcomer only in place of a bad node; otherwise its least recently
//! seen questionable node is pinged and the newcomer waits as the bucket's one replacement,
//! which takes the place of that node if it fails.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dht::krpc::Id;
use crate::wire::compact::NodeInfo;

/// Nodes per bucket.
pub const K: usize = 8;
/// A node that answered this recently is good.
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);
/// A bucket nobody touched this long is refreshed with a lookup of a random id in it.
pub const REFRESH_AFTER: Duration = Duration::from_secs(15 * 60);
/// Unanswered queries in a row that make a node bad.
pub const MAX_FAILURES: u32 = 2;
const BUCKETS: usize = 160;

/// XOR distance between two ids, comparable as big-endian bytes.
pub fn distance(a: &Id, b: &Id) -> Id {
    let mut d = [0u8; 20];
    for i in 0..20 {
        d[i] = a[i] ^ b[i];
    }
    d
}

/// Leading bits `a` and `b` share (160 when equal).
fn common_prefix(a: &Id, b: &Id) -> usize {
    let d = distance(a, b);
    let mut bits = 0;
    for byte in d {
        if byte == 0 {
            bits += 8;
        } else {
            bits += byte.leading_zeros() as usize;
            break;
        }
    }
    bits
}

#[derive(Clone, Debug)]
struct Entry {
    info: NodeInfo,
    /// When it last answered one of our queries.
    answered: Option<Instant>,
    /// When we last heard from it at all.
    seen: Instant,
    failures: u32,
}

impl Entry {
    fn is_good(&self, now: Instant) -> bool {
        self.failures == 0
            && self
                .answered
                .is_some_and(|t| now.saturating_duration_since(t) < GOOD_FOR)
    }

    fn is_bad(&self) -> bool {
        self.failures >= MAX_FAILURES
    }
}

#[derive(Clone, Debug, Default)]
struct Bucket {
    nodes: Vec<Entry>,
    replacement: Option<NodeInfo>,
    touched: Option<Instant>,
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    own: Id,
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    pub fn new(own: Id) -> Self {
        Self {
            own,
            buckets: vec![Bucket::default(); BUCKETS],
        }
    }

    pub fn own_id(&self) -> &Id {
        &self.own
    }

    fn index(&self, id: &Id) -> Option<usize> {
        let i = common_prefix(&self.own, id);
        (i < BUCKETS).then_some(i)
    }

    /// Nodes in the table.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Good nodes in the table.
    pub fn good(&self, now: Instant) -> Vec<NodeInfo> {
        self.entries()
            .filter(|e| e.is_good(now))
            .map(|e| e.info)
            .collect()
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }

    /// A node answered one of our queries: it is good. Returns a node to ping when its bucket
    /// is full of nodes that may still be alive (the newcomer waits as the replacement).
    pub fn on_answered(&mut self, info: NodeInfo, now: Instant) -> Option<NodeInfo> {
        self.insert(info, now, true)
    }

    /// A node queried us: known nodes are refreshed; a new one is added like an answer's
    /// sender but not counted good until it answers us.
    pub fn on_queried(&mut self, info: NodeInfo, now: Instant) -> Option<NodeInfo> {
        self.insert(info, now, false)
    }

    fn insert(&mut self, info: NodeInfo, now: Instant, answered: bool) -> Option<NodeInfo> {
        let i = self.index(&info.id)?;
        let bucket = &mut self.buckets[i];
        if let Some(e) = bucket.nodes.iter_mut().find(|e| e.info.id == info.id) {
            if e.info.addr != info.addr {
                // Same id from another address: keep the one we know, until it goes bad.
                if !e.is_bad() {
                    return None;
                }
                e.info.addr = info.addr;
            }
            e.seen = now;
            if answered {
                e.answered = Some(now);
                e.failures = 0;
            }
            bucket.touched = Some(now);
            return None;
        }
        // One entry per address: a new id at a known address replaces nothing.
        if bucket.nodes.iter().any(|e| e.info.addr == info.addr) {
            return None;
        }
        let entry = Entry {
            info,
            answered: answered.then_some(now),
            seen: now,
            failures: 0,
        };
        if bucket.nodes.len() < K {
            bucket.nodes.push(entry);
            bucket.touched = Some(now);
            return None;
        }
        if let Some(bad) = bucket.nodes.iter().position(Entry::is_bad) {
            bucket.nodes[bad] = entry;
            bucket.touched = Some(now);
            return None;
        }
        if !answered {
            return None;
        }
        let stale = bucket
            .nodes
            .iter()
            .filter(|e| !e.is_good(now))
            .min_by_key(|e| e.seen)?
            .info;
        bucket.replacement = Some(info);
        Some(stale)
    }

    /// A query to `addr` went unanswered. A node that turns bad gives its place to the bucket's
    /// replacement, if there is one.
    pub fn on_timeout(&mut self, id: &Id, addr: SocketAddr) {
        let Some(i) = self.index(id) else { return };
        let bucket = &mut self.buckets[i];
        let Some(pos) = bucket
            .nodes
            .iter()
            .position(|e| e.info.id == *id && e.info.addr == addr)
        else {
            return;
        };
        bucket.nodes[pos].failures += 1;
        if bucket.nodes[pos].is_bad()
            && let Some(info) = bucket.replacement.take()
        {
            bucket.nodes[pos] = Entry {
                info,
                answered: None,
                seen: bucket.nodes[pos].seen,
                failures: 0,
            };
        }
    }

    /// Removes a node (it told us it is gone, or changed its mind about its id).
    pub fn remove(&mut self, id: &Id) {
        if let Some(i) = self.index(id) {
            self.buckets[i].nodes.retain(|e| e.info.id != *id);
        }
    }

    /// Up to `count` nodes closest to `target`, bad ones left out, nearest first.
    pub fn closest(&self, target: &Id, count: usize) -> Vec<NodeInfo> {
        let mut all: Vec<&Entry> = self.entries().filter(|e| !e.is_bad()).collect();
        all.sort_by_key(|e| distance(&e.info.id, target));
        all.into_iter().take(count).map(|e| e.info).collect()
    }

    /// Questionable nodes not heard from for [`GOOD_FOR`]: ping them (at most `max`).
    pub fn to_ping(&self, now: Instant, max: usize) -> Vec<NodeInfo> {
        self.entries()
            .filter(|e| !e.is_bad() && now.saturating_duration_since(e.seen) >= GOOD_FOR)
            .take(max)
            .map(|e| e.info)
            .collect()
    }

    /// Random ids to look up for buckets that went untouched for [`REFRESH_AFTER`] (buckets
    /// from our side of the tree up to the deepest one in use), marking them refreshed.
    pub fn refresh_targets(&mut self, now: Instant, random: impl Fn() -> Id) -> Vec<Id> {
        let deepest = self
            .buckets
            .iter()
            .rposition(|b| !b.nodes.is_empty())
            .unwrap_or(0);
        let mut targets = Vec::new();
        for i in 0..=deepest.min(BUCKETS - 1) {
            let due = self.buckets[i]
                .touched
                .is_none_or(|t| now.saturating_duration_since(t) >= REFRESH_AFTER);
            if due && !self.buckets[i].nodes.is_empty() {
                targets.push(id_in_bucket(&self.own, i, &random()));
                self.buckets[i].touched = Some(now);
            }
        }
        targets
    }
}

/// An id sharing exactly `bits` leading bits with `own`, the rest from `random`.
pub fn id_in_bucket(own: &Id, bits: usize, random: &Id) -> Id {
    let mut id = *random;
    for bit in 0..=bits.min(159) {
        let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
        let want = if bit < bits {
            own[byte] & mask
        } else {
            !own[byte] & mask
        };
        id[byte] = (id[byte] & !mask) | want;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(first: u8, n: u8) -> NodeInfo {
        let mut id = [n; 20];
        id[0] = first;
        NodeInfo {
            id,
            addr: SocketAddr::from(([127, 0, first, n], 6881)),
        }
    }

    #[test]
    fn bucket_is_the_shared_prefix_length() {
        let own = [0u8; 20];
        assert_eq!(common_prefix(&own, &[0x80; 20]), 0);
        assert_eq!(
            common_prefix(&own, &{
                let mut x = [0u8; 20];
                x[1] = 1;
                x
            }),
            15
        );
        assert_eq!(common_prefix(&own, &own), 160);
        for bits in [0, 3, 8, 77, 159] {
            let id = id_in_bucket(&own, bits, &[0x5A; 20]);
            assert_eq!(common_prefix(&own, &id), bits, "{bits}");
        }
    }

    #[test]
    fn full_bucket_pings_a_stale_node_and_keeps_the_newcomer_as_replacement() {
        let now = Instant::now();
        let mut table = RoutingTable::new([0; 20]);
        // Ids starting 0x80..: all in bucket 0.
        for n in 0..8 {
            assert_eq!(table.on_answered(node(0x80, n), now), None);
        }
        assert_eq!(table.len(), 8);
        // Every node is good: the newcomer is not taken, nobody pinged.
        assert_eq!(table.on_answered(node(0x80, 100), now), None);
        assert_eq!(table.len(), 8);
        let later = now + GOOD_FOR;
        assert_eq!(
            table.on_answered(node(0x80, 101), later),
            Some(node(0x80, 0))
        );
        // The stale node fails twice: the replacement takes its place.
        table.on_timeout(&node(0x80, 0).id, node(0x80, 0).addr);
        assert!(table.closest(&node(0x80, 0).id, 1)[0] == node(0x80, 0));
        table.on_timeout(&node(0x80, 0).id, node(0x80, 0).addr);
        let ids: Vec<_> = table.closest(&[0x80; 20], 8).iter().map(|n| n.id).collect();
        assert!(ids.contains(&node(0x80, 101).id));
        assert!(!ids.contains(&node(0x80, 0).id));
        assert_eq!(table.len(), 8);
    }

    #[test]
    fn table_stays_bounded_under_a_flood() {
        let now = Instant::now();
        let mut table = RoutingTable::new([0; 20]);
        for a in 0..=255u8 {
            for b in 0..40u8 {
                let mut id = [b; 20];
                id[0] = a;
                id[1] = b;
                table.on_queried(
                    NodeInfo {
                        id,
                        addr: SocketAddr::from(([10, a, b, 1], 1)),
                    },
                    now,
                );
            }
        }
        assert!(table.len() <= K * BUCKETS);
        assert!(table.len() >= 8 * 7);
    }

    #[test]
    fn closest_sorts_by_xor_distance_and_skips_bad_nodes() {
        let now = Instant::now();
        let mut table = RoutingTable::new([0; 20]);
        for first in [0x10, 0x20, 0x40, 0x80] {
            table.on_answered(node(first, 1), now);
        }
        let target = node(0x20, 1).id;
        let got: Vec<u8> = table.closest(&target, 3).iter().map(|n| n.id[0]).collect();
        assert_eq!(got, vec![0x20, 0x10, 0x40]);
        table.on_timeout(&node(0x20, 1).id, node(0x20, 1).addr);
        table.on_timeout(&node(0x20, 1).id, node(0x20, 1).addr);
        assert_eq!(table.closest(&target, 1)[0].id[0], 0x10);
    }

    #[test]
    fn good_means_answered_lately() {
        let now = Instant::now();
        let mut table = RoutingTable::new([0; 20]);
        table.on_queried(node(0x40, 1), now);
        table.on_answered(node(0x80, 1), now);
        assert_eq!(table.good(now), vec![node(0x80, 1)]);
        assert!(table.good(now + GOOD_FOR).is_empty());
        assert_eq!(table.to_ping(now + GOOD_FOR, 10).len(), 2);
    }

    #[test]
    fn refresh_picks_untouched_buckets_once() {
        let now = Instant::now();
        let mut table = RoutingTable::new([0; 20]);
        table.on_answered(node(0x80, 1), now);
        table.on_answered(node(0x20, 1), now);
        assert!(table.refresh_targets(now, || [0xFF; 20]).is_empty());
        let later = now + REFRESH_AFTER;
        let targets = table.refresh_targets(later, || [0xFF; 20]);
        assert_eq!(targets.len(), 2);
        assert_eq!(common_prefix(&[0; 20], &targets[0]), 0);
        assert_eq!(common_prefix(&[0; 20], &targets[1]), 2);
        assert!(table.refresh_targets(later, || [0xFF; 20]).is_empty());
    }
}
