//! Circuit-breaker cost per request (acquire + record on a closed breaker), one
//! thread and two threads sharing one breaker.
//!
//! Run with `cargo bench -p nexus-benches --bench breaker`.

use criterion::{Criterion, criterion_main};
use nexus_core::breaker::{Breaker, BreakerConfig};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn bench_breaker(c: &mut Criterion) {
    let b = Breaker::new(BreakerConfig::default());
    c.bench_function("breaker/closed_acquire_record", |bench| {
        let now = Duration::from_secs(1);
        bench.iter(|| {
            let p = b.try_acquire(black_box(now)).expect("closed");
            b.record(p, black_box(true), now);
        });
    });
    c.bench_function("breaker/open_reject", |bench| {
        let open = Breaker::new(BreakerConfig { failure_threshold: 1, ..BreakerConfig::default() });
        let p = open.try_acquire(Duration::ZERO).expect("closed");
        open.record(p, false, Duration::ZERO);
        bench.iter(|| black_box(open.try_acquire(black_box(Duration::from_secs(1))).is_err()));
    });
    c.bench_function("breaker/closed_two_threads", |bench| {
        let shared = Arc::new(Breaker::new(BreakerConfig::default()));
        // A wall clock is what a bench measures; the ban on std's Instant is for code that tests pause.
        #[allow(clippy::disallowed_types)]
        bench.iter_custom(|iters| {
            let other = Arc::clone(&shared);
            let t = std::thread::spawn(move || {
                for _ in 0..iters {
                    let p = other.try_acquire(Duration::from_secs(1)).expect("closed");
                    other.record(p, true, Duration::from_secs(1));
                }
            });
            let clock = std::time::Instant::now();
            for _ in 0..iters {
                let p = shared.try_acquire(Duration::from_secs(1)).expect("closed");
                shared.record(p, true, Duration::from_secs(1));
            }
            t.join().expect("thread");
            clock.elapsed()
        });
    });
}

mod group {
    #![allow(missing_docs)]
    use super::bench_breaker;
    criterion::criterion_group!(benches, bench_breaker);
}

criterion_main!(group::benches);
