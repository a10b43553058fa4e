//! Arbitrary bytes as the journal's write-ahead log, and as the ops of one well-framed record:
//! decoding stops at the first bad record, never panics, and whatever it returns encodes back to
//! itself and replays as a consecutive run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    deployhook::harness::fuzz_decode(data);
});
