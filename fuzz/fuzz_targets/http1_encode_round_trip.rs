//! The upstream head encoder: what it writes, httparse parses back to the same method,
//! target and the fields the hyper path's rewrite would send; and chunks the server encodes
//! decode back to the same bytes (`nexus_proxy::http1::fuzzing::encode_round_trip`).
//!
//! Input: lines separated by `\n`; the first is `METHOD TARGET`, each further line a field
//! `name:value`. The first byte's low bit says whether the peer is a trusted proxy.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let mut lines = rest.split(|b| *b == b'\n');
    let Some(request_line) = lines.next() else { return };
    let mut parts = request_line.splitn(2, |b| *b == b' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else { return };
    let mut fields = Vec::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else { return };
        fields.push((&line[..colon], &line[colon + 1..]));
    }
    nexus_proxy::http1::fuzzing::encode_round_trip(method, target, &fields, first & 1 == 1);
});
