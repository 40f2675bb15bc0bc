//! Load balancing across an upstream's endpoints, lock-free: weighted round
//! robin (a precomputed smooth schedule and one atomic counter), weighted
//! random, and least-request and peak-EWMA by power of two choices (the caller's
//! `load` is requests in flight, or the peak-EWMA latency × (in flight + 1): see
//! [`nexus_core::ewma`]). Every random choice draws from a seedable [`Rng`], so tests
//! are reproducible.
//!
//! ```
//! use nexus_proxy::balance::{Balancer, Rng};
//! use nexus_core::config::LoadBalancing;
//! let lb = Balancer::new(LoadBalancing::RoundRobin, &[3, 1]);
//! let rng = Rng::seeded(7);
//! let picks: Vec<usize> = (0..4).map(|_| lb.pick(&rng, |_| true, |_| 0).unwrap()).collect();
//! assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 3);
//! ```

use nexus_core::config::LoadBalancing;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use nexus_core::rng::Rng;

/// Picks an endpoint index.
#[derive(Debug)]
pub struct Balancer {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    RoundRobin {
        schedule: Box<[u32]>,
        next: AtomicUsize,
    },
    Random {
        cumulative: Box<[u64]>,
    },
    /// Power of two choices by the caller's load: least-request and peak-EWMA.
    LeastRequest {
        weighted: Box<[u32]>,
    },
}

impl Balancer {
    /// A balancer for endpoints with these weights (0 = parked, never picked).
    pub fn new(strategy: LoadBalancing, weights: &[u32]) -> Self {
        let kind = match strategy {
            LoadBalancing::RoundRobin => {
                Kind::RoundRobin { schedule: smooth_schedule(weights), next: AtomicUsize::new(0) }
            }
            LoadBalancing::Random => {
                let mut acc = 0u64;
                Kind::Random {
                    cumulative: weights
                        .iter()
                        .map(|w| {
                            acc += u64::from(*w);
                            acc
                        })
                        .collect(),
                }
            }
            LoadBalancing::LeastRequest | LoadBalancing::PeakEwma => Kind::LeastRequest {
                weighted: weights.iter().enumerate().filter(|(_, w)| **w > 0).map(|(i, _)| i as u32).collect(),
            },
        };
        Self { kind }
    }

    /// Pick an endpoint among those `healthy` says yes to; `load` gives an
    /// endpoint's load for least-request (requests in flight) and peak-EWMA (latency
    /// × (in flight + 1)); the others do not call it. `None` when no endpoint with weight
    /// above 0 is healthy.
    pub fn pick(&self, rng: &Rng, healthy: impl Fn(usize) -> bool, load: impl Fn(usize) -> u64) -> Option<usize> {
        match &self.kind {
            Kind::RoundRobin { schedule, next } => {
                let len = schedule.len();
                if len == 0 {
                    return None;
                }
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..len).map(|k| schedule[(start + k) % len] as usize).find(|&i| healthy(i))
            }
            Kind::Random { cumulative } => {
                let total = *cumulative.last()?;
                if total == 0 {
                    return None;
                }
                let r = rng.below(total);
                let first = cumulative.partition_point(|&c| c <= r);
                if healthy(first) {
                    return Some(first);
                }
                // Fall back to a weighted draw among the healthy ones.
                let weight = |i: usize| cumulative[i] - if i == 0 { 0 } else { cumulative[i - 1] };
                let healthy_total: u64 = (0..cumulative.len()).filter(|&i| healthy(i)).map(weight).sum();
                if healthy_total == 0 {
                    return None;
                }
                let mut r = rng.below(healthy_total);
                (0..cumulative.len()).filter(|&i| healthy(i)).find(|&i| {
                    let w = weight(i);
                    if r < w {
                        true
                    } else {
                        r -= w;
                        false
                    }
                })
            }
            Kind::LeastRequest { weighted } => {
                let n = weighted.len() as u64;
                match n {
                    0 => None,
                    1 => Some(weighted[0] as usize).filter(|&i| healthy(i)),
                    _ => {
                        let a = weighted[rng.below(n) as usize] as usize;
                        let mut b = weighted[rng.below(n - 1) as usize] as usize;
                        if b == a {
                            b = weighted[(n - 1) as usize] as usize;
                        }
                        match (healthy(a), healthy(b)) {
                            (true, true) => Some(if load(b) < load(a) { b } else { a }),
                            (true, false) => Some(a),
                            (false, true) => Some(b),
                            (false, false) => {
                                weighted.iter().map(|&i| i as usize).filter(|&i| healthy(i)).min_by_key(|&i| load(i))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// nginx's smooth weighted round robin, unrolled into one cycle of picks, so
/// `{5, 1, 1}` gives `a a b a c a a` rather than `a a a a a b c`.
fn smooth_schedule(weights: &[u32]) -> Box<[u32]> {
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if g == 0 {
        return Box::new([]);
    }
    let w: Vec<i64> = weights.iter().map(|x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    // Very large weight sums are capped: the schedule keeps the ratios to ~0.1%.
    let scale = if total > 4096 { 4096.0 / total as f64 } else { 1.0 };
    let w: Vec<i64> = w.iter().map(|&x| if x == 0 { 0 } else { ((x as f64 * scale).round() as i64).max(1) }).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out.into_boxed_slice()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(lb: &Balancer, n: usize, len: usize, healthy: impl Fn(usize) -> bool + Copy) -> Vec<usize> {
        let rng = Rng::seeded(42);
        let mut c = vec![0; len];
        for _ in 0..n {
            c[lb.pick(&rng, healthy, |_| 0).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_smooth_and_weighted() {
        assert_eq!(&*smooth_schedule(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        let lb = Balancer::new(LoadBalancing::RoundRobin, &[2, 1, 0]);
        assert_eq!(counts(&lb, 300, 3, |_| true), vec![200, 100, 0]);
    }

    #[test]
    fn unhealthy_endpoints_are_skipped_and_none_healthy_is_none() {
        for kind in [LoadBalancing::RoundRobin, LoadBalancing::Random, LoadBalancing::LeastRequest] {
            let lb = Balancer::new(kind, &[1, 1, 1]);
            assert_eq!(counts(&lb, 100, 3, |i| i == 1), vec![0, 100, 0], "{kind:?}");
            assert_eq!(lb.pick(&Rng::seeded(1), |_| false, |_| 0), None, "{kind:?}");
        }
    }

    #[test]
    fn random_follows_weights_within_tolerance() {
        let lb = Balancer::new(LoadBalancing::Random, &[9, 1]);
        let c = counts(&lb, 10_000, 2, |_| true);
        // Binomial(10000, 0.1): sd = 30; 6 sd either side cannot flake.
        assert!((820..=1180).contains(&c[1]), "{c:?}");
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let lb = Balancer::new(LoadBalancing::LeastRequest, &[1, 1]);
        let rng = Rng::seeded(3);
        for _ in 0..50 {
            assert_eq!(lb.pick(&rng, |_| true, |i| if i == 0 { 10 } else { 0 }), Some(1));
        }
    }

    #[test]
    fn seeded_rng_is_reproducible() {
        let (a, b) = (Rng::seeded(9), Rng::seeded(9));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }
}
