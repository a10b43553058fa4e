//! Arbitrary bytes as an HTTP request: head parsing, framing and routing must answer or refuse,
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = deployhook::http::route_offline(data);
});
