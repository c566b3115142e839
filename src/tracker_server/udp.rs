//! The tracker's UDP front end (BEP 15): connect, announce and scrape, each answered with one
//! datagram, on the `tracker udp` thread.
//!
//! Connection ids are not stored: an id is the first 8 bytes of SHA-1 over a per-process random
//! secret, the client's address and the minute since the server started, so the tracker keeps
//! no state per client and a spoofed source address, which never sees its id, cannot make the
//! tracker send it peer lists (announce replies are larger than the requests). Ids of the current
//! and the previous minute are accepted, so an id lives one to two minutes (BEP 15: clients use
//! one for a minute).
//!
//! Malformed announces and scrapes, and those with a stale connection id, get an error packet
//! (action 3) with a message. Packets that are no request at all (shorter than 16 bytes, a
//! connect without the protocol magic, an unknown action, someone else's error packet) get
//! nothing: answering them could start an endless exchange of errors with another server.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sha1::{Digest as _, Sha1};

use super::swarm::{Announce, Crypto, InfoHash};
use super::{DEFAULT_NUMWANT, MAX_NUMWANT, Shared};
use crate::tracker::AnnounceEvent;
use crate::tracker::udp::{
    ACTION_ANNOUNCE, ACTION_CONNECT, ACTION_ERROR, ACTION_SCRAPE, PROTOCOL_ID,
};
use crate::wire::compact;

/// Info hashes per scrape at most (BEP 15), so the reply fits one datagram.
pub const MAX_SCRAPE_HASHES: usize = 74;
/// IPv6 peers per announce reply at most: 20 + 79 * 18 = 1442 bytes, one 1500-byte datagram.
pub const MAX_PEERS_V6: usize = 79;
/// Receive buffer: an announce is 98 bytes plus BEP 41 options, a full scrape 1496.
const MAX_PACKET: usize = 2048;
/// An announce without BEP 41 options.
const ANNOUNCE_LEN: usize = 98;

/// Makes and checks connection ids without storing them.
pub struct ConnectionIds {
    secret: [u8; 32],
    epoch: Instant,
}

impl ConnectionIds {
    /// Ids derived from `secret`, their minutes counted from `epoch`.
    pub fn new(secret: [u8; 32], epoch: Instant) -> ConnectionIds {
        ConnectionIds { secret, epoch }
    }

    fn minute(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() / 60
    }

    fn derive(&self, client: SocketAddr, minute: u64) -> u64 {
        let mut h = Sha1::new();
        h.update(self.secret);
        match client.ip().to_canonical() {
            std::net::IpAddr::V4(ip) => h.update(ip.octets()),
            std::net::IpAddr::V6(ip) => h.update(ip.octets()),
        }
        h.update(client.port().to_be_bytes());
        h.update(minute.to_be_bytes());
        let digest = h.finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(id)
    }

    /// The id to give `client` at `now`.
    pub fn issue(&self, client: SocketAddr, now: Instant) -> u64 {
        self.derive(client, self.minute(now))
    }

    /// Whether `id` was issued to `client` this minute or the one before.
    pub fn is_valid(&self, id: u64, client: SocketAddr, now: Instant) -> bool {
        let minute = self.minute(now);
        id == self.derive(client, minute) || (minute > 0 && id == self.derive(client, minute - 1))
    }
}

fn u32_at(packet: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&packet[at..at + 4]);
    u32::from_be_bytes(b)
}

fn u64_at(packet: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&packet[at..at + 8]);
    u64::from_be_bytes(b)
}

fn hash_at(packet: &[u8], at: usize) -> [u8; 20] {
    let mut b = [0u8; 20];
    b.copy_from_slice(&packet[at..at + 20]);
    b
}

fn header(action: u32, transaction_id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&action.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out
}

/// An error packet: action 3, the transaction id, the message.
fn error_packet(transaction_id: u32, message: &str) -> Vec<u8> {
    let mut out = header(ACTION_ERROR, transaction_id);
    out.extend_from_slice(message.as_bytes());
    out
}

