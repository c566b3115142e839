//! Magnet URIs (BEP 9): `magnet:?xt=urn:btih:HASH&dn=NAME&tr=URL&x.pe=HOST:PORT&ws=URL`. Turns
//! the text a user pastes into a [`Magnet`]: the info hash (40 hex or 32 base32 characters), the
//! display name, the trackers, the peer addresses and the web seeds. Pure: no sockets, no name resolution, no threads.
//!
//! Only a missing or malformed `xt` is an error; parameters we do not know are ignored, and so is
//! an `x.pe` that is not a literal `IP:PORT` (resolving a host name is not this module's job, and
//! one unusable peer should not make the whole link unusable).

use std::net::SocketAddr;

use log::warn;

use crate::metainfo::InfoHash;
use crate::{hex, percent};

/// What a magnet URI says about a torrent. Everything but the info hash is a hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Magnet {
    /// From `xt=urn:btih:`.
    pub info_hash: InfoHash,
    /// `dn`: a display name until the metadata (and its real name) arrives.
    pub name: Option<String>,
    /// `tr`, in the order given, without duplicates.
    pub trackers: Vec<String>,
    /// `x.pe`: peers to dial, in the order given, without duplicates.
    pub peers: Vec<SocketAddr>,
    /// `ws`: web seeds (BEP 19 URLs, as a torrent's `url-list`), in the order given, without
    /// duplicates; used once the metadata is known.
    pub web_seeds: Vec<String>,
}

/// Why a text is not a usable magnet URI.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    /// The text does not open with `magnet:?`.
    #[error("not a magnet URI: it must start with `magnet:?`")]
    NotMagnet,
    /// No `xt` parameter names a BitTorrent v1 info hash.
    #[error("no `xt=urn:btih:` parameter: a magnet link needs the torrent's info hash")]
    NoInfoHash,
    /// An `xt=urn:btih:` whose hash is neither 40 hex nor 32 base32 characters.
    #[error("xt={value}: the info hash after `urn:btih:` must be 40 hex or 32 base32 characters")]
    BadInfoHash {
        /// The parameter's value, as decoded.
        value: String,
    },
    /// Two `xt=urn:btih:` parameters with different info hashes.
    #[error("two different info hashes: {first} and {second}")]
    ConflictingInfoHashes {
        /// The first one.
        first: InfoHash,
        /// The one that disagrees with it.
        second: InfoHash,
    },
    /// A known parameter with a `%` not followed by two hex digits.
    #[error("{param}: `%` must be followed by two hex digits")]
    BadEscape {
        /// The parameter's name.
        param: String,
    },
    /// A known parameter (other than `dn`) whose decoded bytes are not UTF-8.
    #[error("{param}: not UTF-8 once percent-decoded")]
    NotUtf8 {
        /// The parameter's name.
        param: String,
    },
}

