//! Balancer pick cost per request: round robin, least request and peak-EWMA (with its
//! clock read and latency estimates, as `Upstream` picks) at 2, 16 and 256 endpoints, all
//! healthy; and the same with outlier detection on and one endpoint ejected.
//!
//! Run with `cargo bench -p nexus-benches --bench balancer`.

use criterion::{BenchmarkId, Criterion, criterion_main};
use nexus_core::config::LoadBalancing;
use nexus_core::ewma::PeakEwma;
use nexus_core::outlier::{Answer, OutlierConfig, Outliers};
use nexus_proxy::balance::{Balancer, Rng};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn bench_balancer(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer/pick");
    for n in [2usize, 16, 256] {
        let in_flight: Vec<AtomicUsize> = (0..n).map(|i| AtomicUsize::new(i % 3)).collect();
        let ewma: Vec<PeakEwma> = (0..n).map(|_| PeakEwma::new()).collect();
        for (i, e) in ewma.iter().enumerate() {
            e.observe(Duration::from_micros(500 + 37 * i as u64), false, Duration::from_secs(1));
        }
        let rng = Rng::seeded(7);
        // A wall clock is what a bench measures; the ban on std's Instant is for code that tests pause.
        #[allow(clippy::disallowed_types)]
        let epoch = std::time::Instant::now();
        for (name, kind) in [
            ("round_robin", LoadBalancing::RoundRobin),
            ("least_request", LoadBalancing::LeastRequest),
            ("peak_ewma", LoadBalancing::PeakEwma),
        ] {
            let lb = Balancer::new(kind, &vec![1; n]);
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    let now = if kind == LoadBalancing::PeakEwma { epoch.elapsed() } else { Duration::ZERO };
                    let load = |i: usize| {
                        let f = in_flight[i].load(Ordering::Relaxed) as u64;
                        if kind == LoadBalancing::PeakEwma {
                            (ewma[i].cost_ns(now) as u64).saturating_mul(f + 1)
                        } else {
                            f
                        }
                    };
                    black_box(lb.pick(&rng, |_| true, load))
                });
            });
        }
        // Outlier detection on, one endpoint out: every pick asks whether its choice is ejected.
        let outliers = Outliers::new(OutlierConfig { consecutive_5xx: 1, ..OutlierConfig::default() }, n);
        outliers.record(0, Answer::ServerError, Duration::from_secs(1));
        let lb = Balancer::new(LoadBalancing::LeastRequest, &vec![1; n]);
        group.bench_function(BenchmarkId::new("least_request_one_ejected", n), |b| {
            b.iter(|| {
                let now = Duration::from_secs(2);
                let ejected = outliers.any_ejected(now);
                let healthy = |i: usize| !(ejected && outliers.is_ejected(i, now));
                black_box(lb.pick(&rng, healthy, |i| in_flight[i].load(Ordering::Relaxed) as u64))
            });
        });
    }
    group.finish();
}

mod group {
    #![allow(missing_docs)]
    use super::bench_balancer;
    criterion::criterion_group!(benches, bench_balancer);
}

criterion_main!(group::benches);