/// The reply to one datagram from `from`, or `None` when it gets none.
pub(super) fn handle(
    packet: &[u8],
    from: SocketAddr,
    ids: &ConnectionIds,
    shared: &Shared,
    now: Instant,
) -> Option<Vec<u8>> {
    if packet.len() < 16 {
        return None;
    }
    let connection_id = u64_at(packet, 0);
    let action = u32_at(packet, 8);
    let transaction_id = u32_at(packet, 12);
    match action {
        ACTION_CONNECT if connection_id == PROTOCOL_ID => {
            let mut out = header(ACTION_CONNECT, transaction_id);
            out.extend_from_slice(&ids.issue(from, now).to_be_bytes());
            Some(out)
        }
        ACTION_ANNOUNCE | ACTION_SCRAPE if !ids.is_valid(connection_id, from, now) => Some(
            error_packet(transaction_id, "unknown or expired connection id"),
        ),
        ACTION_ANNOUNCE => Some(
            announce(packet, from, shared, now)
                .unwrap_or_else(|message| error_packet(transaction_id, &message)),
        ),
        ACTION_SCRAPE => Some(
            scrape(packet, shared, now)
                .unwrap_or_else(|message| error_packet(transaction_id, &message)),
        ),
        _ => None,
    }
}

/// Offsets of an announce (BEP 15): 16 info_hash, 36 peer_id, 56 downloaded, 64 left,
/// 72 uploaded, 80 event, 84 ip (ignored), 88 key, 92 num_want, 96 port.
fn announce(
    packet: &[u8],
    from: SocketAddr,
    shared: &Shared,
    now: Instant,
) -> Result<Vec<u8>, String> {
    if packet.len() < ANNOUNCE_LEN {
        return Err(format!(
            "announce must be at least {ANNOUNCE_LEN} bytes, got {}",
            packet.len()
        ));
    }
    let transaction_id = u32_at(packet, 12);
    let event = match u32_at(packet, 80) {
        0 => None,
        1 => Some(AnnounceEvent::Completed),
        2 => Some(AnnounceEvent::Started),
        3 => Some(AnnounceEvent::Stopped),
        other => return Err(format!("unknown event {other}")),
    };
    let port = u16::from_be_bytes([packet[96], packet[97]]);
    if port == 0 {
        return Err("port must not be 0".to_owned());
    }
    let ip = from.ip().to_canonical();
    let cap = if ip.is_ipv4() {
        MAX_NUMWANT
    } else {
        MAX_PEERS_V6
    };
    // num_want is signed: -1 (or any negative) asks for the default.
    let numwant = usize::try_from(i32::from_be_bytes(
        packet[92..96].try_into().expect("4 bytes"),
    ))
    .map_or(DEFAULT_NUMWANT, |n| n)
    .min(cap);
    let request = Announce {
        info_hash: hash_at(packet, 16),
        peer_id: hash_at(packet, 36),
        addr: SocketAddr::new(ip, port),
        left: u64_at(packet, 64),
        event,
        numwant,
        same_family_only: true,
        crypto: Crypto::Unknown,
    };
    let (outcome, intervals) = shared
        .announce(&request, now)
        .map_err(|refusal| refusal.to_string())?;
    let mut out = header(ACTION_ANNOUNCE, transaction_id);
    let interval = u32::try_from(intervals.interval.as_secs()).unwrap_or(u32::MAX);
    out.extend_from_slice(&interval.to_be_bytes());
    out.extend_from_slice(&outcome.incomplete.to_be_bytes());
    out.extend_from_slice(&outcome.complete.to_be_bytes());
    for peer in &outcome.peers {
        compact::encode_peer(&peer.addr, &mut out);
    }
    Ok(out)
}

fn scrape(packet: &[u8], shared: &Shared, now: Instant) -> Result<Vec<u8>, String> {
    let body = &packet[16..];
    if body.is_empty() || !body.len().is_multiple_of(20) {
        return Err(format!(
            "scrape must carry whole 20-byte info hashes, got {} bytes",
            body.len()
        ));
    }
    let hashes: Vec<InfoHash> = body
        .chunks_exact(20)
        .take(MAX_SCRAPE_HASHES)
        .map(|c| hash_at(c, 0))
        .collect();
    let known = shared.scrape(&hashes, now);
    let mut out = header(ACTION_SCRAPE, u32_at(packet, 12));
    for hash in &hashes {
        let entry = known
            .iter()
            .find(|(h, _)| h == hash)
            .map(|(_, e)| *e)
            .unwrap_or_default();
        out.extend_from_slice(&entry.complete.to_be_bytes());
        out.extend_from_slice(&entry.downloaded.to_be_bytes());
        out.extend_from_slice(&entry.incomplete.to_be_bytes());
    }
    Ok(out)
}