impl Magnet {
    /// Whether `text` looks like a magnet URI rather than a path (the scheme, any case).
    pub fn is_magnet(text: &str) -> bool {
        text.get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("magnet:"))
    }

    /// Parses a magnet URI. Keys may carry a numeric suffix (`xt.1`, `tr.2`), as BEP 9's
    /// examples of several hashes or trackers do; `+` stands for a space in `dn` only.
    ///
    /// # Errors
    /// [`MagnetError::NotMagnet`] unless the text opens with `magnet:?` (scheme in any case);
    /// [`MagnetError::NoInfoHash`] without an `xt=urn:btih:`; [`MagnetError::BadInfoHash`] or
    /// [`MagnetError::ConflictingInfoHashes`] for a bad one or two that differ;
    /// [`MagnetError::BadEscape`] or [`MagnetError::NotUtf8`] for a badly encoded `xt`, `dn`,
    /// `tr` or `x.pe`.
    pub fn parse(uri: &str) -> Result<Magnet, MagnetError> {
        let query = uri
            .trim()
            .get(..8)
            .filter(|s| s.eq_ignore_ascii_case("magnet:?"))
            .map(|_| &uri.trim()[8..])
            .ok_or(MagnetError::NotMagnet)?;
        // A fragment is not part of the query.
        let query = query.split('#').next().unwrap_or_default();
        let mut info_hash: Option<InfoHash> = None;
        let mut magnet = Magnet {
            info_hash: InfoHash([0; 20]),
            name: None,
            trackers: Vec::new(),
            peers: Vec::new(),
            web_seeds: Vec::new(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            match base_key(key) {
                "xt" => {
                    let value = decode_text(key, raw, false)?;
                    let Some(hash) = parse_xt(&value)? else {
                        continue; // another kind of hash (btmh, ed2k, ...): not ours
                    };
                    match info_hash {
                        Some(first) if first != hash => {
                            return Err(MagnetError::ConflictingInfoHashes {
                                first,
                                second: hash,
                            });
                        }
                        _ => info_hash = Some(hash),
                    }
                }
                "dn" => {
                    let bytes = percent_decode(key, raw, true)?;
                    let name = String::from_utf8_lossy(&bytes).into_owned();
                    if magnet.name.is_none() && !name.is_empty() {
                        magnet.name = Some(name);
                    }
                }
                "tr" => {
                    let url = decode_text(key, raw, false)?;
                    if !url.is_empty() && !magnet.trackers.contains(&url) {
                        magnet.trackers.push(url);
                    }
                }
                "ws" => {
                    let url = decode_text(key, raw, false)?;
                    if !url.is_empty() && !magnet.web_seeds.contains(&url) {
                        magnet.web_seeds.push(url);
                    }
                }
                "x.pe" => {
                    let text = decode_text(key, raw, false)?;
                    match text.parse::<SocketAddr>() {
                        Ok(addr) if addr.port() != 0 => {
                            if !magnet.peers.contains(&addr) {
                                magnet.peers.push(addr);
                            }
                        }
                        _ => warn!("magnet: x.pe={text}: not IP:PORT or [IPv6]:PORT; ignored"),
                    }
                }
                _ => {}
            }
        }
        magnet.info_hash = info_hash.ok_or(MagnetError::NoInfoHash)?;
        Ok(magnet)
    }
}

/// `xt.1` -> `xt`: the key without a numeric suffix. `x.pe` keeps its dot.
fn base_key(key: &str) -> &str {
    match key.rsplit_once('.') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => key,
    }
}

/// The info hash of an `xt` value, `None` when it is not a `urn:btih:` one.
fn parse_xt(value: &str) -> Result<Option<InfoHash>, MagnetError> {
    let Some(hash) = value
        .get(..9)
        .filter(|p| p.eq_ignore_ascii_case("urn:btih:"))
        .map(|_| &value[9..])
    else {
        return Ok(None);
    };
    let bad = || MagnetError::BadInfoHash {
        value: value.to_owned(),
    };
    let bytes = match hash.len() {
        40 => decode_hex(hash),
        32 => decode_base32(hash),
        _ => None,
    };
    bytes.map(|b| Some(InfoHash(b))).ok_or_else(bad)
}

/// 40 hex digits, either case.
fn decode_hex(text: &str) -> Option<[u8; 20]> {
    hex::decode(text)?.try_into().ok()
}

/// 32 characters of RFC 4648 base32 (`A`-`Z`, `2`-`7`, either case, no padding): exactly 160
/// bits. Written here rather than taken from a crate: it is a dozen lines, and the only base32
/// btd reads.
fn decode_base32(text: &str) -> Option<[u8; 20]> {
    if text.len() != 32 {
        return None;
    }
    let mut out = [0u8; 20];
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    let mut at = 0;
    for c in text.bytes() {
        let value = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = acc << 5 | u64::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            // The low byte of what is left above the unused bits: the byte that just filled up.
            out[at] = (acc >> bits).to_le_bytes()[0];
            at += 1;
        }
    }
    // 32 * 5 = 160 = 20 * 8: every bit landed in a byte.
    Some(out)
}

/// `%XX` escapes decoded, and `+` as a space when `plus_is_space`.
fn percent_decode(param: &str, raw: &str, plus_is_space: bool) -> Result<Vec<u8>, MagnetError> {
    percent::decode(raw.as_bytes(), plus_is_space).ok_or_else(|| MagnetError::BadEscape {
        param: param.to_owned(),
    })
}

