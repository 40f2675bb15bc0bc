//! Buckets in this process: governor's GCRA over a sharded map of 64-bit key
//! hashes, on a clock that follows `tokio::time` (so tests can pause it).

use super::{Decision, Fixed, KeyValue, ceil_secs};
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Checks between inline sweeps when no background sweeper runs.
const INLINE_SWEEP_EVERY: u64 = 1 << 16;

/// governor's clock, read from `tokio::time` (paused in tests).
#[derive(Debug, Clone)]
struct TokioClock {
    epoch: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.epoch)
    }
}

type Keyed =
    RateLimiter<u64, DashMapStateStore<u64, foldhash::fast::RandomState>, TokioClock, StateInformationMiddleware>;

pub(super) struct Local {
    limiter: Keyed,
    hasher: foldhash::fast::RandomState,
    interval: Duration,
    burst: u32,
    checks: AtomicU64,
    background: AtomicBool,
}

impl Local {
    pub(super) fn new(interval: Duration, burst: u32) -> Arc<Self> {
        let burst_nz = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(interval).unwrap_or_else(|| Quota::per_second(burst_nz)).allow_burst(burst_nz);
        let hasher = foldhash::fast::RandomState::default();
        let limiter = RateLimiter::dashmap_with_clock_and_hasher(quota, TokioClock { epoch: Instant::now() }, hasher)
            .with_middleware::<StateInformationMiddleware>();
        let local = Arc::new(Self {
            limiter,
            hasher: foldhash::fast::RandomState::default(),
            interval,
            burst,
            checks: AtomicU64::new(0),
            background: AtomicBool::new(false),
        });
        // Sweep in the background while a runtime runs; the task ends with the limiter.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            local.background.store(true, Ordering::Relaxed);
            let every = (interval * burst).clamp(Duration::from_secs(1), Duration::from_secs(30));
            handle.spawn(sweeper(Arc::downgrade(&local), every));
        }
        local
    }

    pub(super) fn check(&self, key: KeyValue<'_>, fixed: &Fixed) -> Decision {
        let hash = self.hasher.hash_one(&key);
        if !self.background.load(Ordering::Relaxed)
            && self.checks.fetch_add(1, Ordering::Relaxed) % INLINE_SWEEP_EVERY == INLINE_SWEEP_EVERY - 1
        {
            self.sweep();
        }
        let (allowed, remaining, until_full, retry) = match self.limiter.check_key(&hash) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity().min(self.burst);
                (true, remaining, self.interval * (self.burst - remaining), Duration::ZERO)
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                (false, 0, wait + self.interval * (self.burst - 1), wait)
            }
        };
        Decision {
            allowed,
            limit: self.burst,
            remaining,
            reset_secs: ceil_secs(until_full),
            retry_after_secs: ceil_secs(retry).max(1),
            backend_error: false,
            fixed: fixed.clone(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.limiter.len()
    }

    pub(super) fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

async fn sweeper(local: Weak<Local>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match local.upgrade() {
            Some(l) => l.sweep(),
            None => return,
        }
    }
}
