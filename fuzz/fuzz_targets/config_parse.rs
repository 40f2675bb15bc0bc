//! Any JSON document gives a config or a list of errors with paths, never a panic;
//! a config that validates compiles into a route table that matches without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_core::config::Config;
use nexus_core::router::{RequestInfo, RouteTable};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    match Config::from_json(value) {
        Ok(config) => {
            let table = RouteTable::from_config(&config).expect("a valid config compiles");
            let _ = table.match_request(&RequestInfo::new(&http::Method::GET, Some("a.example.com"), "/a/b"));
        }
        Err(errors) => assert!(!errors.is_empty()),
    }
});
