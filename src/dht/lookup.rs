//! One iterative lookup (BEP 5), pure: `find_node` toward a target, or `get_peers` for an info
//! hash (which also gathers peers and the tokens to announce with). It keeps the closest
//! candidates heard of (at most [`MAX_CANDIDATES`]), asks up to [`ALPHA`] at a time, the
//! closest unasked first, and is done when nothing is in flight and the [`K`] closest live
//! candidates have all answered (or there is nobody left to ask, or [`MAX_QUERIES`] were sent).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::dht::krpc::Id;
use crate::dht::routing::{K, distance};
use crate::wire::compact::NodeInfo;

/// Queries in flight at once.
pub const ALPHA: usize = 4;
/// Candidates remembered; farther ones are dropped.
pub const MAX_CANDIDATES: usize = 64;
/// Queries one lookup sends at most.
pub const MAX_QUERIES: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Fresh,
    Asked,
    Answered { token: Option<Vec<u8>> },
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    info: NodeInfo,
    state: State,
}

/// See the module documentation.
#[derive(Clone, Debug)]
pub struct Lookup {
    target: Id,
    /// Keyed by distance to the target, then address (two addresses may claim one id).
    candidates: BTreeMap<(Id, SocketAddr), Candidate>,
    sent: usize,
}

impl Lookup {
    pub fn new(target: Id, seeds: &[NodeInfo]) -> Self {
        let mut lookup = Self {
            target,
            candidates: BTreeMap::new(),
            sent: 0,
        };
        lookup.add(seeds);
        lookup
    }

    pub fn target(&self) -> &Id {
        &self.target
    }

    /// No candidate at all (the table was empty when it began).
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    fn key(&self, n: &NodeInfo) -> (Id, SocketAddr) {
        (distance(&n.id, &self.target), n.addr)
    }

