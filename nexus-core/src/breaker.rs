//! The circuit-breaker state machine, free of any runtime: callers pass `now`
//! as the time since an epoch of their choosing (a paused tokio clock in tests),
//! so it is unit-testable and fuzzable. Lock-free: a few atomics.
//!
//! Closed → Open after `failure_threshold` consecutive failures; Open rejects
//! until `open_timeout` has passed; then Half-open lets `half_open_max_requests`
//! real requests through at a time; `success_threshold` successes close it, one
//! failure opens it again.
//!
//! ```
//! use std::time::Duration;
//! use nexus_core::breaker::{Breaker, BreakerConfig, State};
//! let b = Breaker::new(BreakerConfig { failure_threshold: 2, success_threshold: 1,
//!     open_timeout: Duration::from_secs(10), half_open_max_requests: 1 });
//! let t0 = Duration::ZERO;
//! for _ in 0..2 { let p = b.try_acquire(t0).unwrap(); b.record(p, false, t0); }
//! assert_eq!(b.state(t0), State::Open);
//! assert_eq!(b.try_acquire(Duration::from_secs(3)).unwrap_err().retry_after_secs, 7);
//! let probe = b.try_acquire(Duration::from_secs(10)).unwrap();
//! b.record(probe, true, Duration::from_secs(10));
//! assert_eq!(b.state(Duration::from_secs(10)), State::Closed);
//! ```

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Breaker settings (the `circuit_breaker:` block of an upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open it.
    pub failure_threshold: u32,
    /// Successful half-open requests that close it.
    pub success_threshold: u32,
    /// How long it stays open before half-open.
    pub open_timeout: Duration,
    /// Requests let through at once while half-open.
    pub half_open_max_requests: u32,
}

impl Default for BreakerConfig {
    /// 5 failures, 2 successes, 10 s open, 1 probe at a time (SPEC §3 defaults).
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            success_threshold: 2,
            open_timeout: Duration::from_secs(10),
            half_open_max_requests: 1,
        }
    }
}

