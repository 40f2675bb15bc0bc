//! Peak-EWMA latency, the load estimate of `load_balancing: peak_ewma` (Finagle's and
//! linkerd's balancer; tower's `load::PeakEwma` works the same way). Free of any runtime:
//! callers pass `now` as the time since an epoch of their choosing.
//!
//! The estimate jumps up to a latency above it at once (the peak), and otherwise moves
//! toward new latencies as an exponentially weighted moving average over time
//! ([`DECAY`]); read without new answers, it decays toward 0, so an endpoint that was
//! slow is tried again in time. A failed answer counts as at least [`FAILURE_PENALTY`]:
//! an endpoint that fails fast does not look fast. The balancer compares
//! `estimate × (requests in flight + 1)` of two random endpoints.
//!
//! Lock-free: two atomics per endpoint, updated without a compare loop (concurrent
//! answers may overwrite each other's update; the estimate stays an estimate).
//!
//! ```
//! use std::time::Duration;
//! use nexus_core::ewma::PeakEwma;
//! let e = PeakEwma::new();
//! let t = Duration::from_secs(1);
//! e.observe(Duration::from_millis(80), false, t);
//! assert!((e.cost_ns(t) - 80e6).abs() < 1.0);              // the peak, at once
//! e.observe(Duration::from_millis(1), false, t + Duration::from_millis(1));
//! assert!(e.cost_ns(t + Duration::from_millis(1)) > 79e6);   // falls slowly
//! assert!(e.cost_ns(t + Duration::from_secs(30)) < 5e6);      // decays when idle
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The estimate of an endpoint not heard from yet (linkerd's default).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// The EWMA's time constant.
pub const DECAY: Duration = Duration::from_secs(10);
/// The least latency a failed answer (5xx, connect error, timeout) counts as.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// One endpoint's peak-EWMA latency estimate.
#[derive(Debug)]
pub struct PeakEwma {
    /// The estimate at `stamp_ns`, in ns, as f64 bits.
    cost: AtomicU64,
    /// When the estimate was last updated (ns since the caller's epoch).
    stamp_ns: AtomicU64,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new()
    }
}

impl PeakEwma {
    /// An estimate of [`DEFAULT_RTT`], as of the epoch.
    pub fn new() -> Self {
        Self { cost: AtomicU64::new(nanos(DEFAULT_RTT).to_bits()), stamp_ns: AtomicU64::new(0) }
    }

    /// The estimate at `now`, in nanoseconds.
    pub fn cost_ns(&self, now: Duration) -> f64 {
        let (cost, elapsed) = self.load(now);
        cost * weight(elapsed)
    }

    /// An answer that took `rtt` (`failed`: counted as at least [`FAILURE_PENALTY`]).
    pub fn observe(&self, rtt: Duration, failed: bool, now: Duration) {
        let rtt = nanos(if failed { rtt.max(FAILURE_PENALTY) } else { rtt });
        let (cost, elapsed) = self.load(now);
        let next = if rtt > cost {
            rtt
        } else {
            let w = weight(elapsed);
            cost * w + rtt * (1.0 - w)
        };
        self.cost.store(next.to_bits(), Ordering::Relaxed);
        self.stamp_ns.store(u64::try_from(now.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn load(&self, now: Duration) -> (f64, f64) {
        let cost = f64::from_bits(self.cost.load(Ordering::Relaxed));
        let stamp = self.stamp_ns.load(Ordering::Relaxed);
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        #[allow(clippy::cast_precision_loss)]
        let elapsed = now.saturating_sub(stamp) as f64;
        (cost, elapsed)
    }
}

/// How much of the old estimate is left after `elapsed_ns`.
fn weight(elapsed_ns: f64) -> f64 {
    (-elapsed_ns / nanos(DECAY)).exp()
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_slow_endpoint_costs_more_and_a_failure_counts_as_slow() {
        let (fast, slow, failing) = (PeakEwma::new(), PeakEwma::new(), PeakEwma::new());
        let mut now = Duration::from_secs(1);
        for _ in 0..100 {
            now += MS;
            fast.observe(MS, false, now);
            slow.observe(80 * MS, false, now);
            failing.observe(Duration::from_micros(200), true, now);
        }
        assert!(fast.cost_ns(now) < slow.cost_ns(now));
        assert!(slow.cost_ns(now) < failing.cost_ns(now));
    }

    #[test]
    fn the_estimate_falls_toward_new_answers_over_the_decay_time() {
        let e = PeakEwma::new();
        let mut now = Duration::from_secs(1);
        e.observe(100 * MS, false, now);
        // Answers of 1 ms, 100 ms apart, for 30 s (three time constants): close to 1 ms.
        for _ in 0..300 {
            now += 100 * MS;
            e.observe(MS, false, now);
        }
        let ms = e.cost_ns(now) / 1e6;
        assert!((1.0..10.0).contains(&ms), "{ms} ms");
    }
}
