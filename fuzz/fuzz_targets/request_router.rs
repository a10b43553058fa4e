//! Arbitrary bytes as HTTP requests, from the bytes in to the bytes written back (session,
//! framing, routing and tiny_http's response writer): every input is answered or refused,
//! and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = deployhook::harness::exchange_offline(data);
});
