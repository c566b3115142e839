//! Length-prefixed peer messages: a 4-byte big-endian length, a 1-byte id, then the payload.
//!
//! [`Message::decode`] works on whatever the peer thread has buffered so far: it returns
//! `Ok(None)` until a whole message is there, and rejects a length prefix that is too large for
//! its id as soon as the id byte arrives, before allocating anything for the payload.

use super::{WireError, u32_saturating, usize_from};

/// The size of a block, the unit we request and serve (16 KiB). Many clients drop a peer that
/// asks for more.
pub const BLOCK_LEN: u32 = 16 * 1024;
/// The largest length prefix we accept for a piece message (id 7): id, piece, offset, one block.
pub const MAX_PIECE_MESSAGE_LEN: u32 = 9 + BLOCK_LEN;
/// The largest bitfield payload (id 5) we accept, in bytes: enough for 8 Mi pieces.
pub const MAX_BITFIELD_BYTES: u32 = 1 << 20;
/// The largest length prefix we accept for ids we do not decode (BEP 6 and BEP 10 messages,
/// which carry at most a metadata piece and a small dictionary).
pub const MAX_OTHER_MESSAGE_LEN: u32 = 1 << 20;
/// The bytes [`encode_piece_header`] writes: length prefix, id, piece index, offset.
pub const PIECE_HEADER_LEN: usize = 13;

const CHOKE: u8 = 0;
const UNCHOKE: u8 = 1;
const INTERESTED: u8 = 2;
const NOT_INTERESTED: u8 = 3;
const HAVE: u8 = 4;
const BITFIELD: u8 = 5;
const REQUEST: u8 = 6;
const PIECE: u8 = 7;
const CANCEL: u8 = 8;
const PORT: u8 = 9;
const SUGGEST: u8 = 13;
const HAVE_ALL: u8 = 14;
const HAVE_NONE: u8 = 15;
const REJECT: u8 = 16;
const ALLOWED_FAST: u8 = 17;

/// A block of a piece: `len` bytes starting `offset` bytes into piece `piece`, as carried by
/// request and cancel messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    /// Zero-based piece index.
    pub piece: u32,
    /// Byte offset of the block within the piece.
    pub offset: u32,
    /// Length of the block in bytes.
    pub len: u32,
}

impl BlockRef {
    /// The block of `len` bytes at `offset` within piece `piece`.
    #[must_use]
    pub const fn new(piece: u32, offset: u32, len: u32) -> Self {
        Self { piece, offset, len }
    }
}

/// One peer wire message, as BEP 3 frames it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Length 0, no id: "still here".
    KeepAlive,
    /// Id 0: the sender will not serve our requests; those outstanding are void.
    Choke,
    /// Id 1: the sender will serve our requests.
    Unchoke,
    /// Id 2: the sender wants pieces we have.
    Interested,
    /// Id 3: the sender wants nothing from us.
    NotInterested,
    /// Id 4: the sender now has this piece.
    Have(u32),
    /// Id 5: the raw payload; [`Bitfield::from_wire`](super::Bitfield::from_wire) checks it
    /// against the piece count, which this layer does not know.
    Bitfield(Vec<u8>),
    /// Id 6: send me this block.
    Request(BlockRef),
    /// Id 7: a block's data.
    Piece {
        /// Zero-based piece index.
        piece: u32,
        /// Byte offset of `data` within the piece.
        offset: u32,
        /// The block itself.
        data: Vec<u8>,
    },
    /// Id 8: forget my request for this block.
    Cancel(BlockRef),
    /// Id 9: the sender's DHT port.
    Port(u16),
    /// Id 13 (BEP 6): the sender suggests we download this piece.
    Suggest(u32),
    /// Id 14 (BEP 6): the sender has every piece (instead of a bitfield).
    HaveAll,
    /// Id 15 (BEP 6): the sender has no piece (instead of a bitfield).
    HaveNone,
    /// Id 16 (BEP 6): the sender will not serve this request.
    Reject(BlockRef),
    /// Id 17 (BEP 6): we may request this piece even while choked.
    AllowedFast(u32),
    /// Any other id (20 of BEP 10, ...): carried, not interpreted. Meant for ids
    /// this type does not decode; encoding one of ids 0-9 here would frame a different message.
    Unknown {
        /// The message id.
        id: u8,
        /// Everything after the id.
        payload: Vec<u8>,
    },
}

