//! Path normalisation never panics, is idempotent, and never climbs above `/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_core::path::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(once) = normalize(s) {
        assert!(once.starts_with('/'));
        assert!(!once.split('/').any(|seg| seg == ".." || seg == "."), "{once}");
        assert!(!once.contains("//"), "{once}");
        let twice = normalize(&once).expect("a normalised path normalises");
        assert_eq!(once, twice);
    }
});
