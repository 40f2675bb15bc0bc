//! The YAML front end (`Config::from_yaml`, what `nexus validate` and the binary read): any
//! bytes give a config or a non-empty list of errors, never a panic; a config that validates
//! compiles into a route table that matches without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nexus_core::config::Config;
use nexus_core::router::{RequestInfo, RouteTable};

fuzz_target!(|data: &[u8]| {
    match Config::from_yaml(data) {
        Ok(config) => {
            let table = RouteTable::from_config(&config).expect("a valid config compiles");
            let _ = table.match_request(&RequestInfo::new(&http::Method::GET, Some("a.example.com"), "/a/b"));
        }
        Err(errors) => assert!(!errors.is_empty()),
    }
});