    /// Nodes heard of (from an answer, or to start with).
    pub fn add(&mut self, nodes: &[NodeInfo]) {
        for n in nodes {
            let key = self.key(n);
            self.candidates.entry(key).or_insert(Candidate {
                info: *n,
                state: State::Fresh,
            });
        }
        while self.candidates.len() > MAX_CANDIDATES {
            // Never drop one in flight: its answer is still expected.
            let far = self
                .candidates
                .iter()
                .rev()
                .find(|(_, c)| c.state != State::Asked)
                .map(|(k, _)| *k);
            match far {
                Some(k) => {
                    self.candidates.remove(&k);
                }
                None => break,
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.candidates
            .values()
            .filter(|c| c.state == State::Asked)
            .count()
    }

    /// The nodes to query now (marked asked).
    pub fn next_queries(&mut self) -> Vec<NodeInfo> {
        let mut room = ALPHA.saturating_sub(self.in_flight());
        let mut out = Vec::new();
        let mut live_seen = 0;
        for c in self.candidates.values_mut() {
            if room == 0 || self.sent >= MAX_QUERIES || live_seen >= K {
                break;
            }
            match c.state {
                State::Fresh => {
                    c.state = State::Asked;
                    out.push(c.info);
                    room -= 1;
                    self.sent += 1;
                    live_seen += 1;
                }
                State::Asked | State::Answered { .. } => live_seen += 1,
                State::Failed => {}
            }
        }
        out
    }

    /// `from` answered: its nodes join the candidates; `token` is kept for the announce.
    pub fn on_answer(&mut self, from: &NodeInfo, nodes: &[NodeInfo], token: Option<Vec<u8>>) {
        let key = self.key(from);
        if let Some(c) = self.candidates.get_mut(&key) {
            c.state = State::Answered { token };
        }
        self.add(nodes);
    }

    /// A query to `node` went unanswered (or was answered with an error).
    pub fn on_failure(&mut self, node: &NodeInfo) {
        let key = self.key(node);
        if let Some(c) = self.candidates.get_mut(&key) {
            c.state = State::Failed;
        }
    }

    /// Nothing in flight and nothing worth asking.
    pub fn is_done(&self) -> bool {
        if self.in_flight() > 0 {
            return false;
        }
        if self.sent >= MAX_QUERIES {
            return true;
        }
        !self
            .candidates
            .values()
            .filter(|c| c.state != State::Failed)
            .take(K)
            .any(|c| c.state == State::Fresh)
    }

    /// The [`K`] closest nodes that answered with a token, and their tokens: where to announce.
    pub fn announce_targets(&self) -> Vec<(NodeInfo, Vec<u8>)> {
        self.candidates
            .values()
            .filter_map(|c| match &c.state {
                State::Answered { token: Some(t) } => Some((c.info, t.clone())),
                _ => None,
            })
            .take(K)
            .collect()
    }

    /// The closest nodes that answered.
    pub fn answered(&self) -> Vec<NodeInfo> {
        self.candidates
            .values()
            .filter(|c| matches!(c.state, State::Answered { .. }))
            .map(|c| c.info)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(d: u8) -> NodeInfo {
        let mut id = [0u8; 20];
        id[19] = d;
        NodeInfo {
            id,
            addr: SocketAddr::from(([127, 0, 0, d], 1000)),
        }
    }

    #[test]
    fn asks_the_closest_first_alpha_at_a_time() {
        let seeds: Vec<_> = (1..=10).rev().map(node).collect();
        let mut l = Lookup::new([0; 20], &seeds);
        let first: Vec<u8> = l.next_queries().iter().map(|n| n.id[19]).collect();
        assert_eq!(first, vec![1, 2, 3, 4]);
        assert!(l.next_queries().is_empty(), "alpha in flight");
        l.on_failure(&node(1));
        assert_eq!(l.next_queries(), vec![node(5)]);
    }

    #[test]
    fn converges_on_closer_nodes_and_finishes() {
        let mut l = Lookup::new([0; 20], &[node(200), node(201)]);
        let q = l.next_queries();
        assert_eq!(q.len(), 2);
        l.on_answer(&node(200), &[node(50), node(40)], None);
        l.on_answer(&node(201), &[node(30)], Some(b"t".to_vec()));
        let q: Vec<u8> = l.next_queries().iter().map(|n| n.id[19]).collect();
        assert_eq!(q, vec![30, 40, 50]);
        for d in [30, 40, 50] {
            l.on_answer(&node(d), &[], Some(vec![d]));
        }
        assert!(l.is_done());
        let targets: Vec<u8> = l.announce_targets().iter().map(|(n, _)| n.id[19]).collect();
        assert_eq!(targets, vec![30, 40, 50, 201]);
    }

    #[test]
    fn is_done_when_everyone_failed_and_bounded_in_memory() {
        let mut l = Lookup::new([0; 20], &[node(1)]);
        l.next_queries();
        assert!(!l.is_done());
        l.on_failure(&node(1));
        assert!(l.is_done());
        let many: Vec<_> = (1..=255).map(node).collect();
        l.add(&many);
        assert!(l.candidates.len() <= MAX_CANDIDATES);
    }

    #[test]
    fn stops_after_the_query_budget() {
        let mut l = Lookup::new([0xFF; 20], &[node(1)]);
        let mut next = 0u32;
        let mut sent = 0;
        loop {
            let q = l.next_queries();
            if q.is_empty() {
                break;
            }
            sent += q.len();
            for n in q {
                // Every answer names ever closer new nodes: a lookup that would never end.
                next += 1;
                // Distance to the target: u32::MAX - next in the first bytes, shrinking.
                let mut id = [0xFFu8; 20];
                id[..4].copy_from_slice(&next.to_be_bytes());
                let closer = NodeInfo {
                    id,
                    addr: SocketAddr::from((std::net::Ipv4Addr::from(next), 1)),
                };
                l.on_answer(&n, &[closer], None);
            }
        }
        assert!(l.is_done());
        assert_eq!(sent, MAX_QUERIES);
    }
}
