//! Magnet URIs, as typed by a user or dropped in the watch directory as `*.magnet`.
#![no_main]

use btd::magnet::Magnet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Magnet::is_magnet(text);
    let _ = Magnet::parse(text);
});
