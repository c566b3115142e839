//! The DHT's bounded memories, pure (time passed in): the peers other nodes announced to us
//! (`PeerStore`, for `get_peers` answers) and the per-source query budget (`RateLimit`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::dht::krpc::Id;
use crate::wire::compact::{Family, canonical};

/// Info hashes we keep peers for; an announce for a new one beyond this evicts the stalest.
pub const MAX_TORRENTS: usize = 2000;
/// Peers kept per info hash; a new one beyond this replaces the oldest.
pub const MAX_PEERS_PER_TORRENT: usize = 100;
/// An announce is forgotten after this (BEP 5 clients re-announce every 15 to 30 minutes).
pub const PEER_TTL: Duration = Duration::from_secs(30 * 60);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct PeerStore {
    torrents: HashMap<Id, Vec<(SocketAddr, Instant)>>,
}

impl PeerStore {
    /// Remembers `peer` announcing `info_hash`.
    pub fn announce(&mut self, info_hash: Id, peer: SocketAddr, now: Instant) {
        let peer = canonical(peer);
        if !self.torrents.contains_key(&info_hash) && self.torrents.len() >= MAX_TORRENTS {
            self.expire(now);
            if self.torrents.len() >= MAX_TORRENTS {
                let stalest = self
                    .torrents
                    .iter()
                    .min_by_key(|(_, peers)| peers.iter().map(|p| p.1).max())
                    .map(|(k, _)| *k);
                if let Some(k) = stalest {
                    self.torrents.remove(&k);
                }
            }
        }
        let peers = self.torrents.entry(info_hash).or_default();
        if let Some(p) = peers.iter_mut().find(|p| p.0 == peer) {
            p.1 = now;
            return;
        }
        if peers.len() >= MAX_PEERS_PER_TORRENT
            && let Some(oldest) = peers
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.1)
                .map(|(i, _)| i)
        {
            peers.swap_remove(oldest);
        }
        peers.push((peer, now));
    }

    /// Up to `max` live peers of `family` for `info_hash`, most recent first.
    pub fn peers(
        &self,
        info_hash: &Id,
        family: Family,
        max: usize,
        now: Instant,
    ) -> Vec<SocketAddr> {
        let Some(peers) = self.torrents.get(info_hash) else {
            return Vec::new();
        };
        let mut live: Vec<_> = peers
            .iter()
            .filter(|p| now.saturating_duration_since(p.1) < PEER_TTL && Family::of(&p.0) == family)
            .collect();
        live.sort_by_key(|p| std::cmp::Reverse(p.1));
        live.into_iter().take(max).map(|p| p.0).collect()
    }

    /// Drops announces older than [`PEER_TTL`].
    pub fn expire(&mut self, now: Instant) {
        self.torrents.retain(|_, peers| {
            peers.retain(|p| now.saturating_duration_since(p.1) < PEER_TTL);
            !peers.is_empty()
        });
    }

    /// Info hashes held.
    pub fn torrents(&self) -> usize {
        self.torrents.len()
    }
}

/// Queries one source IP may burst.
pub const SOURCE_BURST: f64 = 20.0;
/// Queries per second one source IP earns back.
pub const SOURCE_RATE: f64 = 5.0;
/// Sources tracked; beyond it the one idle longest is forgotten.
pub const MAX_SOURCES: usize = 4096;

/// A token bucket per source IP: a query costs one token.
#[derive(Debug, Default)]
pub struct RateLimit {
    sources: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimit {
    /// Whether `ip` may have a query answered now (spends a token when it may).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_SOURCES {
            // Full buckets carry no information: forget them first, then the longest idle.
            self.sources.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * SOURCE_RATE
                    < SOURCE_BURST
            });
            if self.sources.len() >= MAX_SOURCES
                && let Some(idle) = self
                    .sources
                    .iter()
                    .min_by_key(|(_, s)| s.1)
                    .map(|(k, _)| *k)
            {
                self.sources.remove(&idle);
            }
        }
        let (tokens, at) = self.sources.entry(ip).or_insert((SOURCE_BURST, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * SOURCE_RATE)
            .min(SOURCE_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0x0A00_0000 + n), 6881))
    }

    #[test]
    fn store_is_bounded_per_torrent_and_in_torrents() {
        let now = Instant::now();
        let mut store = PeerStore::default();
        for n in 0..500 {
            store.announce([1; 20], addr(n), now + Duration::from_millis(u64::from(n)));
        }
        let later = now + Duration::from_secs(1);
        assert_eq!(
            store.peers(&[1; 20], Family::V4, 1000, later).len(),
            MAX_PEERS_PER_TORRENT
        );
        // The newest are kept.
        assert_eq!(store.peers(&[1; 20], Family::V4, 1, later), vec![addr(499)]);
        for n in 0..2050u32 {
            let mut hash = [0u8; 20];
            hash[..4].copy_from_slice(&n.to_be_bytes());
            store.announce(hash, addr(n), now);
        }
        assert_eq!(store.torrents(), MAX_TORRENTS);
    }

    #[test]
    fn store_answers_by_family_and_forgets_old_announces() {
        let now = Instant::now();
        let mut store = PeerStore::default();
        store.announce([1; 20], addr(1), now);
        store.announce([1; 20], "[::ffff:10.0.0.9]:1".parse().unwrap(), now);
        store.announce([1; 20], "[2001:db8::1]:1".parse().unwrap(), now);
        assert_eq!(store.peers(&[1; 20], Family::V4, 10, now).len(), 2);
        assert_eq!(store.peers(&[1; 20], Family::V6, 10, now).len(), 1);
        assert!(
            store
                .peers(&[1; 20], Family::V4, 10, now + PEER_TTL)
                .is_empty()
        );
        store.expire(now + PEER_TTL);
        assert_eq!(store.torrents(), 0);
    }

    #[test]
    fn rate_limit_allows_a_burst_then_the_rate() {
        let now = Instant::now();
        let mut limit = RateLimit::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let allowed = (0..100).filter(|_| limit.allow(ip, now)).count();
        assert_eq!(allowed, 20, "SOURCE_BURST");
        assert!(
            limit.allow("10.0.0.2".parse().unwrap(), now),
            "others unaffected"
        );
        let later = now + Duration::from_secs(1);
        let allowed = (0..100).filter(|_| limit.allow(ip, later)).count();
        assert_eq!(allowed, 5, "SOURCE_RATE");
    }

    #[test]
    fn rate_limit_table_is_bounded() {
        let now = Instant::now();
        let mut limit = RateLimit::default();
        for n in 0..8192u32 {
            limit.allow(addr(n).ip(), now);
        }
        assert!(limit.sources() <= MAX_SOURCES);
    }
}
