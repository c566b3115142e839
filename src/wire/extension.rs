//! The extension protocol (BEP 10): the extended handshake both ways. An extended message is
//! peer-wire message id 20 whose first payload byte is the extension's id (0 = handshake) and
//! whose rest is a bencoded dictionary. Ids are per direction: we send with the ids the peer
//! advertised in its `m`, and decode with the ones we advertised. Pure, like the rest of `wire`.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use lava_torrent::bencode::BencodeElem;

use super::compact::{self, Family};
use crate::bencode::skip_value;

/// Peer-wire message id of every extended message.
pub const EXTENDED_ID: u8 = 20;
/// Extended message id of the handshake.
pub const HANDSHAKE_EXT_ID: u8 = 0;
/// Set in `reserved[5]` of the BitTorrent handshake by clients that speak BEP 10.
pub const EXTENSION_BIT: u8 = 0x10;

/// The fields of an extended handshake that we read or write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtendedHandshake {
    /// Extension name -> the id the sender wants to receive it under (0 = disabled).
    pub m: BTreeMap<String, u8>,
    /// The sender's listen port.
    pub p: Option<u16>,
    /// Client name and version.
    pub v: Option<String>,
    /// How many outstanding requests the sender queues without dropping.
    pub reqq: Option<u32>,
    /// The address the sender sees us at.
    pub yourip: Option<IpAddr>,
    /// Size of the info dictionary (BEP 9).
    pub metadata_size: Option<u64>,
    /// The sender prefers encrypted connections (`e`, message stream encryption).
    pub e: Option<bool>,
    /// The sender only uploads: it is seeding, or has every piece it wants (BEP 21).
    pub upload_only: Option<bool>,
}

impl ExtendedHandshake {
    /// The payload of a message id 20 (extended id byte included).
    pub fn encode(&self) -> Vec<u8> {
        let mut dict: HashMap<String, BencodeElem> = HashMap::new();
        let m = self
            .m
            .iter()
            .map(|(k, v)| (k.clone(), BencodeElem::Integer(i64::from(*v))))
            .collect();
        dict.insert("m".into(), BencodeElem::Dictionary(m));
        if let Some(p) = self.p {
            dict.insert("p".into(), BencodeElem::Integer(i64::from(p)));
        }
        if let Some(v) = &self.v {
            dict.insert("v".into(), BencodeElem::String(v.clone()));
        }
        if let Some(reqq) = self.reqq {
            dict.insert("reqq".into(), BencodeElem::Integer(i64::from(reqq)));
        }
        if let Some(ip) = self.yourip {
            let mut bytes = Vec::new();
            compact::encode_ip(ip, &mut bytes);
            dict.insert("yourip".into(), BencodeElem::Bytes(bytes));
        }
        if let Some(size) = self.metadata_size {
            let size = i64::try_from(size).unwrap_or(i64::MAX);
            dict.insert("metadata_size".into(), BencodeElem::Integer(size));
        }
        if let Some(e) = self.e {
            dict.insert("e".into(), BencodeElem::Integer(i64::from(e)));
        }
        if let Some(upload_only) = self.upload_only {
            dict.insert(
                "upload_only".into(),
                BencodeElem::Integer(i64::from(upload_only)),
            );
        }
        let mut out = vec![HANDSHAKE_EXT_ID];
        out.extend(BencodeElem::Dictionary(dict).encode());
        out
    }

