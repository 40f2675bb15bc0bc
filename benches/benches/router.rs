//! Route matching cost at 10, 1,000 and 10,000 routes: it must stay flat
//! (hash lookups per host and path segment, never a scan of every route).
//!
//! Run with `cargo bench -p nexus-benches --bench router`.

use criterion::{BenchmarkId, Criterion, criterion_main};
use http::{HeaderMap, Method};
use nexus_core::router::{RequestInfo, RouteTable};
use std::hint::black_box;

fn table(n: usize) -> RouteTable {
    let config = nexus_benches::route_config(n);
    RouteTable::from_config(&config).expect("valid routes")
}

fn bench_match(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    let headers = HeaderMap::new();
    for n in [10usize, 1_000, 10_000] {
        let t = table(n);
        // A request for the last route listed: a linear scan would pay for all n.
        let last = n - 1;
        let host = format!("svc{}.example.com", last % 50);
        let path = format!("/api/svc{last}/v1/items/42");
        group.bench_with_input(BenchmarkId::new("prefix_hit", n), &n, |b, _| {
            b.iter(|| {
                let req =
                    RequestInfo::new(&Method::GET, Some(black_box(&host)), black_box(&path)).with_headers(&headers);
                black_box(t.match_request(&req).route().map(nexus_core::router::Route::id))
            });
        });
        group.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| {
                let req = RequestInfo::new(&Method::GET, Some(black_box("nowhere.test")), black_box("/nothing/here"))
                    .with_headers(&headers);
                black_box(t.match_request(&req).route().is_none())
            });
        });
    }
    group.finish();
}

fn bench_normalize(c: &mut Criterion) {
    c.bench_function("path_normalize/already_normal", |b| {
        b.iter(|| black_box(nexus_core::path::normalize(black_box("/api/v1/users/123/orders")).is_ok()));
    });
    c.bench_function("path_normalize/dot_segments", |b| {
        b.iter(|| black_box(nexus_core::path::normalize(black_box("/api//v1/./users/../items/%7Ebob")).is_ok()));
    });
}

mod group {
    #![allow(missing_docs)]
    use super::{bench_match, bench_normalize};
    criterion::criterion_group!(benches, bench_match, bench_normalize);
}

criterion_main!(group::benches);