impl Message {
    /// The message id on the wire; `None` for a keep-alive, which has none.
    #[must_use]
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Self::KeepAlive => return None,
            Self::Choke => CHOKE,
            Self::Unchoke => UNCHOKE,
            Self::Interested => INTERESTED,
            Self::NotInterested => NOT_INTERESTED,
            Self::Have(_) => HAVE,
            Self::Bitfield(_) => BITFIELD,
            Self::Request(_) => REQUEST,
            Self::Piece { .. } => PIECE,
            Self::Cancel(_) => CANCEL,
            Self::Port(_) => PORT,
            Self::Suggest(_) => SUGGEST,
            Self::HaveAll => HAVE_ALL,
            Self::HaveNone => HAVE_NONE,
            Self::Reject(_) => REJECT,
            Self::AllowedFast(_) => ALLOWED_FAST,
            Self::Unknown { id, .. } => *id,
        })
    }

    /// Appends the framed message (4-byte big-endian length, id, payload) to `out`.
    ///
    /// Encoding does not apply the bounds [`Message::decode`] enforces: the caller decides what
    /// it sends.
    ///
    /// # Panics
    /// If a payload is too long for a 4-byte length prefix (4 GiB), which no message we build
    /// comes near.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::KeepAlive => out.extend_from_slice(&0u32.to_be_bytes()),
            Self::Choke => put_header(out, 1, CHOKE),
            Self::Unchoke => put_header(out, 1, UNCHOKE),
            Self::Interested => put_header(out, 1, INTERESTED),
            Self::NotInterested => put_header(out, 1, NOT_INTERESTED),
            Self::Have(piece) => {
                put_header(out, 5, HAVE);
                out.extend_from_slice(&piece.to_be_bytes());
            }
            Self::Bitfield(bytes) => put_with_payload(out, BITFIELD, bytes),
            Self::Request(block) => put_block(out, REQUEST, *block),
            Self::Piece {
                piece,
                offset,
                data,
            } => {
                let data_len = u32::try_from(data.len())
                    .expect("piece message data exceeds what a length prefix can express");
                out.reserve(PIECE_HEADER_LEN + data.len());
                encode_piece_header(*piece, *offset, data_len, out);
                out.extend_from_slice(data);
            }
            Self::Cancel(block) => put_block(out, CANCEL, *block),
            Self::Port(port) => {
                put_header(out, 3, PORT);
                out.extend_from_slice(&port.to_be_bytes());
            }
            Self::Suggest(piece) => put_with_payload(out, SUGGEST, &piece.to_be_bytes()),
            Self::HaveAll => put_header(out, 1, HAVE_ALL),
            Self::HaveNone => put_header(out, 1, HAVE_NONE),
            Self::Reject(block) => put_block(out, REJECT, *block),
            Self::AllowedFast(piece) => put_with_payload(out, ALLOWED_FAST, &piece.to_be_bytes()),
            Self::Unknown { id, payload } => put_with_payload(out, *id, payload),
        }
    }

    /// Decodes the first message in `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole message (read more and call again
    /// with the same bytes plus the new ones), or the message and how many bytes of `buf` it
    /// used. The length prefix is checked against the bound for its id as soon as the id byte is
    /// there (keep-alive needs only the 4 prefix bytes), before anything is allocated.
    ///
    /// # Errors
    /// - [`WireError::BadLength`] if a fixed-size message (choke, unchoke, interested,
    ///   not interested: 1; have: 5; request, cancel: 13; port: 3) has any other length;
    /// - [`WireError::TooShort`] if a piece message is shorter than 9 bytes;
    /// - [`WireError::TooLong`] if a piece message exceeds [`MAX_PIECE_MESSAGE_LEN`], a bitfield
    ///   payload exceeds [`MAX_BITFIELD_BYTES`], or a message with any other id exceeds
    ///   [`MAX_OTHER_MESSAGE_LEN`].
    pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, WireError> {
        let Some(prefix) = buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix);
        if len == 0 {
            return Ok(Some((Self::KeepAlive, 4)));
        }
        let Some(&id) = buf.get(4) else {
            return Ok(None);
        };
        check_len(id, len)?;
        // No overflow: check_len bounded `len` to about 1 MiB.
        let total = 4 + usize_from(len);
        let Some(payload) = buf.get(5..total) else {
            return Ok(None);
        };
        Ok(Some((parse(id, payload)?, total)))
    }
}

