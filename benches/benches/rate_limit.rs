//! Rate-limit check cost (local buckets): one hot key, one thread and two
//! threads sharing the limiter, and a check among 1,000,000 live keys; then
//! the resident memory those 1M keys cost, printed as a line of its own.
//!
//! Run with `cargo bench -p nexus-benches --bench rate_limit`.

use criterion::{Criterion, criterion_main};
use nexus_middleware::rate_limit::{KeyValue, RateLimitConfig, RateLimiter};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const KEYS: u32 = 1_000_000;

fn limiter(requests: u32, per: Duration) -> RateLimiter {
    RateLimiter::local(RateLimitConfig { requests, per, ..Default::default() }).expect("valid limit")
}

fn ip(i: u32) -> KeyValue<'static> {
    KeyValue::Ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn bench_rate_limit(c: &mut Criterion) {
    // Limiters made inside a runtime get a background sweeper instead of inline
    // sweeps; this runtime is never driven, so no sweep runs during the measurement.
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let _guard = rt.enter();
    // A limit no bench reaches, so every check takes the "allowed" path a real
    // request mostly takes (with its RateLimit-* numbers computed).
    let hot = limiter(u32::MAX, Duration::from_secs(86_400));
    c.bench_function("rate_limit/check_one_key", |b| {
        b.iter(|| black_box(hot.check(black_box(ip(1))).ready()));
    });
    c.bench_function("rate_limit/check_header_key", |b| {
        b.iter(|| black_box(hot.check(black_box(KeyValue::Text("api-key-0123456789abcdef".into()))).ready()));
    });
    c.bench_function("rate_limit/check_two_threads", |b| {
        // A wall clock is what a bench measures; the ban on std's Instant is for code that tests pause.
        #[allow(clippy::disallowed_types)]
        b.iter_custom(|iters| {
            let other = hot.clone();
            let t = std::thread::spawn(move || {
                for i in 0..iters {
                    black_box(other.check(ip(u32::try_from(i % 1024).unwrap_or(0))).ready());
                }
            });
            let clock = std::time::Instant::now();
            for i in 0..iters {
                black_box(hot.check(ip(u32::try_from(i % 1024).unwrap_or(0) + 2048)).ready());
            }
            t.join().expect("thread");
            clock.elapsed()
        });
    });

    let before = rss_kib();
    // Keys stay live (not yet refilled) for the whole bench: an hour-long window.
    let many = limiter(1_000, Duration::from_secs(3_600));
    for i in 0..KEYS {
        black_box(many.check(ip(i)).ready());
    }
    let after = rss_kib();
    println!(
        "rate_limit/1M_keys: {} keys held, RSS +{} MiB ({} bytes per key)",
        many.len(),
        (after.saturating_sub(before)) / 1024,
        after.saturating_sub(before) * 1024 / u64::from(KEYS)
    );
    let mut i = 0u32;
    c.bench_function("rate_limit/check_among_1M_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(many.check(ip(i)).ready())
        });
    });
}

mod group {
    #![allow(missing_docs)]
    use super::bench_rate_limit;
    criterion::criterion_group!(benches, bench_rate_limit);
}

criterion_main!(group::benches);
