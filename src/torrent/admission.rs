//! Who may hold one of a torrent's peer slots (pure): which connected peer makes room for a
//! newcomer when the torrent is full, how many connections one address prefix may hold, and
//! which peers that neither side is interested in are let go while others wait. The
//! coordinator asks; this module knows nothing of sockets or threads, and time comes in as
//! durations.
//!
//! "Useful" means, in this order: payload moved either way lately ([`RECENT_PAYLOAD`]); a
//! peer younger than [`GRACE`] has not had the chance yet and is kept; interest in either
//! direction; then, between equals, the peer idle longest goes first and BEP 40's canonical
//! priority (the same number on both ends of a connection) breaks ties, lower going first.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::torrent::picker::PeerKey;

/// A peer that moved payload this recently is never dropped to make room.
pub const RECENT_PAYLOAD: Duration = Duration::from_secs(30);
/// A newly connected peer is kept this long whatever it did: its handshakes, bitfield and
/// first requests take a moment.
pub const GRACE: Duration = Duration::from_secs(5);
/// While others wait for a slot, a peer neither side has been interested in for this long
/// (and that moved no payload) is let go.
pub const IDLE_UNINTERESTED: Duration = Duration::from_secs(60);

/// What the policy needs to know of one connected peer.
#[derive(Clone, Copy, Debug)]
pub struct PeerView {
    pub key: PeerKey,
    /// Since the connection was made.
    pub connected_for: Duration,
    /// Since payload last moved either way; `None` if it never did.
    pub since_payload: Option<Duration>,
    /// We are interested in it, or it in us.
    pub interested: bool,
    /// Since either side was last interested (since the connection, if never).
    pub uninterested_for: Duration,
    /// BEP 40 priority of the connection ([`canonical_priority`]).
    pub priority: u32,
}

impl PeerView {
    fn protected(&self) -> bool {
        self.since_payload.is_some_and(|d| d < RECENT_PAYLOAD) || self.connected_for < GRACE
    }

    /// How long it has been of no use: since its last payload, or since it connected.
    fn idle_for(&self) -> Duration {
        self.since_payload.unwrap_or(self.connected_for)
    }
}

/// The peer to drop so that a newcomer gets its slot: the least useful one, unless every
/// peer is useful (then the newcomer is refused).
#[must_use]
pub fn make_room(peers: &[PeerView]) -> Option<PeerKey> {
    peers
        .iter()
        .filter(|p| !p.protected())
        .min_by_key(|p| (p.interested, std::cmp::Reverse(p.idle_for()), p.priority))
        .map(|p| p.key)
}

/// The peers to let go because neither side has been interested for [`IDLE_UNINTERESTED`]
/// and they moved no payload meanwhile; only when `others_waiting`.
#[must_use]
pub fn idle_to_drop(peers: &[PeerView], others_waiting: bool) -> Vec<PeerKey> {
    if !others_waiting {
        return Vec::new();
    }
    peers
        .iter()
        .filter(|p| !p.protected() && !p.interested && p.uninterested_for >= IDLE_UNINTERESTED)
        .map(|p| p.key)
        .collect()
}

/// The network an address belongs to for `peers.max_per_prefix`: its /24 (IPv4) or /48
/// (IPv6). An IPv4-mapped IPv6 address counts as the IPv4 one.
#[must_use]
pub fn prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[6..].fill(0);
            IpAddr::from(octets)
        }
    }
}