impl From<&crate::config::CircuitBreakerConfig> for BreakerConfig {
    fn from(c: &crate::config::CircuitBreakerConfig) -> Self {
        Self {
            failure_threshold: c.failure_threshold,
            success_threshold: c.success_threshold,
            open_timeout: c.open_timeout.as_std(),
            half_open_max_requests: c.half_open_max_requests,
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Passing traffic.
    Closed,
    /// Letting a few probe requests through.
    HalfOpen,
    /// Rejecting at once.
    Open,
}

impl State {
    /// The `nexus_circuit_breaker_state` gauge value: 0 closed, 1 half-open, 2 open.
    pub const fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }

    /// `closed`, `half_open` or `open`, as the admin API shows it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

/// Permission to send one request; give it back with [`Breaker::record`].
#[derive(Debug)]
#[must_use = "record the outcome, or the half-open slot stays taken"]
pub struct Permit {
    probe: bool,
}

impl Permit {
    /// Whether this is one of half-open's probes (its outcome decides the state).
    ///
    /// ```
    /// use std::time::Duration;
    /// use nexus_core::breaker::{Breaker, BreakerConfig};
    /// let b = Breaker::new(BreakerConfig { failure_threshold: 1, success_threshold: 1,
    ///     open_timeout: Duration::from_secs(10), half_open_max_requests: 1 });
    /// let p = b.try_acquire(Duration::ZERO).unwrap();
    /// assert!(!p.is_probe());
    /// b.record(p, false, Duration::ZERO);
    /// let p = b.try_acquire(Duration::from_secs(10)).unwrap();
    /// assert!(p.is_probe());
    /// # b.release(p);
    /// ```
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// The breaker refused: try again after this many seconds (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Whole seconds until a request could pass.
    pub retry_after_secs: u64,
}

/// One circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: AtomicU8,
    failures: AtomicU32,
    successes: AtomicU32,
    half_open_in_flight: AtomicU32,
    opened_at_nanos: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            half_open_in_flight: AtomicU32::new(0),
            opened_at_nanos: AtomicU64::new(0),
        }
    }

    /// The settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state at `now` (an open breaker whose timeout passed reads as half-open).
    pub fn state(&self, now: Duration) -> State {
        match self.state.load(Ordering::Acquire) {
            CLOSED => State::Closed,
            HALF_OPEN => State::HalfOpen,
            _ if self.open_remaining(now).is_zero() => State::HalfOpen,
            _ => State::Open,
        }
    }

    fn open_remaining(&self, now: Duration) -> Duration {
        let until = self.opened_at_nanos.load(Ordering::Acquire).saturating_add(nanos(self.config.open_timeout));
        Duration::from_nanos(until.saturating_sub(nanos(now)))
    }

    /// May a request go now?
    pub fn try_acquire(&self, now: Duration) -> Result<Permit, Rejected> {
        self.try_acquire_with(|| now)
    }

    /// [`try_acquire`](Self::try_acquire), reading the time only when the answer needs it
    /// (a closed breaker does not): for callers whose clock read costs more than the check.
    /// `now` is called once, or again if another thread reopens the breaker meanwhile.
    ///
    /// ```
    /// use std::time::Duration;
    /// use nexus_core::breaker::{Breaker, BreakerConfig};
    /// let b = Breaker::new(BreakerConfig { failure_threshold: 1, success_threshold: 1,
    ///     open_timeout: Duration::from_secs(10), half_open_max_requests: 1 });
    /// let p = b.try_acquire_with(|| unreachable!("closed: no clock read")).unwrap();
    /// b.record(p, false, Duration::ZERO);
    /// assert_eq!(b.try_acquire_with(|| Duration::from_secs(4)).unwrap_err().retry_after_secs, 6);
    /// ```
    pub fn try_acquire_with(&self, now: impl Fn() -> Duration) -> Result<Permit, Rejected> {
        loop {
            match self.state.load(Ordering::Acquire) {
                CLOSED => return Ok(Permit { probe: false }),
                OPEN => {
                    let remaining = self.open_remaining(now());
                    if !remaining.is_zero() {
                        let secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
                        return Err(Rejected { retry_after_secs: secs.max(1) });
                    }
                    if self.state.compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        self.successes.store(0, Ordering::Release);
                        self.half_open_in_flight.store(0, Ordering::Release);
                    }
                }
                _ => {
                    let taken = self.half_open_in_flight.fetch_add(1, Ordering::AcqRel);
                    if taken < self.config.half_open_max_requests {
                        return Ok(Permit { probe: true });
                    }
                    self.half_open_in_flight.fetch_sub(1, Ordering::AcqRel);
                    return Err(Rejected { retry_after_secs: 1 });
                }
            }
        }
    }

    /// Record the outcome of a permitted request.
    pub fn record(&self, permit: Permit, success: bool, now: Duration) {
        self.record_with(permit, success, || now);
    }

    /// [`record`](Self::record), reading the time only when the breaker opens. Returns
    /// whether [`state`](Self::state) may read differently than before this request: the
    /// outcome moved the breaker, or the request was a half-open probe (the breaker it
    /// went through may have been an open one whose timeout had passed). A success while
    /// closed, the usual case, returns `false`: a published state needs no update.
    ///
    /// ```
    /// use std::time::Duration;
    /// use nexus_core::breaker::{Breaker, BreakerConfig};
    /// let b = Breaker::new(BreakerConfig { failure_threshold: 2, success_threshold: 1,
    ///     open_timeout: Duration::from_secs(10), half_open_max_requests: 1 });
    /// let p = b.try_acquire(Duration::ZERO).unwrap();
    /// assert!(!b.record_with(p, true, || unreachable!("stays closed: no clock read")));
    /// let p = b.try_acquire(Duration::ZERO).unwrap();
    /// assert!(!b.record_with(p, false, || Duration::ZERO), "one failure of two");
    /// let p = b.try_acquire(Duration::ZERO).unwrap();
    /// assert!(b.record_with(p, false, || Duration::ZERO), "opened");
    /// let p = b.try_acquire(Duration::from_secs(10)).unwrap();
    /// assert!(b.record_with(p, true, || Duration::ZERO), "a probe: half-open now");
    /// ```
    pub fn record_with(&self, permit: Permit, success: bool, now: impl FnOnce() -> Duration) -> bool {
        if permit.probe {
            self.half_open_in_flight.fetch_sub(1, Ordering::AcqRel);
            if success {
                let n = self.successes.fetch_add(1, Ordering::AcqRel) + 1;
                if n >= self.config.success_threshold
                    && self.state.compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire).is_ok()
                {
                    self.failures.store(0, Ordering::Release);
                }
            } else {
                self.open(HALF_OPEN, now());
            }
            true
        } else if success {
            self.failures.store(0, Ordering::Release);
            false
        } else {
            let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
            n >= self.config.failure_threshold && self.open(CLOSED, now())
        }
    }

    /// Give a permit back without an outcome (the request was cancelled).
    pub fn release(&self, permit: Permit) {
        if permit.probe {
            self.half_open_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Open (from `from`); whether this call did.
    fn open(&self, from: u8, now: Duration) -> bool {
        let opened = self.state.compare_exchange(from, OPEN, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if opened {
            self.opened_at_nanos.store(nanos(now), Ordering::Release);
            self.failures.store(0, Ordering::Release);
        }
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn breaker(fail: u32, ok: u32, open: u64, probes: u32) -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: fail,
            success_threshold: ok,
            open_timeout: secs(open),
            half_open_max_requests: probes,
        })
    }

    fn fail(b: &Breaker, now: Duration) {
        let p = b.try_acquire(now).expect("allowed");
        b.record(p, false, now);
    }

    /// Port of the seed's `TestCircuitBreaker_OpensAfterFailures`.
    #[test]
    fn opens_after_failures() {
        let b = breaker(3, 2, 10, 1);
        assert!(b.try_acquire(secs(0)).is_ok_and(|p| {
            b.release(p);
            true
        }));
        for _ in 0..3 {
            fail(&b, secs(0));
        }
        assert_eq!(b.state(secs(0)), State::Open);
        assert_eq!(b.try_acquire(secs(1)).unwrap_err(), Rejected { retry_after_secs: 9 });
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let b = breaker(3, 2, 10, 1);
        fail(&b, secs(0));
        fail(&b, secs(0));
        let p = b.try_acquire(secs(0)).unwrap();
        b.record(p, true, secs(0));
        fail(&b, secs(0));
        fail(&b, secs(0));
        assert_eq!(b.state(secs(0)), State::Closed);
    }

    #[test]
    fn half_open_closes_after_successes() {
        let b = breaker(1, 2, 10, 1);
        fail(&b, secs(0));
        assert_eq!(b.state(secs(10)), State::HalfOpen);
        let p1 = b.try_acquire(secs(10)).unwrap();
        assert_eq!(b.try_acquire(secs(10)).unwrap_err().retry_after_secs, 1, "one probe at a time");
        b.record(p1, true, secs(10));
        assert_eq!(b.state(secs(10)), State::HalfOpen, "one success of two");
        let p2 = b.try_acquire(secs(11)).unwrap();
        b.record(p2, true, secs(11));
        assert_eq!(b.state(secs(11)), State::Closed);
    }

    #[test]
    fn half_open_reopens_on_one_failure() {
        let b = breaker(1, 2, 10, 1);
        fail(&b, secs(0));
        let p = b.try_acquire(secs(12)).unwrap();
        b.record(p, false, secs(12));
        assert_eq!(b.state(secs(12)), State::Open);
        assert_eq!(b.try_acquire(secs(13)).unwrap_err().retry_after_secs, 9, "open_timeout counts from the re-open");
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        let b = breaker(1, 1, 10, 1);
        fail(&b, Duration::ZERO);
        assert_eq!(b.try_acquire(Duration::from_millis(8_500)).unwrap_err().retry_after_secs, 2);
        assert_eq!(b.try_acquire(Duration::from_millis(9_999)).unwrap_err().retry_after_secs, 1);
    }
}
