//! Compact peer and node info, the one codec of every wire format that carries addresses
//! (BEP 23 tracker replies over HTTP, BEP 15 over UDP, BEP 11 PEX, BEP 10 `yourip`, BEP 5 and
//! BEP 32 DHT nodes, and the embedded tracker's replies): a bare IP is 4 bytes (IPv4) or 16
//! (IPv6); a peer is its address, 6 bytes for IPv4 (4 address + 2 port, big-endian) and 18 for
//! IPv6; a DHT node is its 20-byte id followed by a compact peer, 26 or 38 bytes. An IPv4-mapped
//! IPv6 address is written as the IPv4 one it is. Pure: bytes in, values out, and back.
//! [`decode_peers`] and [`decode_nodes`] refuse a buffer whose length is not a whole number of
//! entries; [`whole_peers`] reads the whole entries and leaves a trailing partial one, for
//! formats where the entries before it are still good (tracker replies, PEX).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Bytes of one compact IPv4 peer.
pub const PEER_V4_LEN: usize = 6;
/// Bytes of one compact IPv6 peer.
pub const PEER_V6_LEN: usize = 18;
/// Bytes of one compact IPv4 node (id + peer).
pub const NODE_V4_LEN: usize = 26;
/// Bytes of one compact IPv6 node (id + peer).
pub const NODE_V6_LEN: usize = 38;

/// The address family of a compact list (`peers`/`nodes` are IPv4, `peers6`/`nodes6` IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &SocketAddr) -> Family {
        match addr {
            SocketAddr::V4(_) => Family::V4,
            SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some() => Family::V4,
            SocketAddr::V6(_) => Family::V6,
        }
    }

    /// Bytes of one compact peer of this family.
    pub const fn peer_len(self) -> usize {
        match self {
            Family::V4 => PEER_V4_LEN,
            Family::V6 => PEER_V6_LEN,
        }
    }

    /// Bytes of one compact node of this family.
    pub const fn node_len(self) -> usize {
        20 + self.peer_len()
    }
}

/// A compact list whose length is no multiple of its entry size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("compact {what} list of {len} bytes is not a multiple of {entry}")]
pub struct CompactError {
    pub what: &'static str,
    pub len: usize,
    pub entry: usize,
}

/// A DHT node: its id and where it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub id: [u8; 20],
    pub addr: SocketAddr,
}

/// An IPv4-mapped IPv6 address as the IPv4 one it is; others unchanged.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Appends `addr` as a compact peer (6 or 18 bytes by its family; a mapped IPv4 is 6).
pub fn encode_peer(addr: &SocketAddr, out: &mut Vec<u8>) {
    match canonical(*addr) {
        SocketAddr::V4(a) => out.extend_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => out.extend_from_slice(&a.ip().octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Appends `ip` as a bare compact IP: 4 bytes for IPv4 (a mapped IPv4 too), 16 for IPv6.
pub fn encode_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
}

/// A bare compact IP: exactly 4 bytes (IPv4) or 16 (IPv6; a mapped IPv4 comes back as the
/// IPv4 it is, as [`encode_ip`] writes it), `None` for any other length.
pub fn decode_ip(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::from(v4))
    } else {
        <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|v6| IpAddr::from(v6).to_canonical())
    }
}

/// `addrs` as two compact peer lists, IPv4 (mapped ones included) and IPv6, in their order.
pub fn encode_peers<'a>(addrs: impl IntoIterator<Item = &'a SocketAddr>) -> (Vec<u8>, Vec<u8>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for addr in addrs {
        match Family::of(addr) {
            Family::V4 => encode_peer(addr, &mut v4),
            Family::V6 => encode_peer(addr, &mut v6),
        }
    }
    (v4, v6)
}

/// Appends `node` as a compact node (26 or 38 bytes).
pub fn encode_node(node: &NodeInfo, out: &mut Vec<u8>) {
    out.extend_from_slice(&node.id);
    encode_peer(&node.addr, out);
}