/// BEP 40 canonical peer priority of the connection between `a` and `b`: CRC32-C of both
/// addresses, masked so that only their networks count unless they are close, in ascending
/// order (the ports when the IPs are the same). Both ends compute the same number.
#[must_use]
pub fn canonical_priority(a: SocketAddr, b: SocketAddr) -> u32 {
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    if ia == ib {
        let (lo, hi) = if a.port() <= b.port() {
            (a.port(), b.port())
        } else {
            (b.port(), a.port())
        };
        let mut bytes = [0u8; 4];
        bytes[..2].copy_from_slice(&lo.to_be_bytes());
        bytes[2..].copy_from_slice(&hi.to_be_bytes());
        return crc.checksum(&bytes);
    }
    let (mut xa, mut xb): (Vec<u8>, Vec<u8>) = match (ia, ib) {
        (IpAddr::V4(x), IpAddr::V4(y)) => (x.octets().to_vec(), y.octets().to_vec()),
        _ => (to_v6(ia).octets().to_vec(), to_v6(ib).octets().to_vec()),
    };
    let mask = mask_for(&xa, &xb);
    for (byte, m) in xa.iter_mut().zip(&mask) {
        *byte &= m;
    }
    for (byte, m) in xb.iter_mut().zip(&mask) {
        *byte &= m;
    }
    if xb < xa {
        std::mem::swap(&mut xa, &mut xb);
    }
    xa.extend_from_slice(&xb);
    crc.checksum(&xa)
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// BEP 40's mask: 0x55 for each byte past the common prefix's whole bytes plus one (for IPv4
/// at least the first two bytes are kept), 0xFF up to there.
fn mask_for(a: &[u8], b: &[u8]) -> Vec<u8> {
    // IPv4: FF.FF.55.55 / same /16: FF.FF.FF.55 / same /24: FF.FF.FF.FF.
    // IPv6: FFFF:FFFF:FFFF:5555:... / same /48: one more FF byte / and so on.
    let kept_min = if a.len() == 4 { 2 } else { 6 };
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let kept = if common >= kept_min {
        (common + 1).min(a.len())
    } else {
        kept_min
    };
    (0..a.len())
        .map(|i| if i < kept { 0xFF } else { 0x55 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn canonical_priority_matches_the_test_vectors_of_bep_40() {
        assert_eq!(
            canonical_priority(addr("123.213.32.10:0"), addr("98.76.54.32:0")),
            0xec2d_7224
        );
        assert_eq!(
            canonical_priority(addr("123.213.32.10:0"), addr("123.213.32.234:0")),
            0x9956_8189
        );
        // Symmetric, and the ports decide between equal IPs.
        assert_eq!(
            canonical_priority(addr("98.76.54.32:1"), addr("123.213.32.10:2")),
            canonical_priority(addr("123.213.32.10:2"), addr("98.76.54.32:1"))
        );
        assert_ne!(
            canonical_priority(addr("10.0.0.1:1"), addr("10.0.0.1:2")),
            canonical_priority(addr("10.0.0.1:1"), addr("10.0.0.1:3"))
        );
    }

    #[test]
    fn prefixes_are_slash_24_and_slash_48() {
        assert_eq!(
            prefix("10.1.2.3".parse().unwrap()),
            prefix("10.1.2.200".parse().unwrap())
        );
        assert_ne!(
            prefix("10.1.2.3".parse().unwrap()),
            prefix("10.1.3.3".parse().unwrap())
        );
        assert_eq!(
            prefix("2001:db8:1:ffff::1".parse().unwrap()),
            prefix("2001:db8:1::2".parse().unwrap())
        );
        assert_ne!(
            prefix("2001:db8:1::1".parse().unwrap()),
            prefix("2001:db8:2::1".parse().unwrap())
        );
        assert_eq!(
            prefix("::ffff:10.1.2.3".parse().unwrap()),
            prefix("10.1.2.9".parse().unwrap())
        );
    }

    /// A peer connected `connected` s ago whose payload moved `idle` s ago (never when equal).
    fn peer(key: PeerKey, connected: u64, idle: u64, interested: bool, priority: u32) -> PeerView {
        PeerView {
            key,
            connected_for: Duration::from_secs(connected),
            since_payload: (idle < connected).then(|| Duration::from_secs(idle)),
            interested,
            uninterested_for: Duration::from_secs(if interested { 0 } else { connected }),
            priority,
        }
    }

    #[test]
    fn room_is_made_by_the_least_useful_peer_and_never_by_a_useful_one() {
        // 1 moved payload lately, 2 is new: both kept. 3 is interested but idle, 4 and 5 are
        // idle and uninterested: 4 has been idle longer.
        let peers = [
            peer(1, 600, 2, true, 0),
            peer(2, 3, 3, false, 0),
            peer(3, 300, 300, true, 0),
            peer(4, 500, 500, false, 9),
            peer(5, 400, 400, false, 1),
        ];
        assert_eq!(make_room(&peers), Some(4));
        assert_eq!(make_room(&peers[..3]), Some(3), "interest only ranks");
        assert_eq!(make_room(&peers[..2]), None, "everyone is useful: refuse");
        // Equal idleness: the lower BEP 40 priority goes first.
        let tied = [peer(6, 100, 100, false, 7), peer(7, 100, 100, false, 3)];
        assert_eq!(make_room(&tied), Some(7));
        // Connected 10 s ago and silent since: past its grace, and of no use.
        assert_eq!(make_room(&[peer(8, 10, 10, false, 0)]), Some(8));
    }

    #[test]
    fn peers_idle_without_interest_go_only_while_others_wait() {
        let peers = [
            peer(1, 120, 120, false, 0),
            peer(2, 120, 120, true, 0),
            peer(3, 30, 30, false, 0),
            peer(4, 120, 10, false, 0),
        ];
        assert_eq!(idle_to_drop(&peers, true), vec![1]);
        assert!(idle_to_drop(&peers, false).is_empty());
    }
}
