//! The tracker's memory: swarms by info hash, peers by address, and the announce and scrape
//! logic over them.
//!
//! Pure: no sockets, no threads, no clock and no global randomness. Time comes in as an `Instant`
//! argument and peers are picked with the caller's rng, so every rule here is tested with a
//! made-up clock. The HTTP and UDP front ends ([`super::http`], [`super::udp`]) turn requests
//! into an [`Announce`] or a list of info hashes and the outcome back into bytes.
//!
//! A peer is keyed by its address (source IP of the request, port it announced): the address is
//! what other peers dial, so two announces from one address are one peer whatever their peer
//! ids say. Peers that stop announcing expire after `peer_ttl`; a swarm with no peers left is
//! forgotten (its `downloaded` count with it: clients re-announce, nothing else matters).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::tracker::AnnounceEvent;

/// 20 raw bytes: the SHA-1 of a torrent's info dictionary.
pub type InfoHash = [u8; 20];

/// 20 raw bytes a client names itself with.
pub type PeerId = [u8; 20];

/// The limits the swarm logic enforces; a copy of the relevant part of
/// [`super::TrackerConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// At most this many peers are stored per torrent; later ones get peers but are not listed.
    pub max_peers_per_torrent: usize,
    /// At most this many torrents; an announce for a new one beyond it is refused.
    pub max_torrents: usize,
    /// A peer not heard from for longer than this is dropped.
    pub peer_ttl: Duration,
}

/// One announce, already validated by a front end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The client's peer id.
    pub peer_id: PeerId,
    /// The request's source IP with the port the client announced: where other peers dial it.
    pub addr: SocketAddr,
    /// Bytes the client still misses; 0 makes it a seeder.
    pub left: u64,
    /// `started`, `completed`, `stopped`, or none for a regular re-announce.
    pub event: Option<AnnounceEvent>,
    /// How many peers to return at most.
    pub numwant: usize,
    /// Return only peers of the requester's address family (UDP replies carry one family).
    pub same_family_only: bool,
    /// What the client said of message stream encryption.
    pub crypto: Crypto,
}

/// What an announce said of message stream encryption (`supportcrypto=1`, `requirecrypto=1`,
/// the keys of the MSE tracker extension); UDP announces cannot say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Crypto {
    /// A UDP announce: it may or may not encrypt.
    #[default]
    Unknown,
    /// An HTTP announce with neither key: it speaks plaintext only.
    Plaintext,
    /// `supportcrypto=1`: it takes both.
    Supported,
    /// `requirecrypto=1`: it takes encrypted connections only.
    Required,
}

impl Crypto {
    /// Whether a connection between peers that said `self` and `other` can work: one that
    /// requires encryption is of no use to one that speaks plaintext only.
    fn compatible(self, other: Crypto) -> bool {
        !matches!(
            (self, other),
            (Crypto::Required, Crypto::Plaintext) | (Crypto::Plaintext, Crypto::Required)
        )
    }
}

/// A peer handed to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwarmPeer {
    /// Where to dial it.
    pub addr: SocketAddr,
    /// The peer id it announced with.
    pub peer_id: PeerId,
    /// It said `requirecrypto=1` (the reply's `crypto_flags` byte).
    pub requires_crypto: bool,
}

/// What an announce gives back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceOutcome {
    /// Up to `numwant` other peers, picked at random.
    pub peers: Vec<SwarmPeer>,
    /// Seeders in the swarm, the requester included.
    pub complete: u32,
    /// Leechers in the swarm, the requester included.
    pub incomplete: u32,
    /// False when the swarm was full and the requester was not stored.
    pub listed: bool,
}

/// Why an announce was refused; the text is the `failure reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A new torrent while `max_torrents` swarms are active.
    #[error("tracker is full: it tracks its maximum of {max} torrents")]
    TooManyTorrents {
        /// The limit in force.
        max: usize,
    },
}