/// One compact peer of `family` from exactly its bytes.
fn peer_from(family: Family, bytes: &[u8]) -> SocketAddr {
    let n = bytes.len();
    let port = u16::from_be_bytes([bytes[n - 2], bytes[n - 1]]);
    let ip = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::V6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&bytes[..16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    };
    SocketAddr::new(ip, port)
}

/// Decodes one compact peer of `family` (exactly 6 or 18 bytes).
///
/// # Errors
/// When `bytes` is not exactly one entry long.
pub fn decode_peer(family: Family, bytes: &[u8]) -> Result<SocketAddr, CompactError> {
    if bytes.len() != family.peer_len() {
        return Err(CompactError {
            what: "peer",
            len: bytes.len(),
            entry: family.peer_len(),
        });
    }
    Ok(peer_from(family, bytes))
}

/// Decodes a list of compact peers of `family`.
///
/// # Errors
/// When the length is not a multiple of the entry size.
pub fn decode_peers(family: Family, bytes: &[u8]) -> Result<Vec<SocketAddr>, CompactError> {
    let entry = family.peer_len();
    if !bytes.len().is_multiple_of(entry) {
        return Err(CompactError {
            what: "peer",
            len: bytes.len(),
            entry,
        });
    }
    Ok(whole_peers(family, bytes).collect())
}

/// The whole compact peers of `family` in `bytes`, as they are (port 0 and unspecified
/// addresses included: what to dial is the caller's business); a trailing partial entry is
/// left out, the entries before it are still good.
pub fn whole_peers(family: Family, bytes: &[u8]) -> impl Iterator<Item = SocketAddr> + '_ {
    bytes
        .chunks_exact(family.peer_len())
        .map(move |c| peer_from(family, c))
}