/// A piece message (id 7) still in the caller's buffer: its block's bytes are borrowed, so the
/// peer thread copies them once, straight into the buffer they are kept in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PieceView<'a> {
    /// Zero-based piece index.
    pub piece: u32,
    /// Byte offset of `data` within the piece.
    pub offset: u32,
    /// The block itself.
    pub data: &'a [u8],
}

/// A whole, well-formed piece message at the start of `buf`, borrowed, and how many bytes of
/// `buf` it used; `None` for anything else (another id, too few bytes yet, a bad length), which
/// [`Message::decode`] then decodes or rejects as usual.
#[must_use]
pub fn decode_piece(buf: &[u8]) -> Option<(PieceView<'_>, usize)> {
    let (&[l0, l1, l2, l3, id], rest) = buf.split_first_chunk::<5>()?;
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    if id != PIECE || !(9..=MAX_PIECE_MESSAGE_LEN).contains(&len) {
        return None;
    }
    let payload = rest.get(..usize_from(len) - 1)?;
    let (&[p0, p1, p2, p3, o0, o1, o2, o3], data) = payload.split_first_chunk::<8>()?;
    let view = PieceView {
        piece: u32::from_be_bytes([p0, p1, p2, p3]),
        offset: u32::from_be_bytes([o0, o1, o2, o3]),
        data,
    };
    Some((view, 4 + usize_from(len)))
}

/// Writes the 13-byte header of a piece message whose `data_len` bytes of data the caller
/// appends next, so the uploader can read from disk straight into the send buffer.
///
/// # Panics
/// If `data_len` is too large for the length prefix (more than `u32::MAX - 9`).
pub fn encode_piece_header(piece: u32, offset: u32, data_len: u32, out: &mut Vec<u8>) {
    let len = data_len
        .checked_add(9)
        .expect("piece message data exceeds what a length prefix can express");
    put_header(out, len, PIECE);
    out.extend_from_slice(&piece.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
}

/// A name for each id we decode, for error reports.
fn kind(id: u8) -> &'static str {
    match id {
        CHOKE => "choke",
        UNCHOKE => "unchoke",
        INTERESTED => "interested",
        NOT_INTERESTED => "not interested",
        HAVE => "have",
        BITFIELD => "bitfield",
        REQUEST => "request",
        PIECE => "piece",
        CANCEL => "cancel",
        PORT => "port",
        SUGGEST => "suggest",
        HAVE_ALL => "have all",
        HAVE_NONE => "have none",
        REJECT => "reject",
        ALLOWED_FAST => "allowed fast",
        _ => "unknown",
    }
}

/// Checks a length prefix (id byte included) against what message `id` may have.
fn check_len(id: u8, len: u32) -> Result<(), WireError> {
    let exactly = |expected: u32| {
        if len == expected {
            Ok(())
        } else {
            Err(WireError::BadLength {
                kind: kind(id),
                expected,
                got: len,
            })
        }
    };
    let at_most = |max: u32| {
        if len <= max {
            Ok(())
        } else {
            Err(WireError::TooLong { id, len, max })
        }
    };
    match id {
        CHOKE | UNCHOKE | INTERESTED | NOT_INTERESTED | HAVE_ALL | HAVE_NONE => exactly(1),
        HAVE | SUGGEST | ALLOWED_FAST => exactly(5),
        BITFIELD => at_most(1 + MAX_BITFIELD_BYTES),
        REQUEST | CANCEL | REJECT => exactly(13),
        PIECE if len < 9 => Err(WireError::TooShort {
            kind: kind(id),
            min: 9,
            got: len,
        }),
        PIECE => at_most(MAX_PIECE_MESSAGE_LEN),
        PORT => exactly(3),
        _ => at_most(MAX_OTHER_MESSAGE_LEN),
    }
}

