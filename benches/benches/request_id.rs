//! Request-id cost per request: a new id (the common case: clients rarely send one) and
//! keeping a client's valid id.
//!
//! Run with `cargo bench -p nexus-benches --bench request_id`.

use criterion::{Criterion, criterion_main};
use nexus_middleware::request_id;
use std::hint::black_box;

fn bench_request_id(c: &mut Criterion) {
    c.bench_function("request_id/generate", |b| b.iter(|| black_box(request_id::generate())));
    c.bench_function("request_id/ensure_missing", |b| {
        b.iter(|| {
            let mut headers = http::HeaderMap::new();
            black_box(request_id::ensure(black_box(&mut headers)))
        });
    });
    c.bench_function("request_id/ensure_kept", |b| {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", http::HeaderValue::from_static("4b1c0a52-client-chosen-id"));
        b.iter(|| black_box(request_id::ensure(black_box(&mut headers))));
    });
}

mod group {
    #![allow(missing_docs)]
    use super::bench_request_id;
    criterion::criterion_group!(benches, bench_request_id);
}

criterion_main!(group::benches);
