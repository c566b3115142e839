//! The 68-byte handshake that opens every peer connection (BEP 3): 19, `BitTorrent protocol`,
//! 8 reserved bytes of extension flags, the info hash and the peer id.
//!
//! Whether the info hash is ours and the peer id is not is for the caller to decide.

use super::WireError;

/// The size of a handshake on the wire.
pub const HANDSHAKE_LEN: usize = 68;

const PSTR: &[u8; 19] = b"BitTorrent protocol";

/// A peer wire handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Extension flags (BEP 10: `reserved[5] & 0x10`; BEP 6: `reserved[7] & 0x04`;
    /// DHT: `reserved[7] & 0x01`).
    pub reserved: [u8; 8],
    /// SHA-1 of the torrent's info dictionary.
    pub info_hash: [u8; 20],
    /// The sender's peer id.
    pub peer_id: [u8; 20],
}

impl Handshake {
    /// Our handshake for a torrent, with no extension flags set yet.
    #[must_use]
    pub fn new(info_hash: [u8; 20], peer_id: [u8; 20]) -> Self {
        Self {
            reserved: [0; 8],
            info_hash,
            peer_id,
        }
    }

    /// The 68 bytes to send.
    #[must_use]
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0; HANDSHAKE_LEN];
        out[0] = 19;
        out[1..20].copy_from_slice(PSTR);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash);
        out[48..68].copy_from_slice(&self.peer_id);
        out
    }

    /// Reads a handshake the peer sent.
    ///
    /// # Errors
    /// [`WireError::BadProtocolString`] unless `buf` opens with the byte 19 and then
    /// `BitTorrent protocol`.
    pub fn decode(buf: &[u8; HANDSHAKE_LEN]) -> Result<Self, WireError> {
        let (pstrlen, rest) = buf.split_at(1);
        let (pstr, rest) = rest.split_at(PSTR.len());
        let (reserved, rest) = rest.split_at(8);
        let (info_hash, peer_id) = rest.split_at(20);
        if pstrlen != [19] || pstr != PSTR {
            return Err(WireError::BadProtocolString);
        }
        let mut handshake = Self::new([0; 20], [0; 20]);
        handshake.reserved.copy_from_slice(reserved);
        handshake.info_hash.copy_from_slice(info_hash);
        handshake.peer_id.copy_from_slice(peer_id);
        Ok(handshake)
    }

    /// Whether the sender speaks the extension protocol (BEP 10).
    #[must_use]
    pub fn supports_extension_protocol(&self) -> bool {
        self.reserved[5] & 0x10 != 0
    }

    /// Whether the sender speaks the fast extension (BEP 6).
    #[must_use]
    pub fn supports_fast(&self) -> bool {
        self.reserved[7] & 0x04 != 0
    }

    /// Whether the sender runs a DHT node (BEP 5) and may send a port message.
    #[must_use]
    pub fn supports_dht(&self) -> bool {
        self.reserved[7] & 0x01 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handshake typed by hand, field by field (never produced by `encode`).
    fn golden(reserved: [u8; 8]) -> [u8; HANDSHAKE_LEN] {
        let mut wire = Vec::new();
        wire.push(19);
        wire.extend_from_slice(b"BitTorrent protocol");
        wire.extend_from_slice(&reserved);
        wire.extend_from_slice(&[
            1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
        ]);
        wire.extend_from_slice(b"-BT0001-abcdefghijkl");
        wire.try_into().unwrap()
    }

    const INFO_HASH: [u8; 20] = [
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
    ];

    #[test]
    fn decodes_hand_typed_handshake_and_reencodes_it() {
        let wire = golden([0, 0, 0, 0, 0, 0x10, 0, 0x05]);
        let handshake = Handshake::decode(&wire).unwrap();
        assert_eq!(handshake.reserved, [0, 0, 0, 0, 0, 0x10, 0, 0x05]);
        assert_eq!(handshake.info_hash, INFO_HASH);
        assert_eq!(&handshake.peer_id, b"-BT0001-abcdefghijkl");
        assert!(handshake.supports_extension_protocol());
        assert!(handshake.supports_fast());
        assert!(handshake.supports_dht());
        assert_eq!(handshake.encode(), wire);
    }

    #[test]
    fn new_handshake_has_no_extension_flags() {
        let handshake = Handshake::new(INFO_HASH, *b"-BT0001-abcdefghijkl");
        assert_eq!(handshake.encode(), golden([0; 8]));
        assert!(!handshake.supports_extension_protocol());
        assert!(!handshake.supports_fast());
        assert!(!handshake.supports_dht());
    }

    #[test]
    fn each_flag_reads_only_its_own_bit() {
        let all_but = |byte: usize, bit: u8| {
            let mut reserved = [0xFF; 8];
            reserved[byte] &= !bit;
            Handshake::decode(&golden(reserved)).unwrap()
        };
        let handshake = all_but(5, 0x10);
        assert!(!handshake.supports_extension_protocol());
        assert!(handshake.supports_fast() && handshake.supports_dht());
        let handshake = all_but(7, 0x04);
        assert!(!handshake.supports_fast());
        assert!(handshake.supports_extension_protocol() && handshake.supports_dht());
        let handshake = all_but(7, 0x01);
        assert!(!handshake.supports_dht());
        assert!(handshake.supports_extension_protocol() && handshake.supports_fast());
    }

    #[test]
    fn rejects_handshake_with_wrong_protocol_length() {
        for pstrlen in [0, 18, 20, 255] {
            let mut wire = golden([0; 8]);
            wire[0] = pstrlen;
            assert_eq!(
                Handshake::decode(&wire),
                Err(WireError::BadProtocolString),
                "pstrlen {pstrlen}"
            );
        }
    }

    #[test]
    fn rejects_handshake_with_wrong_protocol_string() {
        let mut wire = golden([0; 8]);
        wire[12] = b'P'; // "BitTorrent Protocol"
        assert_eq!(Handshake::decode(&wire), Err(WireError::BadProtocolString));

        let mut http = [b' '; HANDSHAKE_LEN];
        http[..16].copy_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(Handshake::decode(&http), Err(WireError::BadProtocolString));
    }
}