/// Scrape counts of one torrent (BEP 48 names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrapeEntry {
    /// Seeders.
    pub complete: u32,
    /// `completed` events seen since the swarm was created.
    pub downloaded: u32,
    /// Leechers.
    pub incomplete: u32,
}

/// Totals over every swarm, for logs and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwarmStats {
    /// Torrents with at least one peer.
    pub torrents: usize,
    /// Peers over all torrents.
    pub peers: usize,
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    peer_id: PeerId,
    seeder: bool,
    crypto: Crypto,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct Swarm {
    peers: HashMap<SocketAddr, Peer>,
    downloaded: u32,
}

impl Swarm {
    fn expire(&mut self, now: Instant, ttl: Duration) {
        self.peers
            .retain(|_, p| now.saturating_duration_since(p.last_seen) <= ttl);
    }

    fn counts(&self) -> ScrapeEntry {
        let seeders = self.peers.values().filter(|p| p.seeder).count();
        let leechers = self.peers.len() - seeders;
        ScrapeEntry {
            complete: saturating_u32(seeders),
            downloaded: self.downloaded,
            incomplete: saturating_u32(leechers),
        }
    }
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Every swarm the tracker knows.
#[derive(Debug, Default)]
pub struct Swarms {
    torrents: HashMap<InfoHash, Swarm>,
    last_sweep: Option<Instant>,
}

impl Swarms {
    /// No torrents yet.
    pub fn new() -> Swarms {
        Swarms::default()
    }

    /// Records `announce` at `now` and picks peers for it.
    ///
    /// `stopped` removes the requester and returns no peers. A seeder is given only leechers
    /// (other seeders have nothing for it). A peer that requires encryption and one that speaks
    /// plaintext only are not given to each other. A new peer in a full swarm still gets peers but is not
    /// stored (`listed` false). `completed` counts once per peer that was not already a seeder.
    ///
    /// # Errors
    /// [`Refusal::TooManyTorrents`] for a new torrent while `max_torrents` are tracked (after
    /// expired peers are swept).
    pub fn announce(
        &mut self,
        announce: &Announce,
        limits: &Limits,
        now: Instant,
        rng: &mut impl rand::Rng,
    ) -> Result<AnnounceOutcome, Refusal> {
        self.sweep_if_due(now, limits.peer_ttl);
        let key = announce.addr;
        if announce.event == Some(AnnounceEvent::Stopped) {
            let counts = match self.torrents.get_mut(&announce.info_hash) {
                Some(swarm) => {
                    swarm.peers.remove(&key);
                    swarm.expire(now, limits.peer_ttl);
                    let counts = swarm.counts();
                    if swarm.peers.is_empty() {
                        self.torrents.remove(&announce.info_hash);
                    }
                    counts
                }
                None => ScrapeEntry::default(),
            };
            return Ok(AnnounceOutcome {
                peers: Vec::new(),
                complete: counts.complete,
                incomplete: counts.incomplete,
                listed: false,
            });
        }
        if !self.torrents.contains_key(&announce.info_hash)
            && self.torrents.len() >= limits.max_torrents
        {
            self.sweep(now, limits.peer_ttl);
            if self.torrents.len() >= limits.max_torrents {
                return Err(Refusal::TooManyTorrents {
                    max: limits.max_torrents,
                });
            }
        }
        let swarm = self.torrents.entry(announce.info_hash).or_default();
        swarm.expire(now, limits.peer_ttl);
        let seeder = announce.left == 0;
        let was_seeder = swarm.peers.get(&key).map(|p| p.seeder);
        if announce.event == Some(AnnounceEvent::Completed) && was_seeder != Some(true) {
            swarm.downloaded = swarm.downloaded.saturating_add(1);
        }
        let listed = was_seeder.is_some() || swarm.peers.len() < limits.max_peers_per_torrent;
        if listed {
            swarm.peers.insert(
                key,
                Peer {
                    peer_id: announce.peer_id,
                    seeder,
                    crypto: announce.crypto,
                    last_seen: now,
                },
            );
        }
        let candidates: Vec<SwarmPeer> = swarm
            .peers
            .iter()
            .filter(|(addr, p)| {
                **addr != key
                    && p.peer_id != announce.peer_id
                    && !(seeder && p.seeder)
                    && announce.crypto.compatible(p.crypto)
                    && (!announce.same_family_only || addr.is_ipv4() == key.is_ipv4())
            })
            .map(|(addr, p)| SwarmPeer {
                addr: *addr,
                peer_id: p.peer_id,
                requires_crypto: p.crypto == Crypto::Required,
            })
            .collect();
        let amount = announce.numwant.min(candidates.len());
        let peers = rand::seq::index::sample(rng, candidates.len(), amount)
            .into_iter()
            .map(|i| candidates[i])
            .collect();
        let counts = swarm.counts();
        if swarm.peers.is_empty() {
            // A lone unlisted requester: do not keep an empty swarm around.
            self.torrents.remove(&announce.info_hash);
        }
        Ok(AnnounceOutcome {
            peers,
            complete: counts.complete,
            incomplete: counts.incomplete,
            listed,
        })
    }

