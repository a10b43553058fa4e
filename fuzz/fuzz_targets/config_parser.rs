//! Arbitrary text as a config file: it is accepted or refused with a located error, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = deployhook::harness::parse_config(Path::new("/etc/deployhook/fuzz.toml"), text) {
            let _ = e.to_string();
        }
    }
});