/// Builds the message from a payload whose length `check_len` accepted. The errors repeat
/// `check_len`'s verdicts, so a mistake there cannot turn into a panic here.
fn parse(id: u8, payload: &[u8]) -> Result<Message, WireError> {
    let fixed = |expected: usize| WireError::BadLength {
        kind: kind(id),
        expected: u32_saturating(expected + 1),
        got: u32_saturating(payload.len() + 1),
    };
    Ok(match id {
        CHOKE => Message::Choke,
        UNCHOKE => Message::Unchoke,
        INTERESTED => Message::Interested,
        NOT_INTERESTED => Message::NotInterested,
        HAVE_ALL => Message::HaveAll,
        HAVE_NONE => Message::HaveNone,
        HAVE | SUGGEST | ALLOWED_FAST => {
            let bytes: [u8; 4] = payload.try_into().map_err(|_| fixed(4))?;
            let piece = u32::from_be_bytes(bytes);
            match id {
                HAVE => Message::Have(piece),
                SUGGEST => Message::Suggest(piece),
                _ => Message::AllowedFast(piece),
            }
        }
        BITFIELD => Message::Bitfield(payload.to_vec()),
        REQUEST | CANCEL | REJECT => {
            let [p0, p1, p2, p3, o0, o1, o2, o3, l0, l1, l2, l3]: [u8; 12] =
                payload.try_into().map_err(|_| fixed(12))?;
            let block = BlockRef::new(
                u32::from_be_bytes([p0, p1, p2, p3]),
                u32::from_be_bytes([o0, o1, o2, o3]),
                u32::from_be_bytes([l0, l1, l2, l3]),
            );
            match id {
                REQUEST => Message::Request(block),
                CANCEL => Message::Cancel(block),
                _ => Message::Reject(block),
            }
        }
        PIECE => {
            let Some((&[p0, p1, p2, p3, o0, o1, o2, o3], data)) = payload.split_first_chunk::<8>()
            else {
                return Err(WireError::TooShort {
                    kind: kind(id),
                    min: 9,
                    got: u32_saturating(payload.len() + 1),
                });
            };
            Message::Piece {
                piece: u32::from_be_bytes([p0, p1, p2, p3]),
                offset: u32::from_be_bytes([o0, o1, o2, o3]),
                data: data.to_vec(),
            }
        }
        PORT => {
            let bytes: [u8; 2] = payload.try_into().map_err(|_| fixed(2))?;
            Message::Port(u16::from_be_bytes(bytes))
        }
        _ => Message::Unknown {
            id,
            payload: payload.to_vec(),
        },
    })
}

fn put_header(out: &mut Vec<u8>, len: u32, id: u8) {
    out.extend_from_slice(&len.to_be_bytes());
    out.push(id);
}

fn put_with_payload(out: &mut Vec<u8>, id: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len())
        .ok()
        .and_then(|n| n.checked_add(1))
        .expect("message payload exceeds what a length prefix can express");
    out.reserve(5 + payload.len());
    put_header(out, len, id);
    out.extend_from_slice(payload);
}