fn decode_text(param: &str, raw: &str, plus_is_space: bool) -> Result<String, MagnetError> {
    String::from_utf8(percent_decode(param, raw, plus_is_space)?).map_err(|_| {
        MagnetError::NotUtf8 {
            param: param.to_owned(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The info hash of the golden URIs, as 20 bytes typed by hand.
    const HASH: [u8; 20] = [
        0xc1, 0x2f, 0xe1, 0xc0, 0x6b, 0xba, 0x25, 0x4a, 0x9d, 0xc9, 0xf5, 0x19, 0xb3, 0x35, 0xaa,
        0x7c, 0x13, 0x67, 0xa8, 0x8a,
    ];
    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
    /// The same 160 bits in RFC 4648 base32 (from Python's `base64.b32encode`, not our code).
    const BASE32: &str = "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK";

    #[test]
    fn parses_hex_hash_name_trackers_and_peers() {
        let uri = format!(
            "magnet:?xt=urn:btih:{HEX}&dn=Big+Buck%20Bunny%2C+1080p\
             &tr=udp%3A%2F%2Ftracker.example.org%3A6969%2Fannounce\
             &tr=http://t2.example.net/announce?k=a+b\
             &tr=udp%3A%2F%2Ftracker.example.org%3A6969%2Fannounce\
             &x.pe=127.0.0.7:51413&x.pe=%5B2001%3Adb8%3A%3A1%5D%3A6881&x.pe=[::1]:7000"
        );
        let m = Magnet::parse(&uri).unwrap();
        assert_eq!(m.info_hash, InfoHash(HASH));
        assert_eq!(m.name.as_deref(), Some("Big Buck Bunny, 1080p"));
        assert_eq!(
            m.trackers,
            [
                "udp://tracker.example.org:6969/announce",
                "http://t2.example.net/announce?k=a+b",
            ]
        );
        let peers: Vec<SocketAddr> = ["127.0.0.7:51413", "[2001:db8::1]:6881", "[::1]:7000"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(m.peers, peers);
    }

    #[test]
    fn web_seeds_come_from_repeated_percent_encoded_ws_without_duplicates() {
        let uri = format!(
            "magnet:?xt=urn:btih:{HEX}&ws=http%3A%2F%2Fmirror.example.org%2Fpub%2Fa%20b.iso\
             &ws.1=https://cdn.example.net/files/&ws=http%3A%2F%2Fmirror.example.org%2Fpub%2Fa%20b.iso&ws="
        );
        let m = Magnet::parse(&uri).unwrap();
        assert_eq!(
            m.web_seeds,
            [
                "http://mirror.example.org/pub/a b.iso",
                "https://cdn.example.net/files/"
            ]
        );
        assert_eq!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&ws=http://x/%zz")),
            Err(MagnetError::BadEscape { param: "ws".into() })
        );
    }

    #[test]
    fn hex_and_base32_in_either_case_give_the_same_hash() {
        for hash in [
            HEX.to_owned(),
            HEX.to_uppercase(),
            BASE32.to_owned(),
            BASE32.to_lowercase(),
        ] {
            let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{hash}")).unwrap();
            assert_eq!(m.info_hash, InfoHash(HASH), "{hash}");
            assert_eq!((m.name, m.trackers, m.peers), (None, vec![], vec![]));
        }
        let m = Magnet::parse(&format!("MAGNET:?XT=urn:btih:{HEX}")).unwrap_err();
        assert_eq!(m, MagnetError::NoInfoHash, "keys are lower case");
        let m = Magnet::parse(&format!("MAGNET:?xt=URN:BTIH:{BASE32}")).unwrap();
        assert_eq!(m.info_hash, InfoHash(HASH));
    }

    #[test]
    fn base32_decodes_all_zero_and_all_one_bits() {
        assert_eq!(decode_base32(&"A".repeat(32)), Some([0; 20]));
        assert_eq!(decode_base32(&"7".repeat(32)), Some([0xFF; 20]));
        assert_eq!(decode_base32(&"7".repeat(31)), None);
        assert_eq!(decode_base32(&format!("{}1", "A".repeat(31))), None);
    }

    #[test]
    fn numbered_keys_and_unknown_parameters() {
        let uri = format!(
            "magnet:?xt.1=urn:btih:{HEX}&xt.2=urn:btmh:1220abcd&tr.1=http://a/announce\
             &tr.2=http://b/announce&as=http://mirror/x&ws=http://seed/y&x.pe=not-a-peer\
             &x.pe=10.0.0.1:0&x.pe=host.example:80&kt=a+b&so=0-3&&dn&novalue"
        );
        let m = Magnet::parse(&uri).unwrap();
        assert_eq!(m.info_hash, InfoHash(HASH));
        assert_eq!(m.trackers, ["http://a/announce", "http://b/announce"]);
        assert!(m.peers.is_empty(), "{:?}", m.peers);
        assert_eq!(m.name, None);
    }

    #[test]
    fn the_same_hash_twice_is_fine_two_different_ones_are_not() {
        let twice = format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{BASE32}");
        assert_eq!(Magnet::parse(&twice).unwrap().info_hash, InfoHash(HASH));
        let other = "0000000000000000000000000000000000000000";
        assert!(matches!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{other}")),
            Err(MagnetError::ConflictingInfoHashes { .. })
        ));
    }

    #[test]
    fn refuses_garbage_with_a_reason() {
        let cases: &[(&str, MagnetError)] = &[
            ("", MagnetError::NotMagnet),
            ("/tmp/file.torrent", MagnetError::NotMagnet),
            ("magnet:xt=urn:btih:", MagnetError::NotMagnet),
            ("magnet:?", MagnetError::NoInfoHash),
            ("magnet:?dn=x&tr=http://t/a", MagnetError::NoInfoHash),
            ("magnet:?xt=urn:sha1:ABCDEF", MagnetError::NoInfoHash),
            (
                "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88",
                MagnetError::BadInfoHash {
                    value: "urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88".into(),
                },
            ),
            (
                "magnet:?xt=urn:btih:g12fe1c06bba254a9dc9f519b335aa7c1367a88a",
                MagnetError::BadInfoHash {
                    value: "urn:btih:g12fe1c06bba254a9dc9f519b335aa7c1367a88a".into(),
                },
            ),
            (
                "magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKE1",
                MagnetError::BadInfoHash {
                    value: "urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKE1".into(),
                },
            ),
            (
                "magnet:?xt=urn:btih:",
                MagnetError::BadInfoHash {
                    value: "urn:btih:".into(),
                },
            ),
            (
                "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&tr=http%3",
                MagnetError::BadEscape { param: "tr".into() },
            ),
            (
                "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&tr=%FF%FE",
                MagnetError::NotUtf8 { param: "tr".into() },
            ),
        ];
        for (uri, want) in cases {
            assert_eq!(Magnet::parse(uri).as_ref(), Err(want), "{uri}");
            // Every error says what is wrong in words.
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn unknown_parameters_may_be_badly_encoded_and_dn_may_be_latin1() {
        let uri = format!("magnet:?xt=urn:btih:{HEX}&zz=%Q&dn=caf%E9");
        let m = Magnet::parse(&uri).unwrap();
        assert_eq!(m.name.as_deref(), Some("caf\u{FFFD}"));
    }

    #[test]
    fn a_fragment_and_surrounding_space_are_not_part_of_the_link() {
        let m = Magnet::parse(&format!("  magnet:?xt=urn:btih:{HEX}&dn=a#frag \n")).unwrap();
        assert_eq!(m.name.as_deref(), Some("a"));
    }

    #[test]
    fn recognises_magnet_text() {
        assert!(Magnet::is_magnet("magnet:?xt=urn:btih:x"));
        assert!(Magnet::is_magnet("Magnet:?"));
        assert!(!Magnet::is_magnet("magnet.torrent"));
        assert!(!Magnet::is_magnet("mag"));
    }
}
