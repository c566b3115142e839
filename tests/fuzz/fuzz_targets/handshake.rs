//! The BitTorrent handshake: 68 bytes from whoever connected. One that decodes re-encodes to the
//! same bytes.
#![no_main]

use btd::wire::{HANDSHAKE_LEN, Handshake};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = data.first_chunk::<HANDSHAKE_LEN>() else {
        return;
    };
    if let Ok(handshake) = Handshake::decode(bytes) {
        assert_eq!(&handshake.encode(), bytes);
        let _ = (
            handshake.supports_extension_protocol(),
            handshake.supports_fast(),
            handshake.supports_dht(),
        );
    }
});