    /// Counts for each of `hashes` that the tracker knows, in their order; unknown ones are left
    /// out.
    pub fn scrape(
        &mut self,
        hashes: &[InfoHash],
        peer_ttl: Duration,
        now: Instant,
    ) -> Vec<(InfoHash, ScrapeEntry)> {
        self.sweep_if_due(now, peer_ttl);
        hashes
            .iter()
            .filter_map(|hash| {
                let swarm = self.torrents.get_mut(hash)?;
                swarm.expire(now, peer_ttl);
                Some((*hash, swarm.counts()))
            })
            .collect()
    }

    /// Counts of up to `max` torrents (a scrape without info hashes), after a sweep.
    pub fn scrape_all(
        &mut self,
        max: usize,
        peer_ttl: Duration,
        now: Instant,
    ) -> Vec<(InfoHash, ScrapeEntry)> {
        self.sweep(now, peer_ttl);
        self.torrents
            .iter()
            .take(max)
            .map(|(hash, swarm)| (*hash, swarm.counts()))
            .collect()
    }

    /// Drops every peer not heard from for longer than `peer_ttl`, and swarms left empty.
    pub fn sweep(&mut self, now: Instant, peer_ttl: Duration) {
        self.torrents.retain(|_, swarm| {
            swarm.expire(now, peer_ttl);
            !swarm.peers.is_empty()
        });
        self.last_sweep = Some(now);
    }

    /// A full sweep costs a walk over every peer: do it at most four times per `peer_ttl`, so
    /// swarms nobody asks about do not keep their dead peers for long.
    fn sweep_if_due(&mut self, now: Instant, peer_ttl: Duration) {
        let due = self
            .last_sweep
            .is_none_or(|last| now.saturating_duration_since(last) >= peer_ttl / 4);
        if due {
            self.sweep(now, peer_ttl);
        }
    }

    /// How many torrents and peers are tracked (expired peers count until the next sweep).
    pub fn stats(&self) -> SwarmStats {
        SwarmStats {
            torrents: self.torrents.len(),
            peers: self.torrents.values().map(|s| s.peers.len()).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::HashSet;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const HASH: InfoHash = [7; 20];
    const TTL: Duration = Duration::from_secs(100);

    fn limits() -> Limits {
        Limits {
            max_peers_per_torrent: 1000,
            max_torrents: 1000,
            peer_ttl: TTL,
        }
    }

    fn v4(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), port)
    }

    fn peer_id(n: u8) -> PeerId {
        let mut id = *b"-XX0001-000000000000";
        id[19] = n;
        id
    }

    fn announce(n: u8, left: u64, event: Option<AnnounceEvent>) -> Announce {
        Announce {
            info_hash: HASH,
            peer_id: peer_id(n),
            addr: v4(n, 6881),
            left,
            event,
            numwant: 50,
            same_family_only: false,
            crypto: Crypto::Unknown,
        }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(5)
    }