    /// Decodes the dictionary of an extended handshake (the bytes after the extended id).
    /// Unknown keys and fields of the wrong type are ignored, as BEP 10 asks.
    ///
    /// # Errors
    /// A reason when the bytes are not one bencoded dictionary (or nest too deep).
    pub fn decode(dict: &[u8]) -> Result<Self, String> {
        crate::bencode::check_one_value(dict)?;
        let mut elems = BencodeElem::from_bytes(dict).map_err(|e| e.to_string())?;
        let Some(BencodeElem::Dictionary(d)) = elems.pop() else {
            return Err("extended handshake is not a dictionary".into());
        };
        let int = |key: &str| match d.get(key) {
            Some(BencodeElem::Integer(i)) => Some(*i),
            _ => None,
        };
        let m = match d.get("m") {
            Some(BencodeElem::Dictionary(m)) => m
                .iter()
                .filter_map(|(k, v)| match v {
                    BencodeElem::Integer(i) => Some((k.clone(), u8::try_from(*i).ok()?)),
                    _ => None,
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        let yourip = match d.get("yourip") {
            Some(BencodeElem::Bytes(b)) => compact::decode_ip(b),
            Some(BencodeElem::String(s)) => compact::decode_ip(s.as_bytes()),
            _ => None,
        };
        Ok(Self {
            m,
            p: int("p")
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0),
            v: match d.get("v") {
                Some(BencodeElem::String(s)) => Some(s.clone()),
                Some(BencodeElem::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            },
            reqq: int("reqq")
                .and_then(|r| u32::try_from(r).ok())
                .filter(|r| *r > 0),
            yourip,
            metadata_size: int("metadata_size").and_then(|s| u64::try_from(s).ok()),
            e: int("e").map(|e| e != 0),
            upload_only: int("upload_only").map(|u| u != 0),
        })
    }
}

/// The name of the metadata extension (BEP 9) in `m`.
pub const UT_METADATA: &str = "ut_metadata";
/// The id under which we receive `ut_metadata` messages (what we put in our `m`).
pub const OUR_UT_METADATA_ID: u8 = 1;
/// Metadata travels in pieces of this size (the last one shorter).
pub const METADATA_PIECE_LEN: u32 = 16 * 1024;

/// A `ut_metadata` message (BEP 9), the bytes after the extended id: a bencoded dictionary
/// (`msg_type`, `piece`, for data `total_size`), for data followed by the piece's raw bytes.
/// The one codec of both sides: the peer session serving our metadata and the metadata fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataMessage<'a> {
    /// `msg_type` 0: send me this piece.
    Request { piece: u32 },
    /// `msg_type` 1: a piece of the info dictionary, whose whole length is `total_size`.
    Data {
        piece: u32,
        total_size: Option<u64>,
        data: &'a [u8],
    },
    /// `msg_type` 2: the sender will not send this piece.
    Reject { piece: u32 },
    /// Another `msg_type`: ignored, as BEP 9 asks.
    Other { msg_type: i64 },
}

impl<'a> MetadataMessage<'a> {
    /// The bencoded dictionary (keys in order), followed by the raw piece for `Data`.
    pub fn encode(&self) -> Vec<u8> {
        let (msg_type, piece) = match *self {
            Self::Request { piece } => (0, piece),
            Self::Data { piece, .. } => (1, piece),
            Self::Reject { piece } => (2, piece),
            Self::Other { msg_type } => (msg_type, 0),
        };
        let mut out = format!("d8:msg_typei{msg_type}e5:piecei{piece}e").into_bytes();
        if let Self::Data {
            total_size: Some(total),
            ..
        } = self
        {
            out.extend_from_slice(format!("10:total_sizei{total}e").as_bytes());
        }
        out.push(b'e');
        if let Self::Data { data, .. } = self {
            out.extend_from_slice(data);
        }
        out
    }

    /// Decodes the bytes after the extended id, without copying the piece. Keys may come in any
    /// order; unknown keys are skipped.
    ///
    /// # Errors
    /// A reason when the payload does not open with a well-formed dictionary holding integer
    /// `msg_type` and `piece` (a `piece` outside `u32`, a negative `total_size`), or when a data
    /// message carries more than [`METADATA_PIECE_LEN`] bytes.
    pub fn decode(payload: &'a [u8]) -> Result<Self, String> {
        if payload.first() != Some(&b'd') {
            return Err("ut_metadata message is not a dictionary".into());
        }
        let end = skip_value(payload, 0).ok_or("ut_metadata dictionary is malformed")?;
        let (mut msg_type, mut piece, mut total_size) = (None, None, None);
        let mut pos = 1;
        while payload[pos] != b'e' {
            let key_end = skip_value(payload, pos).ok_or("malformed key")?;
            let key = string_value(&payload[pos..key_end]).ok_or("a key is not a string")?;
            let value_end = skip_value(payload, key_end).ok_or("malformed value")?;
            let value = int_value(&payload[key_end..value_end]);
            match key {
                b"msg_type" => msg_type = value,
                b"piece" => piece = value,
                b"total_size" => total_size = value,
                _ => {}
            }
            pos = value_end;
        }
        let msg_type = msg_type.ok_or("no integer msg_type")?;
        let piece = piece.ok_or("no integer piece")?;
        let piece = u32::try_from(piece).map_err(|_| format!("piece {piece} out of range"))?;
        let data = &payload[end..];
        Ok(match msg_type {
            0 => Self::Request { piece },
            1 => {
                if data.len() > METADATA_PIECE_LEN as usize {
                    return Err(format!("metadata piece of {} bytes", data.len()));
                }
                let total_size = total_size
                    .map(|t| u64::try_from(t).map_err(|_| format!("total_size {t}")))
                    .transpose()?;
                Self::Data {
                    piece,
                    total_size,
                    data,
                }
            }
            2 => Self::Reject { piece },
            msg_type => Self::Other { msg_type },
        })
    }
}

/// The bytes of a bencoded string (`4:spam` -> `spam`), `None` for any other value.
fn string_value(value: &[u8]) -> Option<&[u8]> {
    let colon = value.iter().position(|&b| b == b':')?;
    value[..colon]
        .iter()
        .all(u8::is_ascii_digit)
        .then(|| &value[colon + 1..])
}

/// A bencoded integer (`i42e` -> 42), `None` for any other value or one outside `i64`.
fn int_value(value: &[u8]) -> Option<i64> {
    let text = value.strip_prefix(b"i")?.strip_suffix(b"e")?;
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The name of peer exchange (BEP 11) in `m`.
pub const UT_PEX: &str = "ut_pex";
/// The id under which we receive `ut_pex` messages.
pub const OUR_UT_PEX_ID: u8 = 2;
/// Most peers we take from one PEX message (more is ignored, not an error).
pub const MAX_PEX_PEERS: usize = 200;

/// The `added.f` flags BEP 11 gives each added peer (one byte each; other bits are kept as
/// they came, unread).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PexFlags(pub u8);

impl PexFlags {
    /// 0x01: the peer prefers encrypted connections (it spoke MSE to the sender, or said `e=1`).
    pub const ENCRYPTION: u8 = 0x01;
    /// 0x02: the peer is a seed (or only uploads).
    pub const SEED: u8 = 0x02;

    /// Flags from what is known of a peer.
    pub fn new(prefers_encryption: bool, seed: bool) -> Self {
        let mut bits = 0;
        if prefers_encryption {
            bits |= Self::ENCRYPTION;
        }
        if seed {
            bits |= Self::SEED;
        }
        PexFlags(bits)
    }

    pub fn prefers_encryption(self) -> bool {
        self.0 & Self::ENCRYPTION != 0
    }

    pub fn seed(self) -> bool {
        self.0 & Self::SEED != 0
    }
}

/// One peer of a `ut_pex` `added` list, with its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PexPeer {
    pub addr: SocketAddr,
    pub flags: PexFlags,
}

/// A `ut_pex` message (BEP 11): peers the sender connected to and dropped since its last one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PexMessage {
    pub added: Vec<PexPeer>,
    pub dropped: Vec<SocketAddr>,
}

impl PexMessage {
    /// The bencoded dictionary: `added`/`added.f`/`dropped` (IPv4) and `added6`/`added6.f`/
    /// `dropped6` (IPv6), compact, one flag byte per added peer in the order of its list.
    pub fn encode(&self) -> Vec<u8> {
        let mut dict: HashMap<String, BencodeElem> = HashMap::new();
        let (added4, added6) = compact::encode_peers(self.added.iter().map(|p| &p.addr));
        let flags = |family: Family| -> Vec<u8> {
            self.added
                .iter()
                .filter(|p| Family::of(&p.addr) == family)
                .map(|p| p.flags.0)
                .collect()
        };
        let (dropped4, dropped6) = compact::encode_peers(&self.dropped);
        dict.insert("added.f".into(), BencodeElem::Bytes(flags(Family::V4)));
        dict.insert("added6.f".into(), BencodeElem::Bytes(flags(Family::V6)));
        dict.insert("added".into(), BencodeElem::Bytes(added4));
        dict.insert("added6".into(), BencodeElem::Bytes(added6));
        dict.insert("dropped".into(), BencodeElem::Bytes(dropped4));
        dict.insert("dropped6".into(), BencodeElem::Bytes(dropped6));
        BencodeElem::Dictionary(dict).encode()
    }

