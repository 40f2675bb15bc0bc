//! The upstream exchange's response-head parser: never a panic; a parsed head is final,
//! framed as its status says, and free of hop-by-hop fields
//! (`nexus_proxy::http1::fuzzing::response_head`). The first byte chooses whether the
//! request was a HEAD.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    nexus_proxy::http1::fuzzing::response_head(rest, first & 1 == 1);
});
