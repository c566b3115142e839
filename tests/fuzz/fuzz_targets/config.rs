//! The daemon's TOML config: whatever the file says, parsing ends in a config or an error.
#![no_main]

use std::path::Path;

use btd::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, Path::new("/etc/btd/btd.toml")) {
        let _ = config.engine(None, None);
    }
});