    /// Decodes a `ut_pex` dictionary; at most [`MAX_PEX_PEERS`] added peers are kept, port 0
    /// entries, a trailing partial entry and IPv4-mapped addresses in the IPv6 lists are
    /// skipped, a flag missing from a short `added.f` is 0, and missing keys mean none.
    ///
    /// # Errors
    /// A reason when the bytes are not one bencoded dictionary.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        crate::bencode::check_one_value(bytes)?;
        let mut elems = BencodeElem::from_bytes(bytes).map_err(|e| e.to_string())?;
        let d = match elems.pop() {
            Some(BencodeElem::Dictionary(d)) => d,
            _ => return Err("ut_pex message is not a dictionary".into()),
        };
        let bytes_of = |key: &str| -> &[u8] {
            match d.get(key) {
                Some(BencodeElem::Bytes(b)) => b,
                Some(BencodeElem::String(s)) => s.as_bytes(),
                _ => &[],
            }
        };
        let peers = |family: Family, key: &str| {
            compact::whole_peers(family, bytes_of(key))
                .filter(move |addr| addr.port() != 0 && Family::of(addr) == family)
        };
        let added_of = |family: Family, key: &str, flags_key: &str| {
            let flags = bytes_of(flags_key);
            compact::whole_peers(family, bytes_of(key))
                .enumerate()
                .filter(move |(_, addr)| addr.port() != 0 && Family::of(addr) == family)
                .map(move |(i, addr)| PexPeer {
                    addr,
                    flags: PexFlags(flags.get(i).copied().unwrap_or(0)),
                })
        };
        let added = added_of(Family::V4, "added", "added.f")
            .chain(added_of(Family::V6, "added6", "added6.f"))
            .take(MAX_PEX_PEERS)
            .collect();
        let dropped = peers(Family::V4, "dropped")
            .chain(peers(Family::V6, "dropped6"))
            .take(MAX_PEX_PEERS)
            .collect();
        Ok(Self { added, dropped })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_encryption_and_upload_only_keys_round_trip() {
        let ours = ExtendedHandshake {
            e: Some(true),
            upload_only: Some(true),
            ..ExtendedHandshake::default()
        };
        let back = ExtendedHandshake::decode(&ours.encode()[1..]).unwrap();
        assert_eq!((back.e, back.upload_only), (Some(true), Some(true)));
        let absent = ExtendedHandshake::decode(b"d1:md11:ut_metadatai3eee").unwrap();
        assert_eq!((absent.e, absent.upload_only), (None, None));
        let zero = ExtendedHandshake::decode(b"d1:ei0e11:upload_onlyi0ee").unwrap();
        assert_eq!((zero.e, zero.upload_only), (Some(false), Some(false)));
    }
    use super::*;

