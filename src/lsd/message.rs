//! The BEP 14 announce (`BT-SEARCH`) as pure data: [`Announce::parse`] turns a received datagram
//! into the port and info hashes it names, [`encode`] writes the datagrams that announce ours.
//! No sockets, no clocks; the LSD thread (`lsd/mod.rs`) does the I/O.
//!
//! ```text
//! BT-SEARCH * HTTP/1.1\r\n
//! Host: 239.192.152.143:6771\r\n
//! Port: 6881\r\n
//! Infohash: 0123456789abcdef0123456789abcdef01234567\r\n
//! cookie: 5d1f2a93\r\n
//! \r\n
//! \r\n
//! ```
//! Header names are case-insensitive; one message may carry several `Infohash` headers.

use crate::metainfo::InfoHash;

/// The request line of every announce.
const REQUEST_LINE: &str = "BT-SEARCH * HTTP/1.1";
/// The largest datagram we send: fits one Ethernet frame with room for IPv6 and UDP headers.
pub const MAX_DATAGRAM_BYTES: usize = 1400;
/// Info hashes taken from one received message; the rest are ignored (a datagram we send holds
/// at most 25).
pub const MAX_HASHES_PER_MESSAGE: usize = 32;

/// What one announce says: a peer listening on `port` (of the datagram's source address) has
/// these torrents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce {
    pub port: u16,
    pub info_hashes: Vec<InfoHash>,
    /// The announcer's `cookie`, if any: a client recognises its own announces by it.
    pub cookie: Option<String>,
}

/// Why a datagram is not an announce we can use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LsdError {
    #[error("not UTF-8 text")]
    NotText,
    #[error("the request line is not `BT-SEARCH * HTTP/1.1`")]
    NotSearch,
    #[error("no blank line ends the headers")]
    Unterminated,
    #[error("header line without a colon")]
    BadHeader,
    #[error("no Port header")]
    NoPort,
    #[error("Port {0:?} is not a port number from 1 to 65535")]
    BadPort(String),
    #[error("no Infohash header")]
    NoInfoHash,
    #[error("Infohash {0:?} is not 40 hex digits")]
    BadInfoHash(String),
}

impl Announce {
    /// Parses one received datagram.
    ///
    /// # Errors
    /// An [`LsdError`] naming what is missing or malformed; the datagram is to be ignored.
    pub fn parse(datagram: &[u8]) -> Result<Announce, LsdError> {
        let text = std::str::from_utf8(datagram).map_err(|_| LsdError::NotText)?;
        let (head, _) = text.split_once("\r\n\r\n").ok_or(LsdError::Unterminated)?;
        let mut lines = head.split("\r\n");
        if lines.next() != Some(REQUEST_LINE) {
            return Err(LsdError::NotSearch);
        }
        let mut port = None;
        let mut info_hashes = Vec::new();
        let mut cookie = None;
        for line in lines {
            let (name, value) = line.split_once(':').ok_or(LsdError::BadHeader)?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("port") {
                let p = value
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| LsdError::BadPort(value.to_owned()))?;
                port = Some(p);
            } else if name.eq_ignore_ascii_case("infohash") {
                let hash = InfoHash::from_hex(value)
                    .ok_or_else(|| LsdError::BadInfoHash(value.to_owned()))?;
                if info_hashes.len() < MAX_HASHES_PER_MESSAGE && !info_hashes.contains(&hash) {
                    info_hashes.push(hash);
                }
            } else if name.eq_ignore_ascii_case("cookie") {
                cookie = Some(value.to_owned());
            }
        }
        let port = port.ok_or(LsdError::NoPort)?;
        if info_hashes.is_empty() {
            return Err(LsdError::NoInfoHash);
        }
        Ok(Announce {
            port,
            info_hashes,
            cookie,
        })
    }
}

