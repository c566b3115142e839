//! The peer wire protocol (BEP 3) as pure data: bytes in, typed values out, and back.
//!
//! This module owns the handshake ([`Handshake`]), the length-prefixed messages ([`Message`]) and
//! the piece bit set peers exchange ([`Bitfield`]), and compact peer and node info
//! ([`compact`], shared by the DHT). It has no sockets, no threads and no clocks:
//! the peer thread reads bytes into a buffer, hands them to [`Message::decode`] and writes what
//! [`Message::encode`] appends. Decoding bounds every length prefix by message id before it
//! allocates anything, reports incomplete input as `Ok(None)`, and never panics on peer input.
//! Every [`WireError`] means the peer broke the protocol: drop it.

pub mod bitfield;
pub mod compact;
pub mod extension;
pub mod handshake;
pub mod message;

pub use bitfield::Bitfield;
pub use extension::ExtendedHandshake;
pub use handshake::{HANDSHAKE_LEN, Handshake};
pub use message::{
    BLOCK_LEN, BlockRef, MAX_BITFIELD_BYTES, MAX_OTHER_MESSAGE_LEN, MAX_PIECE_MESSAGE_LEN, Message,
    PIECE_HEADER_LEN, encode_piece_header,
};

/// What a peer sent that breaks the wire protocol. Every variant is fatal for that connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A length prefix larger than anything legitimate for its message id; `max` bounds the
    /// length prefix (id byte included), so nothing was allocated for it.
    #[error("message id {id}: length prefix {len} exceeds the bound {max}")]
    TooLong { id: u8, len: u32, max: u32 },
    /// A variable-size message shorter than its fixed fields (a piece message under 9 bytes).
    #[error("{kind} message must be at least {min} bytes, got {got}")]
    TooShort {
        kind: &'static str,
        min: u32,
        got: u32,
    },
    /// A fixed-size message whose length prefix is not exactly its size.
    #[error("{kind} message must be {expected} bytes, got {got}")]
    BadLength {
        kind: &'static str,
        expected: u32,
        got: u32,
    },
    /// A bitfield payload that is not exactly `ceil(pieces / 8)` bytes.
    #[error("bitfield must be {expected} bytes, got {got}")]
    BitfieldLength { expected: u32, got: u32 },
    /// A bitfield with a bit set past the last piece.
    #[error("bitfield has spare bits set past the last piece")]
    SpareBitsSet,
    /// A handshake that does not open with 19 and `BitTorrent protocol`.
    #[error("handshake does not start with 19, \"BitTorrent protocol\"")]
    BadProtocolString,
}

// `usize_from` below relies on this: every length on the wire is a u32.
const _: () = assert!(usize::BITS >= u32::BITS);

/// Widens a wire length or index to `usize`.
const fn usize_from(n: u32) -> usize {
    // Lossless: the assertion above rejects targets whose usize is narrower than u32.
    n as usize
}

/// Narrows a buffer length to `u32` for an error report, saturating (the report only has to
/// show that it was wrong).
fn u32_saturating(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
