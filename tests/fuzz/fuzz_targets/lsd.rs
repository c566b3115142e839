//! Local service discovery announces (BEP 14), as any host on the LAN may send them.
#![no_main]

use btd::lsd::message::Announce;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Announce::parse(data);
});