/// Decodes a list of compact nodes of `family`.
///
/// # Errors
/// When the length is not a multiple of the entry size.
pub fn decode_nodes(family: Family, bytes: &[u8]) -> Result<Vec<NodeInfo>, CompactError> {
    let entry = family.node_len();
    if !bytes.len().is_multiple_of(entry) {
        return Err(CompactError {
            what: "node",
            len: bytes.len(),
            entry,
        });
    }
    Ok(bytes
        .chunks_exact(entry)
        .map(|c| {
            let mut id = [0u8; 20];
            id.copy_from_slice(&c[..20]);
            NodeInfo {
                id,
                addr: peer_from(family, &c[20..]),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_peer_is_six_bytes_both_ways() {
        let wire = [10, 0, 0, 2, 0x1A, 0xE1];
        let addr: SocketAddr = "10.0.0.2:6881".parse().unwrap();
        assert_eq!(decode_peer(Family::V4, &wire).unwrap(), addr);
        let mut out = Vec::new();
        encode_peer(&addr, &mut out);
        assert_eq!(out, wire);
    }

    #[test]
    fn ipv6_peer_is_eighteen_bytes_both_ways() {
        let mut wire = vec![0x20, 0x01, 0x0d, 0xb8];
        wire.extend_from_slice(&[0; 11]);
        wire.extend_from_slice(&[1, 0x1A, 0xE1]);
        let addr: SocketAddr = "[2001:db8::1]:6881".parse().unwrap();
        assert_eq!(decode_peers(Family::V6, &wire).unwrap(), vec![addr]);
        let mut out = Vec::new();
        encode_peer(&addr, &mut out);
        assert_eq!(out, wire);
    }

    #[test]
    fn mapped_ipv4_encodes_as_six_bytes() {
        let addr: SocketAddr = "[::ffff:10.0.0.2]:6881".parse().unwrap();
        let mut out = Vec::new();
        encode_peer(&addr, &mut out);
        assert_eq!(out, [10, 0, 0, 2, 0x1A, 0xE1]);
        assert_eq!(Family::of(&addr), Family::V4);
    }

    #[test]
    fn nodes_round_trip_in_both_families() {
        let mut wire = vec![7u8; 20];
        wire.extend_from_slice(&[127, 0, 0, 1, 0, 80]);
        wire.extend_from_slice(&[9u8; 20]);
        wire.extend_from_slice(&[192, 168, 1, 1, 0xFF, 0xFF]);
        let nodes = decode_nodes(Family::V4, &wire).unwrap();
        assert_eq!(
            nodes,
            vec![
                NodeInfo {
                    id: [7; 20],
                    addr: "127.0.0.1:80".parse().unwrap()
                },
                NodeInfo {
                    id: [9; 20],
                    addr: "192.168.1.1:65535".parse().unwrap()
                }
            ]
        );
        let mut out = Vec::new();
        for n in &nodes {
            encode_node(n, &mut out);
        }
        assert_eq!(out, wire);
        let v6 = NodeInfo {
            id: [3; 20],
            addr: "[::1]:6881".parse().unwrap(),
        };
        let mut out = Vec::new();
        encode_node(&v6, &mut out);
        assert_eq!(out.len(), NODE_V6_LEN);
        assert_eq!(decode_nodes(Family::V6, &out).unwrap(), vec![v6]);
    }

    #[test]
    fn bare_ips_are_four_or_sixteen_bytes() {
        for (text, len) in [("10.0.0.2", 4), ("::ffff:10.0.0.2", 4), ("2001:db8::1", 16)] {
            let ip: IpAddr = text.parse().unwrap();
            let mut out = Vec::new();
            encode_ip(ip, &mut out);
            assert_eq!(out.len(), len, "{text}");
            assert_eq!(decode_ip(&out), Some(ip.to_canonical()), "{text}");
        }
        assert_eq!(
            decode_ip(&[127, 0, 0, 2]),
            Some("127.0.0.2".parse().unwrap())
        );
        for len in [0, 3, 5, 6, 15, 17, 18] {
            assert_eq!(decode_ip(&vec![1; len]), None, "{len}");
        }
    }

    #[test]
    fn peer_lists_split_by_family_in_order() {
        let addrs: Vec<SocketAddr> = ["127.0.0.2:6881", "[::1]:7000", "[::ffff:10.0.0.1]:80"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let (v4, v6) = encode_peers(&addrs);
        assert_eq!(v4, [127, 0, 0, 2, 0x1A, 0xE1, 10, 0, 0, 1, 0, 80]);
        assert_eq!(v6.len(), PEER_V6_LEN);
        assert_eq!(
            decode_peers(Family::V4, &v4).unwrap(),
            vec![addrs[0], "10.0.0.1:80".parse().unwrap()]
        );
        assert_eq!(decode_peers(Family::V6, &v6).unwrap(), vec![addrs[1]]);
    }

    #[test]
    fn whole_peers_leave_a_trailing_partial_entry() {
        let wire = [10, 0, 0, 2, 0x1A, 0xE1, 0, 0, 0, 0, 0, 0, 9, 9, 9];
        let peers: Vec<SocketAddr> = whole_peers(Family::V4, &wire).collect();
        assert_eq!(
            peers,
            vec![
                "10.0.0.2:6881".parse().unwrap(),
                "0.0.0.0:0".parse().unwrap()
            ]
        );
        assert!(decode_peers(Family::V4, &wire).is_err());
        assert_eq!(whole_peers(Family::V6, &[0; 17]).count(), 0);
    }

    #[test]
    fn refuses_partial_entries() {
        for len in [1, 5, 7, 25, 27] {
            let bytes = vec![0u8; len];
            if len % 6 != 0 {
                assert!(decode_peers(Family::V4, &bytes).is_err(), "{len}");
            }
            if len % 26 != 0 {
                assert!(decode_nodes(Family::V4, &bytes).is_err(), "{len}");
            }
        }
        assert!(decode_peer(Family::V6, &[0; 6]).is_err());
        assert_eq!(decode_nodes(Family::V6, &[]).unwrap(), vec![]);
    }
}