    fn run(swarms: &mut Swarms, a: &Announce, now: Instant) -> AnnounceOutcome {
        swarms.announce(a, &limits(), now, &mut rng()).unwrap()
    }

    #[test]
    fn first_announce_gets_no_peers_and_counts_itself() {
        let mut s = Swarms::new();
        let out = run(
            &mut s,
            &announce(1, 100, Some(AnnounceEvent::Started)),
            Instant::now(),
        );
        assert_eq!(out.peers, vec![]);
        assert_eq!((out.complete, out.incomplete, out.listed), (0, 1, true));
    }

    #[test]
    fn peers_exclude_the_requester_by_address_and_by_peer_id() {
        let mut s = Swarms::new();
        let now = Instant::now();
        run(&mut s, &announce(1, 100, None), now);
        run(&mut s, &announce(2, 100, None), now);
        // Same peer id as 2 from a new address (a restarted client): 2's old entry is excluded.
        let mut again = announce(2, 100, None);
        again.addr = v4(2, 7000);
        let out = run(&mut s, &again, now);
        let addrs: Vec<SocketAddr> = out.peers.iter().map(|p| p.addr).collect();
        assert_eq!(addrs, vec![v4(1, 6881)]);
        assert_eq!(out.peers[0].peer_id, peer_id(1));
    }

    #[test]
    fn numwant_bounds_the_peers_and_picks_distinct_ones_at_random() {
        let mut s = Swarms::new();
        let now = Instant::now();
        for n in 1..=30 {
            run(&mut s, &announce(n, 5, None), now);
        }
        let mut me = announce(100, 5, None);
        me.numwant = 10;
        let mut seen = HashSet::new();
        for seed in 0..20 {
            let out = s
                .announce(&me, &limits(), now, &mut StdRng::seed_from_u64(seed))
                .unwrap();
            assert_eq!(out.peers.len(), 10);
            let distinct: HashSet<SocketAddr> = out.peers.iter().map(|p| p.addr).collect();
            assert_eq!(distinct.len(), 10, "no duplicates");
            assert!(!distinct.contains(&me.addr));
            seen.extend(distinct);
        }
        assert!(
            seen.len() > 20,
            "random picks cover the swarm, saw {}",
            seen.len()
        );
        me.numwant = 0;
        assert_eq!(run(&mut s, &me, now).peers, vec![]);
        me.numwant = 500;
        assert_eq!(run(&mut s, &me, now).peers.len(), 30);
    }

    #[test]
    fn counts_seeders_and_leechers_and_a_seeder_gets_only_leechers() {
        let mut s = Swarms::new();
        let now = Instant::now();
        run(&mut s, &announce(1, 0, None), now);
        run(&mut s, &announce(2, 0, None), now);
        run(&mut s, &announce(3, 10, None), now);
        let out = run(&mut s, &announce(4, 0, None), now);
        assert_eq!((out.complete, out.incomplete), (3, 1));
        let addrs: Vec<SocketAddr> = out.peers.iter().map(|p| p.addr).collect();
        assert_eq!(addrs, vec![v4(3, 6881)]);
        let out = run(&mut s, &announce(5, 10, None), now);
        assert_eq!((out.complete, out.incomplete), (3, 2));
        assert_eq!(out.peers.len(), 4);
    }

    #[test]
    fn stopped_removes_the_peer_and_forgets_an_empty_swarm() {
        let mut s = Swarms::new();
        let now = Instant::now();
        run(&mut s, &announce(1, 0, None), now);
        run(&mut s, &announce(2, 9, None), now);
        let out = run(&mut s, &announce(2, 9, Some(AnnounceEvent::Stopped)), now);
        assert_eq!(out.peers, vec![]);
        assert_eq!((out.complete, out.incomplete), (1, 0));
        assert_eq!(
            s.stats(),
            SwarmStats {
                torrents: 1,
                peers: 1
            }
        );
        run(&mut s, &announce(1, 0, Some(AnnounceEvent::Stopped)), now);
        assert_eq!(s.stats(), SwarmStats::default());
        // A stopped announce for a torrent nobody tracks creates nothing.
        run(&mut s, &announce(3, 0, Some(AnnounceEvent::Stopped)), now);
        assert_eq!(s.stats(), SwarmStats::default());
    }

