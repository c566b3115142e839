//! HTTP tracker replies: the bencoded body of an announce and of a scrape. The info hash the
//! scrape looks for is the input's first 20 bytes, so the fuzzer can find it in `files`.
#![no_main]

use btd::tracker::{parse_announce_response, parse_scrape_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_announce_response("http://t/announce", data);
    let info_hash: [u8; 20] = data.first_chunk::<20>().copied().unwrap_or([0x11; 20]);
    let _ = parse_scrape_response("http://t/announce", data, &info_hash);
});