/// Answers datagrams until the server stops.
pub(super) fn serve(socket: &UdpSocket, shared: &Shared, ids: &ConnectionIds) {
    let mut buf = [0u8; MAX_PACKET];
    loop {
        let received = socket.recv_from(&mut buf);
        if shared.stopping() {
            return;
        }
        match received {
            Ok((n, from)) => {
                if let Some(reply) = handle(&buf[..n], from, ids, shared, Instant::now())
                    && let Err(e) = socket.send_to(&reply, from)
                {
                    log::debug!("tracker: udp {from}: send: {e}");
                }
            }
            // ICMP errors from earlier sends surface here (ECONNREFUSED): not ours to fix.
            Err(e) => {
                log::debug!("tracker: udp recv: {e}");
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::Interrupted
                ) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{TrackerConfig, TrackerServer};
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const HASH: [u8; 20] = [0xab; 20];

    fn client(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], port))
    }

    fn setup() -> (ConnectionIds, Shared, Instant) {
        let now = Instant::now();
        let shared = Shared::new(TrackerConfig::with_interval(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            Duration::from_secs(300),
        ));
        (ConnectionIds::new([9; 32], now), shared, now)
    }

    /// A connect request, typed out: magic, action 0, transaction id 0xdeadbeef.
    const CONNECT: [u8; 16] = [
        0x00, 0x00, 0x04, 0x17, 0x27, 0x10, 0x19, 0x80, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef,
    ];

    fn connect(ids: &ConnectionIds, shared: &Shared, from: SocketAddr, now: Instant) -> [u8; 8] {
        let reply = handle(&CONNECT, from, ids, shared, now).expect("a connect reply");
        assert_eq!(reply.len(), 16);
        assert_eq!(&reply[..8], &[0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]);
        reply[8..].try_into().unwrap()
    }

    /// An announce laid out field by field as BEP 15 lists them.
    fn announce_packet(conn: [u8; 8], left: u64, event: u32, numwant: i32, port: u16) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&conn);
        p.extend_from_slice(&[0, 0, 0, 1]); // action: announce
        p.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]); // transaction id
        p.extend_from_slice(&HASH);
        p.extend_from_slice(format!("-XX0001-udp{port:09}").as_bytes()); // peer id
        p.extend_from_slice(&[0; 8]); // downloaded
        p.extend_from_slice(&left.to_be_bytes());
        p.extend_from_slice(&[0; 8]); // uploaded
        p.extend_from_slice(&event.to_be_bytes());
        p.extend_from_slice(&[10, 9, 9, 9]); // ip: ignored
        p.extend_from_slice(&[0, 0, 0, 7]); // key
        p.extend_from_slice(&numwant.to_be_bytes());
        p.extend_from_slice(&port.to_be_bytes());
        assert_eq!(p.len(), 98);
        p
    }

    fn scrape_packet(conn: [u8; 8], hashes: &[[u8; 20]]) -> Vec<u8> {
        let mut p = conn.to_vec();
        p.extend_from_slice(&[0, 0, 0, 2, 0x55, 0x66, 0x77, 0x88]);
        for h in hashes {
            p.extend_from_slice(h);
        }
        p
    }

    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes(b.try_into().unwrap())
    }

    fn error_message(reply: &[u8]) -> String {
        assert_eq!(&reply[..4], &[0, 0, 0, 3], "not an error: {reply:?}");
        String::from_utf8(reply[8..].to_vec()).unwrap()
    }

    #[test]
    fn connection_ids_live_for_their_minute_and_the_next_for_that_address_only() {
        let (ids, _, t0) = setup();
        let me = client(1, 6881);
        let id = ids.issue(me, t0 + Duration::from_secs(30));
        assert!(ids.is_valid(id, me, t0 + Duration::from_secs(59)));
        assert!(ids.is_valid(id, me, t0 + Duration::from_secs(119)));
        assert!(!ids.is_valid(id, me, t0 + Duration::from_secs(120)));
        assert!(!ids.is_valid(id, client(2, 6881), t0 + Duration::from_secs(30)));
        assert!(!ids.is_valid(id, client(1, 6882), t0 + Duration::from_secs(30)));
        let other_secret = ConnectionIds::new([8; 32], t0);
        assert!(!other_secret.is_valid(id, me, t0 + Duration::from_secs(30)));
        // An IPv4-mapped source is the same client as its IPv4 form.
        let mapped = SocketAddr::new(
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
            6881,
        );
        assert!(ids.is_valid(id, mapped, t0 + Duration::from_secs(30)));
    }

    #[test]
    fn announce_returns_interval_counts_and_compact_peers() {
        let (ids, shared, now) = setup();
        let (a, b) = (client(1, 1111), client(2, 2222));
        let conn_a = connect(&ids, &shared, a, now);
        let conn_b = connect(&ids, &shared, b, now);
        let reply = handle(
            &announce_packet(conn_a, 0, 2, -1, 6881),
            a,
            &ids,
            &shared,
            now,
        )
        .unwrap();
        assert_eq!(
            reply,
            [
                0, 0, 0, 1, 0x11, 0x22, 0x33, 0x44, 0, 0, 0x01, 0x2c, 0, 0, 0, 0, 0, 0, 0, 1
            ]
        );
        let reply = handle(
            &announce_packet(conn_b, 500, 0, 10, 6882),
            b,
            &ids,
            &shared,
            now,
        )
        .unwrap();
        assert_eq!(&reply[..8], &[0, 0, 0, 1, 0x11, 0x22, 0x33, 0x44]);
        assert_eq!(be32(&reply[8..12]), 300, "interval");
        assert_eq!(
            (be32(&reply[12..16]), be32(&reply[16..20])),
            (1, 1),
            "leechers, seeders"
        );
        // The peer is the packet's source IP with the announced port, not the ip field.
        assert_eq!(&reply[20..], &[10, 0, 0, 1, 0x1a, 0xe1]);
    }

    #[test]
    fn numwant_zero_gives_no_peers_and_stopped_removes_the_peer() {
        let (ids, shared, now) = setup();
        let (a, b) = (client(1, 1111), client(2, 2222));
        let conn_a = connect(&ids, &shared, a, now);
        let conn_b = connect(&ids, &shared, b, now);
        handle(
            &announce_packet(conn_a, 9, 2, -1, 6881),
            a,
            &ids,
            &shared,
            now,
        )
        .unwrap();
        let reply = handle(
            &announce_packet(conn_b, 9, 0, 0, 6882),
            b,
            &ids,
            &shared,
            now,
        )
        .unwrap();
        assert_eq!(reply.len(), 20);
        handle(
            &announce_packet(conn_a, 9, 3, -1, 6881),
            a,
            &ids,
            &shared,
            now,
        )
        .unwrap();
        let reply = handle(
            &announce_packet(conn_b, 9, 0, -1, 6882),
            b,
            &ids,
            &shared,
            now,
        )
        .unwrap();
        assert_eq!(
            (be32(&reply[12..16]), be32(&reply[16..20]), reply.len()),
            (1, 0, 20)
        );
    }

    #[test]
    fn scrape_answers_every_hash_in_order_with_zeros_for_unknown_ones() {
        let (ids, shared, now) = setup();
        let a = client(1, 1111);
        let conn = connect(&ids, &shared, a, now);
        handle(
            &announce_packet(conn, 9, 2, -1, 6881),
            a,
            &ids,
            &shared,
            now,
        )
        .unwrap();
        handle(
            &announce_packet(conn, 0, 1, -1, 6881),
            a,
            &ids,
            &shared,
            now,
        )
        .unwrap();
        let reply = handle(
            &scrape_packet(conn, &[[1; 20], HASH]),
            a,
            &ids,
            &shared,
            now,
        )
        .unwrap();
        assert_eq!(
            reply,
            [
                0, 0, 0, 2, 0x55, 0x66, 0x77, 0x88, // action, transaction id
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // unknown torrent
                0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, // seeders 1, completed 1, leechers 0
            ]
        );
        let many = vec![HASH; 100];
        let reply = handle(&scrape_packet(conn, &many), a, &ids, &shared, now).unwrap();
        assert_eq!(reply.len(), 8 + 12 * MAX_SCRAPE_HASHES);
    }

    #[test]
    fn malformed_requests_get_error_packets() {
        let (ids, shared, now) = setup();
        let a = client(1, 1111);
        let conn = connect(&ids, &shared, a, now);
        let stale = ids.issue(a, now).wrapping_add(1).to_be_bytes();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (announce_packet(stale, 9, 0, -1, 6881), "connection id"),
            (scrape_packet(stale, &[HASH]), "connection id"),
            (
                announce_packet(conn, 9, 0, -1, 6881)[..97].to_vec(),
                "at least 98 bytes",
            ),
            (announce_packet(conn, 9, 4, -1, 6881), "unknown event 4"),
            (announce_packet(conn, 9, 0, -1, 0), "port must not be 0"),
            (scrape_packet(conn, &[]), "whole 20-byte info hashes"),
            (
                [scrape_packet(conn, &[HASH]), vec![1, 2, 3]].concat(),
                "whole 20-byte",
            ),
        ];
        for (packet, want) in cases {
            let reply = handle(&packet, a, &ids, &shared, now).expect("an error reply");
            assert_eq!(&reply[4..8], &packet[12..16], "transaction id echoed");
            let message = error_message(&reply);
            assert!(message.contains(want), "{message:?} lacks {want:?}");
        }
        // An id issued to another address is no good either.
        let reply = handle(
            &announce_packet(conn, 9, 0, -1, 6881),
            client(2, 1111),
            &ids,
            &shared,
            now,
        );
        assert!(error_message(&reply.unwrap()).contains("connection id"));
    }

    #[test]
    fn packets_that_are_no_request_get_nothing() {
        let (ids, shared, now) = setup();
        let a = client(1, 1111);
        let mut wrong_magic = CONNECT;
        wrong_magic[7] = 0x81;
        let mut unknown_action = CONNECT;
        unknown_action[11] = 9;
        let mut an_error = CONNECT;
        an_error[11] = 3;
        let junk: [&[u8]; 5] = [
            &[],
            &CONNECT[..15],
            &wrong_magic,
            &unknown_action,
            &an_error,
        ];
        for packet in junk {
            assert_eq!(handle(packet, a, &ids, &shared, now), None, "{packet:?}");
        }
        // Our own error packet, looped back, is no request either.
        let error = error_packet(7, "unknown or expired connection id");
        assert_eq!(handle(&error, a, &ids, &shared, now), None);
    }

    #[test]
    fn ipv6_announces_get_only_ipv6_peers_capped_to_one_datagram() {
        let (ids, shared, now) = setup();
        let v4 = client(1, 1111);
        let conn = connect(&ids, &shared, v4, now);
        handle(
            &announce_packet(conn, 9, 2, -1, 6881),
            v4,
            &ids,
            &shared,
            now,
        )
        .unwrap();
        for n in 0..100u16 {
            let from = SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n + 1)),
                4000,
            );
            let conn = connect(&ids, &shared, from, now);
            handle(
                &announce_packet(conn, 9, 2, 0, 5000 + n),
                from,
                &ids,
                &shared,
                now,
            )
            .unwrap();
        }
        let me = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 1);
        let conn = connect(&ids, &shared, me, now);
        let reply = handle(
            &announce_packet(conn, 9, 0, 200, 6881),
            me,
            &ids,
            &shared,
            now,
        )
        .unwrap();
        assert_eq!(reply.len(), 20 + MAX_PEERS_V6 * 18);
        assert!(reply.len() <= 1452);
        for peer in reply[20..].chunks(18) {
            assert_eq!(&peer[..2], &[0xfd, 0x00], "only IPv6 peers");
        }
        // The IPv4 requester is the only IPv4 peer: it gets nobody.
        let conn = connect(&ids, &shared, v4, now);
        let reply = handle(
            &announce_packet(conn, 9, 0, 200, 6881),
            v4,
            &ids,
            &shared,
            now,
        );
        assert_eq!(reply.unwrap().len(), 20);
    }

    /// connect, announce and scrape over real sockets, IPv4 and IPv6.
    #[test]
    fn a_udp_client_connects_announces_and_scrapes_over_loopback() {
        for listen in [
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        ] {
            let server = TrackerServer::start(TrackerConfig::with_interval(
                listen,
                Duration::from_secs(60),
            ))
            .unwrap();
            let addr = server.local_addr();
            let exchange = |socket: &UdpSocket, packet: &[u8]| -> Vec<u8> {
                socket.send_to(packet, addr).unwrap();
                let mut buf = [0u8; 2048];
                let (n, from) = socket.recv_from(&mut buf).unwrap();
                assert_eq!(from, addr);
                buf[..n].to_vec()
            };
            let open = || {
                let s = UdpSocket::bind(SocketAddr::new(listen.ip(), 0)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s
            };
            let (seeder, leecher) = (open(), open());
            let conn_s: [u8; 8] = exchange(&seeder, &CONNECT)[8..].try_into().unwrap();
            let conn_l: [u8; 8] = exchange(&leecher, &CONNECT)[8..].try_into().unwrap();
            exchange(&seeder, &announce_packet(conn_s, 0, 2, -1, 7001));
            let reply = exchange(&leecher, &announce_packet(conn_l, 1, 2, -1, 7002));
            assert_eq!((be32(&reply[12..16]), be32(&reply[16..20])), (1, 1));
            let mut want = Vec::new();
            compact::encode_peer(&SocketAddr::new(listen.ip(), 7001), &mut want);
            assert_eq!(&reply[20..], &want[..]);
            let reply = exchange(&leecher, &scrape_packet(conn_l, &[HASH]));
            assert_eq!(&reply[8..], &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
            // Junk between requests changes nothing.
            for len in [0, 1, 15, 16, 17, 98, 1000] {
                leecher.send_to(&vec![0x5a; len], addr).unwrap();
            }
            let reply = exchange(&leecher, &scrape_packet(conn_l, &[HASH]));
            assert_eq!(&reply[..4], &[0, 0, 0, 2]);
            server.stop();
        }
    }
}
