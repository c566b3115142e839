//! Extension protocol messages (BEP 10) from peers: the extended handshake, `ut_metadata`
//! (BEP 9) as the peer session decodes it, and `ut_pex` (BEP 11). What decodes re-encodes and
//! decodes to the same value.
#![no_main]

use btd::wire::ExtendedHandshake;
use btd::wire::extension::{MAX_PEX_PEERS, MetadataMessage, PexMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(handshake) = ExtendedHandshake::decode(data) {
        let again = handshake.encode();
        assert_eq!(
            ExtendedHandshake::decode(&again[1..]).as_ref(),
            Ok(&handshake)
        );
    }
    if let Ok(msg) = MetadataMessage::decode(data) {
        assert_eq!(MetadataMessage::decode(&msg.encode()).as_ref(), Ok(&msg));
    }
    if let Ok(pex) = PexMessage::decode(data) {
        assert!(pex.added.len() <= MAX_PEX_PEERS && pex.dropped.len() <= MAX_PEX_PEERS);
        assert_eq!(PexMessage::decode(&pex.encode()).as_ref(), Ok(&pex));
    }
});