    #[test]
    fn decodes_a_handshake_typed_by_hand() {
        let wire = b"d1:md11:ut_metadatai3e6:ut_pexi1ee13:metadata_sizei31235e1:pi6881e4:reqqi500e1:v13:libtorrent 2.6:yourip4:\x7f\x00\x00\x02e";
        let h = ExtendedHandshake::decode(wire).unwrap();
        assert_eq!(h.m.get("ut_metadata"), Some(&3));
        assert_eq!(h.m.get("ut_pex"), Some(&1));
        assert_eq!(h.p, Some(6881));
        assert_eq!(h.reqq, Some(500));
        assert_eq!(h.v.as_deref(), Some("libtorrent 2."));
        assert_eq!(h.metadata_size, Some(31235));
        assert_eq!(h.yourip, Some("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn round_trips_what_we_send() {
        let ours = ExtendedHandshake {
            m: BTreeMap::new(),
            p: Some(51413),
            v: Some("btd 0.1.0".into()),
            reqq: Some(2048),
            yourip: Some("::1".parse().unwrap()),
            metadata_size: None,
            e: Some(true),
            upload_only: Some(false),
        };
        let payload = ours.encode();
        assert_eq!(payload[0], HANDSHAKE_EXT_ID);
        assert_eq!(ExtendedHandshake::decode(&payload[1..]).unwrap(), ours);
    }

    #[test]
    fn metadata_messages_round_trip_and_match_bytes_typed_by_hand() {
        let wire = b"d8:msg_typei1e5:piecei2e10:total_sizei34256eeRAW";
        let msg = MetadataMessage::decode(wire).unwrap();
        assert_eq!(
            msg,
            MetadataMessage::Data {
                piece: 2,
                total_size: Some(34256),
                data: b"RAW"
            }
        );
        assert_eq!(msg.encode(), wire.to_vec());
        // Keys in any order, unknown ones skipped.
        assert_eq!(
            MetadataMessage::decode(b"d5:piecei7e1:xli1ee8:msg_typei0ee"),
            Ok(MetadataMessage::Request { piece: 7 })
        );
        assert_eq!(
            MetadataMessage::Reject { piece: 7 }.encode(),
            b"d8:msg_typei2e5:piecei7ee".to_vec()
        );
        // Unknown types are ignored, not errors (BEP 9).
        assert_eq!(
            MetadataMessage::decode(b"d8:msg_typei9e5:piecei0ee"),
            Ok(MetadataMessage::Other { msg_type: 9 })
        );
        for bad in [
            &b""[..],
            b"le",
            b"d8:msg_typei1e",
            b"d8:msg_typei1e5:piece1:xe",
            b"di1ei2ee",
            b"d5:piecei-1e8:msg_typei0ee",
            b"d8:msg_typei1e5:piecei0e10:total_sizei-5ee",
            b"d8:msg_typei0ee",
            b"d5:piecei0ee",
            b"li1ee",
            b"d8:msg_typei0e5:piecei0e",
        ] {
            assert!(MetadataMessage::decode(bad).is_err(), "{bad:?}");
        }
        let mut oversized = b"d8:msg_typei1e5:piecei0ee".to_vec();
        oversized.resize(oversized.len() + METADATA_PIECE_LEN as usize + 1, 0);
        assert!(MetadataMessage::decode(&oversized).is_err());
    }

    fn pex_peer(addr: &str, flags: u8) -> PexPeer {
        PexPeer {
            addr: addr.parse().unwrap(),
            flags: PexFlags(flags),
        }
    }

    #[test]
    fn pex_messages_decode_from_bytes_typed_by_hand_and_round_trip() {
        let wire = b"d5:added12:\x7f\x00\x00\x02\x1a\xe1\x7f\x00\x00\x03\x00\x007:added.f2:\x01\x007:dropped6:\x0a\x00\x00\x01\x00\x50e";
        let pex = PexMessage::decode(wire).unwrap();
        assert_eq!(
            pex.added,
            vec![pex_peer("127.0.0.2:6881", 0x01)],
            "port 0 skipped"
        );
        assert_eq!(pex.dropped, vec!["10.0.0.1:80".parse().unwrap()]);
        let both = PexMessage {
            added: vec![
                pex_peer("127.0.0.2:6881", 0x03),
                pex_peer("[::1]:7000", 0x02),
            ],
            dropped: vec!["127.0.0.9:1".parse().unwrap()],
        };
        assert_eq!(PexMessage::decode(&both.encode()).unwrap(), both);
        assert!(PexMessage::decode(b"le").is_err());
    }

    #[test]
    fn pex_flags_stay_with_their_peer_in_each_family() {
        let msg = PexMessage {
            added: vec![
                pex_peer("[::1]:7000", PexFlags::SEED),
                pex_peer("127.0.0.2:6881", 0),
                pex_peer("127.0.0.3:6881", PexFlags::ENCRYPTION),
            ],
            dropped: Vec::new(),
        };
        let wire = msg.encode();
        let text = String::from_utf8_lossy(&wire);
        assert!(text.contains("7:added.f2:\u{0}\u{1}"), "{text}");
        assert!(text.contains("8:added6.f1:\u{2}"), "{text}");
        let back = PexMessage::decode(&wire).unwrap();
        let by_addr = |a: &str| {
            back.added
                .iter()
                .find(|p| p.addr == a.parse().unwrap())
                .unwrap()
                .flags
        };
        assert!(by_addr("127.0.0.3:6881").prefers_encryption());
        assert!(!by_addr("127.0.0.3:6881").seed());
        assert!(by_addr("[::1]:7000").seed());
        assert_eq!(by_addr("127.0.0.2:6881"), PexFlags::default());
        assert_eq!(PexFlags::new(true, true), PexFlags(0x03));
        // A short `added.f` leaves the rest unflagged; no `added.f` at all, every one.
        let short = b"d5:added12:\x7f\x00\x00\x02\x1a\xe1\x7f\x00\x00\x03\x1a\xe17:added.f1:\x01e";
        let flags: Vec<u8> = PexMessage::decode(short)
            .unwrap()
            .added
            .iter()
            .map(|p| p.flags.0)
            .collect();
        assert_eq!(flags, [1, 0]);
        // A mapped IPv4 address in `added6` is not IPv6: skipped.
        let mut mapped = b"d6:added618:".to_vec();
        mapped.extend_from_slice(&[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 2, 0x1a, 0xe1,
        ]);
        mapped.push(b'e');
        assert_eq!(PexMessage::decode(&mapped).unwrap().added, vec![]);
    }

    #[test]
    fn ignores_wrong_types_and_refuses_non_dictionaries() {
        let h = ExtendedHandshake::decode(b"d1:md1:xi999ee1:p3:abc4:reqqi-1ee").unwrap();
        assert!(h.m.is_empty() && h.p.is_none() && h.reqq.is_none());
        assert!(ExtendedHandshake::decode(b"li1ee").is_err());
        assert!(ExtendedHandshake::decode(b"d1:m").is_err());
        let deep: Vec<u8> = b"d1:m"
            .iter()
            .copied()
            .chain(std::iter::repeat_n(b'l', 5000))
            .collect();
        assert!(ExtendedHandshake::decode(&deep).is_err());
    }
}