fn put_block(out: &mut Vec<u8>, id: u8, block: BlockRef) {
    put_header(out, 13, id);
    out.extend_from_slice(&block.piece.to_be_bytes());
    out.extend_from_slice(&block.offset.to_be_bytes());
    out.extend_from_slice(&block.len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant, with bytes typed by hand from BEP 3 (never produced by `encode`).
    fn golden() -> Vec<(&'static str, Vec<u8>, Message)> {
        vec![
            ("keep-alive", vec![0, 0, 0, 0], Message::KeepAlive),
            ("choke", vec![0, 0, 0, 1, 0], Message::Choke),
            ("unchoke", vec![0, 0, 0, 1, 1], Message::Unchoke),
            ("interested", vec![0, 0, 0, 1, 2], Message::Interested),
            (
                "not interested",
                vec![0, 0, 0, 1, 3],
                Message::NotInterested,
            ),
            (
                "have",
                vec![0, 0, 0, 5, 4, 0x01, 0x02, 0x03, 0x04],
                Message::Have(0x0102_0304),
            ),
            (
                "bitfield",
                vec![0, 0, 0, 3, 5, 0b1010_0000, 0b0000_0001],
                Message::Bitfield(vec![0b1010_0000, 0b0000_0001]),
            ),
            (
                "empty bitfield",
                vec![0, 0, 0, 1, 5],
                Message::Bitfield(vec![]),
            ),
            (
                "request",
                vec![0, 0, 0, 13, 6, 0, 0, 0, 7, 0, 0, 0x40, 0, 0, 0, 0x40, 0],
                Message::Request(BlockRef::new(7, 0x4000, 0x4000)),
            ),
            (
                "piece",
                vec![0, 0, 0, 12, 7, 0, 0, 0, 1, 0, 0, 0x40, 0, b'a', b'b', b'c'],
                Message::Piece {
                    piece: 1,
                    offset: 0x4000,
                    data: b"abc".to_vec(),
                },
            ),
            (
                "empty piece",
                vec![0, 0, 0, 9, 7, 0xFF, 0xFF, 0xFF, 0xFE, 0, 0, 0, 0],
                Message::Piece {
                    piece: 0xFFFF_FFFE,
                    offset: 0,
                    data: vec![],
                },
            ),
            (
                "cancel",
                vec![
                    0, 0, 0, 13, 8, 0, 0, 0x01, 0x00, 0, 0x01, 0x80, 0, 0, 0, 0x12, 0x34,
                ],
                Message::Cancel(BlockRef::new(0x100, 0x1_8000, 0x1234)),
            ),
            ("port", vec![0, 0, 0, 3, 9, 0x1A, 0xE1], Message::Port(6881)),
            (
                "extended",
                vec![0, 0, 0, 4, 20, 0, b'd', b'e'],
                Message::Unknown {
                    id: 20,
                    payload: vec![0, b'd', b'e'],
                },
            ),
            (
                "suggest",
                vec![0, 0, 0, 5, 13, 0, 0, 1, 2],
                Message::Suggest(258),
            ),
            ("have all", vec![0, 0, 0, 1, 14], Message::HaveAll),
            ("have none", vec![0, 0, 0, 1, 15], Message::HaveNone),
            (
                "reject",
                vec![0, 0, 0, 13, 16, 0, 0, 0, 7, 0, 0, 0x40, 0, 0, 0, 0x40, 0],
                Message::Reject(BlockRef::new(7, 0x4000, 0x4000)),
            ),
            (
                "allowed fast",
                vec![0, 0, 0, 5, 17, 0, 0, 0, 9],
                Message::AllowedFast(9),
            ),
            (
                "id 255",
                vec![0, 0, 0, 2, 255, 0x7F],
                Message::Unknown {
                    id: 255,
                    payload: vec![0x7F],
                },
            ),
        ]
    }

    /// A full-size piece message: header typed by hand, then 16 KiB of patterned data.
    fn full_piece() -> (Vec<u8>, Message) {
        let data: Vec<u8> = (0..=255u8).cycle().take(16 * 1024).collect();
        let mut wire = vec![0, 0, 0x40, 0x09, 7, 0, 0, 0, 3, 0, 0, 0x80, 0];
        wire.extend_from_slice(&data);
        let msg = Message::Piece {
            piece: 3,
            offset: 0x8000,
            data,
        };
        (wire, msg)
    }

    /// A tiny deterministic generator, so random tests need no new dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
        }
    }

    fn encoded(msg: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        msg.encode(&mut out);
        out
    }

    #[test]
    fn every_golden_message_decodes_and_reencodes_to_the_same_bytes() {
        for (name, wire, msg) in golden() {
            let decoded = Message::decode(&wire).unwrap();
            assert_eq!(decoded, Some((msg.clone(), wire.len())), "{name}");
            assert_eq!(encoded(&msg), wire, "{name}");
        }
    }

    #[test]
    fn every_cut_of_a_golden_message_needs_more_bytes() {
        for (name, wire, _) in golden() {
            for cut in 0..wire.len() {
                assert_eq!(
                    Message::decode(&wire[..cut]),
                    Ok(None),
                    "{name} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn piece_view_borrows_exactly_what_decode_copies_and_declines_the_rest() {
        // piece 2, offset 0x4000, data "abc", then a have: written by hand.
        let wire = [
            0, 0, 0, 12, 7, 0, 0, 0, 2, 0, 0, 0x40, 0, b'a', b'b', b'c', 0, 0, 0, 5, 4, 0, 0, 0, 9,
        ];
        let (view, used) = decode_piece(&wire).unwrap();
        assert_eq!(
            (view.piece, view.offset, view.data, used),
            (2, 0x4000, &b"abc"[..], 16)
        );
        let (msg, decoded) = Message::decode(&wire).unwrap().unwrap();
        assert_eq!(decoded, used);
        assert_eq!(
            msg,
            Message::Piece {
                piece: 2,
                offset: 0x4000,
                data: b"abc".to_vec()
            }
        );
        for cut in 0..used {
            assert_eq!(decode_piece(&wire[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_piece(&wire[used..]), None, "a have is not a piece");
        // Too short for piece and offset, and longer than a block: left to decode's errors.
        assert_eq!(decode_piece(&[0, 0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0]), None);
        let [a, b, c, d] = (MAX_PIECE_MESSAGE_LEN + 1).to_be_bytes();
        assert_eq!(decode_piece(&[a, b, c, d, 7]), None);
    }

    #[test]
    fn decode_leaves_bytes_of_the_next_message_alone() {
        for (name, wire, msg) in golden() {
            let mut buf = wire.clone();
            buf.extend_from_slice(&[0, 0, 0, 1, 2, 0xEE]);
            let decoded = Message::decode(&buf).unwrap();
            assert_eq!(decoded, Some((msg, wire.len())), "{name}");
        }
    }

    #[test]
    fn full_size_piece_needs_every_byte_then_round_trips() {
        let (wire, msg) = full_piece();
        assert_eq!(wire.len(), 4 + usize_from(MAX_PIECE_MESSAGE_LEN));
        for cut in [0, 4, 5, 13, wire.len() - 1] {
            assert_eq!(Message::decode(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(Message::decode(&wire), Ok(Some((msg.clone(), wire.len()))));
        assert_eq!(encoded(&msg), wire);
    }

    #[test]
    fn piece_header_matches_the_hand_typed_header() {
        let mut out = vec![0xAA];
        encode_piece_header(3, 0x8000, 16 * 1024, &mut out);
        assert_eq!(out, [0xAA, 0, 0, 0x40, 0x09, 7, 0, 0, 0, 3, 0, 0, 0x80, 0]);
        assert_eq!(out.len() - 1, PIECE_HEADER_LEN);
    }

    #[test]
    fn encode_appends_after_existing_bytes() {
        let mut out = vec![1, 2, 3];
        Message::Have(9).encode(&mut out);
        assert_eq!(out, [1, 2, 3, 0, 0, 0, 5, 4, 0, 0, 0, 9]);
    }

    #[test]
    fn id_matches_the_id_byte_on_the_wire() {
        for (name, wire, msg) in golden() {
            assert_eq!(msg.id(), wire.get(4).copied(), "{name}");
        }
    }

    #[test]
    fn decodes_many_messages_back_to_back() {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..3 {
            for (_, wire, msg) in golden() {
                stream.extend_from_slice(&wire);
                expected.push(msg);
            }
        }
        let mut decoded = Vec::new();
        let mut at = 0;
        while let Some((msg, used)) = Message::decode(&stream[at..]).unwrap() {
            decoded.push(msg);
            at += used;
        }
        assert_eq!(at, stream.len());
        assert_eq!(decoded, expected);
    }

    #[test]
    fn decodes_a_long_stream_fed_in_random_chunks() {
        let goldens = golden();
        let (piece_wire, piece_msg) = full_piece();
        for seed in [1, 0x9E37_79B9_7F4A_7C15, 0xDEAD_BEEF, 42_424_242] {
            let mut rng = XorShift(seed);
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..2_000 {
                if rng.below(50) == 0 {
                    stream.extend_from_slice(&piece_wire);
                    expected.push(piece_msg.clone());
                } else {
                    let (_, wire, msg) = &goldens[rng.below(goldens.len())];
                    stream.extend_from_slice(wire);
                    expected.push(msg.clone());
                }
            }

            let mut buf = Vec::new();
            let mut decoded = Vec::new();
            let mut fed = 0;
            while fed < stream.len() {
                // Mostly small reads, now and then one larger than a full piece message.
                let max_chunk = if rng.below(4) == 0 { 40_000 } else { 20 };
                let chunk = 1 + rng.below(max_chunk);
                let end = stream.len().min(fed + chunk);
                buf.extend_from_slice(&stream[fed..end]);
                fed = end;
                let mut at = 0;
                while let Some((msg, used)) = Message::decode(&buf[at..]).unwrap() {
                    decoded.push(msg);
                    at += used;
                }
                buf.drain(..at);
            }
            assert!(buf.is_empty(), "seed {seed}: {} bytes left over", buf.len());
            assert_eq!(decoded.len(), expected.len(), "seed {seed}");
            assert!(decoded == expected, "seed {seed}: decoded stream differs");
        }
    }

    #[test]
    fn rejects_piece_longer_than_one_block_from_the_first_five_bytes() {
        let len = MAX_PIECE_MESSAGE_LEN + 1;
        let [a, b, c, d] = len.to_be_bytes();
        assert_eq!(
            Message::decode(&[a, b, c, d, 7]),
            Err(WireError::TooLong {
                id: 7,
                len,
                max: MAX_PIECE_MESSAGE_LEN
            })
        );
    }

    #[test]
    fn accepts_the_largest_piece_prefix_and_waits_for_the_data() {
        let [a, b, c, d] = MAX_PIECE_MESSAGE_LEN.to_be_bytes();
        assert_eq!(Message::decode(&[a, b, c, d, 7, 0, 0]), Ok(None));
    }

    #[test]
    fn rejects_bitfield_payload_over_the_bound() {
        let len = 1 + MAX_BITFIELD_BYTES + 1;
        let [a, b, c, d] = len.to_be_bytes();
        assert_eq!(
            Message::decode(&[a, b, c, d, 5]),
            Err(WireError::TooLong {
                id: 5,
                len,
                max: 1 + MAX_BITFIELD_BYTES
            })
        );
        let [a, b, c, d] = (1 + MAX_BITFIELD_BYTES).to_be_bytes();
        assert_eq!(Message::decode(&[a, b, c, d, 5]), Ok(None));
    }

    #[test]
    fn rejects_unknown_id_over_the_bound() {
        let len = MAX_OTHER_MESSAGE_LEN + 1;
        let [a, b, c, d] = len.to_be_bytes();
        for id in [18, 20, 255] {
            assert_eq!(
                Message::decode(&[a, b, c, d, id]),
                Err(WireError::TooLong {
                    id,
                    len,
                    max: MAX_OTHER_MESSAGE_LEN
                }),
                "id {id}"
            );
        }
        let [a, b, c, d] = MAX_OTHER_MESSAGE_LEN.to_be_bytes();
        assert_eq!(Message::decode(&[a, b, c, d, 20]), Ok(None));
    }

    #[test]
    fn rejects_a_4_gib_length_prefix_for_every_id() {
        for id in 0..=255u8 {
            let err = Message::decode(&[0xFF, 0xFF, 0xFF, 0xFF, id]).unwrap_err();
            match err {
                WireError::TooLong { id: got, len, .. } => {
                    assert_eq!((got, len), (id, u32::MAX), "id {id}");
                }
                WireError::BadLength { got, .. } => assert_eq!(got, u32::MAX, "id {id}"),
                other => panic!("id {id}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_fixed_size_messages_of_the_wrong_length() {
        let cases: [(u8, &str, u32); 8] = [
            (0, "choke", 1),
            (1, "unchoke", 1),
            (2, "interested", 1),
            (3, "not interested", 1),
            (4, "have", 5),
            (6, "request", 13),
            (8, "cancel", 13),
            (9, "port", 3),
        ];
        for (id, kind, expected) in cases {
            for got in [expected - 1, expected + 1, u32::MAX] {
                if got == 0 {
                    continue; // a zero prefix is a keep-alive, whatever follows
                }
                let [a, b, c, d] = got.to_be_bytes();
                // The whole (wrong) message is there too, so nothing waits for more bytes.
                let mut wire = vec![a, b, c, d, id];
                wire.resize(5 + usize_from(got.min(64)), 0);
                assert_eq!(
                    Message::decode(&wire),
                    Err(WireError::BadLength {
                        kind,
                        expected,
                        got
                    }),
                    "id {id}, length {got}"
                );
            }
        }
    }

    #[test]
    fn rejects_hand_typed_port_message_with_a_third_byte() {
        assert_eq!(
            Message::decode(&[0, 0, 0, 4, 9, 0x1A, 0xE1, 0]),
            Err(WireError::BadLength {
                kind: "port",
                expected: 3,
                got: 4
            })
        );
    }

    #[test]
    fn rejects_piece_shorter_than_its_index_and_offset() {
        for got in 1..9 {
            let mut wire = vec![0, 0, 0, u8::try_from(got).unwrap(), 7];
            wire.resize(4 + usize_from(got), 0);
            assert_eq!(
                Message::decode(&wire),
                Err(WireError::TooShort {
                    kind: "piece",
                    min: 9,
                    got
                }),
                "length {got}"
            );
        }
    }

    #[test]
    fn errors_name_what_was_wrong() {
        let err = Message::decode(&[0xFF, 0xFF, 0xFF, 0xFF, 7]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "message id 7: length prefix 4294967295 exceeds the bound 16393"
        );
        let err = Message::decode(&[0, 0, 0, 2, 1, 0]).unwrap_err();
        assert_eq!(err.to_string(), "unchoke message must be 1 bytes, got 2");
    }
}