/// The datagrams announcing `hashes` for a peer on `port`, each at most
/// [`MAX_DATAGRAM_BYTES`], with as many `Infohash` headers as fit. `host` is the group's
/// `IP:PORT` as the `Host` header writes it.
pub fn encode(host: &str, port: u16, cookie: &str, hashes: &[InfoHash]) -> Vec<Vec<u8>> {
    let head = format!("{REQUEST_LINE}\r\nHost: {host}\r\nPort: {port}\r\n");
    let tail = format!("cookie: {cookie}\r\n\r\n\r\n");
    let mut out = Vec::new();
    let mut current = String::new();
    for hash in hashes {
        let line = format!("Infohash: {}\r\n", hash.to_hex());
        if !current.is_empty()
            && head.len() + current.len() + line.len() + tail.len() > MAX_DATAGRAM_BYTES
        {
            out.push(format!("{head}{current}{tail}").into_bytes());
            current.clear();
        }
        current.push_str(&line);
    }
    if !current.is_empty() {
        out.push(format!("{head}{current}{tail}").into_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "FEDCBA9876543210FEDCBA9876543210FEDCBA98";

    fn hash(hex: &str) -> InfoHash {
        InfoHash::from_hex(hex).unwrap()
    }

    #[test]
    fn parses_libtorrents_announce_with_a_cookie() {
        let wire = format!(
            "BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\nInfohash: {A}\r\ncookie: 7f3a\r\n\r\n\r\n"
        );
        assert_eq!(
            Announce::parse(wire.as_bytes()),
            Ok(Announce {
                port: 6881,
                info_hashes: vec![hash(A)],
                cookie: Some("7f3a".into()),
            })
        );
    }

    #[test]
    fn header_names_are_case_insensitive_and_hashes_repeat() {
        let wire = format!(
            "BT-SEARCH * HTTP/1.1\r\nPORT:51413\r\ninfohash: {A}\r\nINFOHASH: {B}\r\ninfohash: {A}\r\n\r\n"
        );
        let announce = Announce::parse(wire.as_bytes()).unwrap();
        assert_eq!(announce.port, 51413);
        assert_eq!(announce.info_hashes, vec![hash(A), hash(B)]);
        assert_eq!(announce.cookie, None);
    }

    #[test]
    fn rejects_what_is_not_a_usable_announce() {
        let cases: Vec<(String, LsdError)> = vec![
            (
                format!("M-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: {A}\r\n\r\n"),
                LsdError::NotSearch,
            ),
            (
                format!("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: {A}\r\n"),
                LsdError::Unterminated,
            ),
            (
                format!("BT-SEARCH * HTTP/1.1\r\nInfohash: {A}\r\n\r\n"),
                LsdError::NoPort,
            ),
            (
                format!("BT-SEARCH * HTTP/1.1\r\nPort: 0\r\nInfohash: {A}\r\n\r\n"),
                LsdError::BadPort("0".into()),
            ),
            (
                format!("BT-SEARCH * HTTP/1.1\r\nPort: 70000\r\nInfohash: {A}\r\n\r\n"),
                LsdError::BadPort("70000".into()),
            ),
            (
                "BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n\r\n".into(),
                LsdError::NoInfoHash,
            ),
            (
                "BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: 0123\r\n\r\n".into(),
                LsdError::BadInfoHash("0123".into()),
            ),
            (
                format!("BT-SEARCH * HTTP/1.1\r\nPort 1\r\nInfohash: {A}\r\n\r\n"),
                LsdError::BadHeader,
            ),
        ];
        for (wire, want) in cases {
            assert_eq!(Announce::parse(wire.as_bytes()), Err(want), "{wire:?}");
        }
        assert_eq!(Announce::parse(&[0xff, 0xfe]), Err(LsdError::NotText));
    }

    #[test]
    fn keeps_at_most_the_bound_of_hashes_from_one_message() {
        let mut wire = String::from("BT-SEARCH * HTTP/1.1\r\nPort: 9\r\n");
        for i in 0..100u8 {
            let mut h = [0u8; 20];
            h[0] = i;
            wire.push_str(&format!("Infohash: {}\r\n", InfoHash(h).to_hex()));
        }
        wire.push_str("\r\n");
        let announce = Announce::parse(wire.as_bytes()).unwrap();
        assert_eq!(announce.info_hashes.len(), MAX_HASHES_PER_MESSAGE);
    }

    #[test]
    fn encodes_one_datagram_for_few_hashes_and_parses_back() {
        let out = encode("239.192.152.143:6771", 6881, "c0ffee", &[hash(A), hash(B)]);
        assert_eq!(out.len(), 1);
        let want = format!(
            "BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\nInfohash: {A}\r\nInfohash: {}\r\ncookie: c0ffee\r\n\r\n\r\n",
            B.to_ascii_lowercase()
        );
        assert_eq!(String::from_utf8(out[0].clone()).unwrap(), want);
        let back = Announce::parse(&out[0]).unwrap();
        assert_eq!(back.info_hashes, vec![hash(A), hash(B)]);
        assert_eq!(back.cookie.as_deref(), Some("c0ffee"));
    }

    #[test]
    fn splits_many_hashes_over_datagrams_that_fit() {
        let hashes: Vec<InfoHash> = (0..60u8)
            .map(|i| {
                let mut h = [0u8; 20];
                h[19] = i;
                InfoHash(h)
            })
            .collect();
        let out = encode("[ff15::efc0:988f]:6771", 1, "x", &hashes);
        assert!(out.len() >= 3, "{} datagrams", out.len());
        let mut seen = Vec::new();
        for datagram in &out {
            assert!(datagram.len() <= MAX_DATAGRAM_BYTES, "{}", datagram.len());
            seen.extend(Announce::parse(datagram).unwrap().info_hashes);
        }
        assert_eq!(seen, hashes);
        assert!(encode("h", 1, "x", &[]).is_empty());
    }
}
