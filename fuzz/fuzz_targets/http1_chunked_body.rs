//! The chunked body decoder: never a panic, and the same data, trailers and outcome
//! whether the bytes come at once or in pieces (`nexus_proxy::http1::fuzzing::chunked_body`).
//! The first byte chooses the piece size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    nexus_proxy::http1::fuzzing::chunked_body(rest, usize::from(first % 16) + 1);
});