    #[test]
    fn completed_counts_once_per_peer_that_was_leeching() {
        let mut s = Swarms::new();
        let now = Instant::now();
        run(&mut s, &announce(1, 9, Some(AnnounceEvent::Started)), now);
        run(&mut s, &announce(1, 0, Some(AnnounceEvent::Completed)), now);
        run(&mut s, &announce(1, 0, Some(AnnounceEvent::Completed)), now); // repeated: no count
        run(&mut s, &announce(2, 0, Some(AnnounceEvent::Completed)), now); // unknown before: counts
        let scrape = s.scrape(&[HASH, [1; 20]], TTL, now);
        assert_eq!(
            scrape,
            vec![(
                HASH,
                ScrapeEntry {
                    complete: 2,
                    downloaded: 2,
                    incomplete: 0
                }
            )]
        );
    }

    #[test]
    fn peers_that_stop_announcing_expire_after_the_ttl() {
        let mut s = Swarms::new();
        let t0 = Instant::now();
        run(&mut s, &announce(1, 9, None), t0);
        run(&mut s, &announce(2, 9, None), t0 + Duration::from_secs(60));
        // At t0 + TTL peer 1 is exactly at the limit: still there.
        let out = run(&mut s, &announce(3, 9, None), t0 + TTL);
        assert_eq!(out.peers.len(), 2);
        // A second later it is gone; peer 2 (seen at 60 s) stays.
        let out = run(
            &mut s,
            &announce(3, 9, None),
            t0 + TTL + Duration::from_secs(1),
        );
        let addrs: Vec<SocketAddr> = out.peers.iter().map(|p| p.addr).collect();
        assert_eq!(addrs, vec![v4(2, 6881)]);
        assert_eq!(out.incomplete, 2);
        // Nobody announces: a scrape much later finds nothing, and the sweep freed the swarm.
        assert_eq!(s.scrape(&[HASH], TTL, t0 + TTL * 5), vec![]);
        assert_eq!(s.stats(), SwarmStats::default());
    }

    #[test]
    fn a_reannounce_keeps_a_peer_alive() {
        let mut s = Swarms::new();
        let t0 = Instant::now();
        for k in 0..5u32 {
            run(&mut s, &announce(1, 9, None), t0 + TTL / 2 * k);
        }
        let out = run(&mut s, &announce(2, 9, None), t0 + TTL / 2 * 5);
        assert_eq!(out.peers.len(), 1);
    }

    #[test]
    fn a_full_swarm_serves_new_peers_without_listing_them() {
        let mut s = Swarms::new();
        let now = Instant::now();
        let lim = Limits {
            max_peers_per_torrent: 2,
            ..limits()
        };
        for n in 1..=2 {
            s.announce(&announce(n, 9, None), &lim, now, &mut rng())
                .unwrap();
        }
        let out = s
            .announce(&announce(3, 9, None), &lim, now, &mut rng())
            .unwrap();
        assert!(!out.listed);
        assert_eq!(out.peers.len(), 2);
        assert_eq!(s.stats().peers, 2);
        // A listed peer still re-announces in a full swarm.
        let out = s
            .announce(&announce(1, 0, None), &lim, now, &mut rng())
            .unwrap();
        assert!(out.listed);
        assert_eq!((out.complete, out.incomplete), (1, 1));
        // Once a peer expires there is room again.
        let later = now + TTL + Duration::from_secs(1);
        s.announce(
            &announce(1, 0, None),
            &lim,
            later - Duration::from_secs(2),
            &mut rng(),
        )
        .unwrap();
        let out = s
            .announce(&announce(3, 9, None), &lim, later, &mut rng())
            .unwrap();
        assert!(out.listed);
    }

