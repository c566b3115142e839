//! The peer wire decoder: a buffer of messages as a peer sends them. Every message that decodes
//! must re-encode to the bytes it came from (keep-alives aside, ids the decoder does not know are
//! carried as they are), and a bitfield is checked against a piece count taken from the input.
#![no_main]

use btd::wire::{Bitfield, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Ok(Some((msg, used))) = Message::decode(buf) {
        assert!(
            used > 0 && used <= buf.len(),
            "decode used {used} of {}",
            buf.len()
        );
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(out, &buf[..used], "{msg:?} re-encodes differently");
        if let Message::Bitfield(bytes) = &msg {
            let pieces = u32::try_from(data.len())
                .unwrap_or(u32::MAX)
                .saturating_mul(3);
            if let Ok(bitfield) = Bitfield::from_wire(bytes, pieces) {
                assert_eq!(bitfield.as_bytes(), bytes.as_slice());
                assert!(bitfield.count_ones() <= pieces);
            }
        }
        buf = &buf[used..];
    }
});
