//! The lean server's request-head parser: never a panic; a head it takes has an
//! origin-form target and frames no body (`nexus_proxy::http1::fuzzing::request_head`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| nexus_proxy::http1::fuzzing::request_head(data));
