//! The gate in front of hyper's HTTP/1 parser: never a panic, and what hyper would read (and
//! which head is refused, and why) is the same whether the client's bytes come at once or in
//! pieces, with or without a replayed prefix (`nexus_proxy::http1::fuzzing::gate`). The first
//! two bytes choose the piece size and the prefix length.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [piece, prefix, rest @ ..] = data else { return };
    nexus_proxy::http1::fuzzing::gate(rest, usize::from(piece % 32) + 1, usize::from(*prefix));
});