    #[test]
    fn new_torrents_beyond_the_limit_are_refused_until_one_expires() {
        let mut s = Swarms::new();
        let now = Instant::now();
        let lim = Limits {
            max_torrents: 2,
            ..limits()
        };
        let on = |hash: u8, n: u8| Announce {
            info_hash: [hash; 20],
            ..announce(n, 9, None)
        };
        s.announce(&on(1, 1), &lim, now, &mut rng()).unwrap();
        s.announce(&on(2, 1), &lim, now, &mut rng()).unwrap();
        assert_eq!(
            s.announce(&on(3, 1), &lim, now, &mut rng()),
            Err(Refusal::TooManyTorrents { max: 2 })
        );
        // Known torrents still work.
        s.announce(&on(2, 2), &lim, now, &mut rng()).unwrap();
        // Torrent 1's only peer expires: the third torrent fits.
        let later = now + TTL + Duration::from_secs(1);
        s.announce(&on(2, 2), &lim, later - Duration::from_secs(5), &mut rng())
            .unwrap();
        s.announce(&on(3, 1), &lim, later, &mut rng()).unwrap();
        assert_eq!(s.stats().torrents, 2);
    }

    #[test]
    fn same_family_only_filters_ipv6_peers_for_an_ipv4_requester() {
        let mut s = Swarms::new();
        let now = Instant::now();
        let mut six = announce(1, 9, None);
        six.addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 6881);
        run(&mut s, &six, now);
        run(&mut s, &announce(2, 9, None), now);
        let mut me = announce(3, 9, None);
        assert_eq!(run(&mut s, &me, now).peers.len(), 2);
        me.same_family_only = true;
        let out = run(&mut s, &me, now);
        let addrs: Vec<SocketAddr> = out.peers.iter().map(|p| p.addr).collect();
        assert_eq!(addrs, vec![v4(2, 6881)]);
    }

    #[test]
    fn a_peer_requiring_encryption_and_a_plaintext_one_are_not_given_to_each_other() {
        let mut s = Swarms::new();
        let now = Instant::now();
        let with = |n: u8, crypto: Crypto| Announce {
            crypto,
            ..announce(n, 9, None)
        };
        run(&mut s, &with(1, Crypto::Required), now);
        run(&mut s, &with(2, Crypto::Plaintext), now);
        run(&mut s, &with(3, Crypto::Unknown), now);
        let given = |s: &mut Swarms, a: &Announce| {
            let mut peers: Vec<(SocketAddr, bool)> = run(s, a, now)
                .peers
                .iter()
                .map(|p| (p.addr, p.requires_crypto))
                .collect();
            peers.sort();
            peers
        };
        assert_eq!(
            given(&mut s, &with(4, Crypto::Supported)),
            vec![
                (v4(1, 6881), true),
                (v4(2, 6881), false),
                (v4(3, 6881), false)
            ]
        );
        assert_eq!(
            given(&mut s, &with(1, Crypto::Required)),
            vec![(v4(3, 6881), false), (v4(4, 6881), false)]
        );
        assert_eq!(
            given(&mut s, &with(2, Crypto::Plaintext)),
            vec![(v4(3, 6881), false), (v4(4, 6881), false)]
        );
        // A UDP announce cannot say: it gets, and is given to, everyone.
        assert_eq!(given(&mut s, &with(3, Crypto::Unknown)).len(), 3);
    }

    #[test]
    fn scrape_all_is_capped() {
        let mut s = Swarms::new();
        let now = Instant::now();
        for h in 0..10 {
            let a = Announce {
                info_hash: [h; 20],
                ..announce(1, 0, None)
            };
            run(&mut s, &a, now);
        }
        assert_eq!(s.scrape_all(100, TTL, now).len(), 10);
        assert_eq!(s.scrape_all(4, TTL, now).len(), 4);
    }
}
