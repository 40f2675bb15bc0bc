//! Retry decisions without a runtime: which methods may be retried, which
//! outcomes are retried (`retry_on`), the backoff with jitter, an upstream's
//! `Retry-After`, and a retry budget so retries cannot multiply load during an
//! outage (like linkerd's and Finagle's: each request deposits a fraction of a
//! retry, each retry withdraws a whole one, with a small floor per second).
//! Time is passed in, so all of it is unit-testable.
//!
//! ```
//! use std::time::Duration;
//! use nexus_core::retry::{Failure, RetryPolicy};
//! let policy = RetryPolicy::default(); // 2 retries, 50ms doubling up to 1s, on connect errors, 502/503/504
//! assert!(policy.retries_status(503));
//! assert!(!policy.retries_status(500));
//! assert!(policy.retries_failure(Failure::Connect));
//! // The first retry waits between 25 and 50 ms (jitter is the second argument, in [0, 1)).
//! assert_eq!(policy.backoff(0, 0.0), Duration::from_millis(25));
//! let second = policy.backoff(1, 0.5); // between 50 and 100 ms
//! assert!(second > Duration::from_millis(74) && second < Duration::from_millis(76));
//! ```

use crate::config::{RetryConfig, RetryOn};
use http::{HeaderMap, Method, header};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Request bodies up to this size are kept for replay; larger ones are never retried.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// A failure without a response, as `retry_on` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be opened (refused, unreachable, connect timeout).
    Connect,
    /// No response within the timeout.
    Timeout,
    /// The connection broke or the response was not HTTP.
    Reset,
}

/// When and how often to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub max_retries: u32,
    /// First backoff.
    pub initial_delay: Duration,
    /// Largest backoff; a longer `Retry-After` from the upstream means no retry.
    pub max_delay: Duration,
    /// Backoff multiplier per retry.
    pub backoff_factor: f64,
    /// What is retried.
    pub retry_on: Vec<RetryOn>,
    /// Retries allowed per original request, on average (budget). Default 0.2.
    pub budget_ratio: f64,
    /// Retries always allowed per second, whatever the ratio. Default 10.
    pub budget_min_per_second: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::from(&RetryConfig::default())
    }
}

impl From<&RetryConfig> for RetryPolicy {
    fn from(c: &RetryConfig) -> Self {
        Self {
            max_retries: c.max_retries,
            initial_delay: c.initial_delay.as_std(),
            max_delay: c.max_delay.as_std(),
            backoff_factor: c.backoff_factor,
            retry_on: c.retry_on.clone(),
            budget_ratio: c.budget_ratio,
            budget_min_per_second: c.budget_min_per_second,
        }
    }
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

impl RetryPolicy {
    /// Is a response with this status retried?
    pub fn retries_status(&self, status: u16) -> bool {
        self.retry_on.contains(&RetryOn::Status(status))
    }

    /// Is this failure retried?
    pub fn retries_failure(&self, failure: Failure) -> bool {
        let on = match failure {
            Failure::Connect => RetryOn::ConnectError,
            Failure::Timeout => RetryOn::Timeout,
            Failure::Reset => RetryOn::Reset,
        };
        self.retry_on.contains(&on)
    }

    /// The wait before retry number `retry` (0 for the first): `initial_delay *
    /// backoff_factor^retry`, at most `max_delay`, then "equal jitter": a uniform
    /// point in its upper half, chosen by `unit` in `[0, 1)`.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let exp = i32::try_from(retry).unwrap_or(i32::MAX);
        let full = (self.initial_delay.as_secs_f64() * self.backoff_factor.max(1.0).powi(exp))
            .min(self.max_delay.as_secs_f64());
        let jittered = full / 2.0 + full / 2.0 * unit.clamp(0.0, 1.0);
        Duration::from_secs_f64(jittered).min(self.max_delay)
    }

    /// The one retry decision, for every retry loop (`RetryLayer`'s and an upstream's): after
    /// try number `retries` (0 for the first) ended as `outcome`, the wait before trying
    /// again, or `None` when the outcome stands: it is not one `retry_on` names, `max_retries`
    /// are spent, or the upstream's `Retry-After` asks for longer than `max_delay` (its answer
    /// is passed on). A status that is retried waits the upstream's `Retry-After` when it
    /// gives one (at least the backoff), else the backoff; `unit` (jitter in `[0, 1)`) is
    /// drawn only then. The budget and the request's deadline are the caller's to check.
    ///
    /// ```
    /// use nexus_core::retry::{Failure, Outcome, RetryPolicy};
    /// let policy = RetryPolicy::default(); // retry_on: connect_error; max_retries: 2
    /// assert!(policy.wait_before_retry(0, Outcome::Failed(Some(Failure::Connect)), || 0.5).is_some());
    /// assert!(policy.wait_before_retry(2, Outcome::Failed(Some(Failure::Connect)), || 0.5).is_none());
    /// assert!(policy.wait_before_retry(0, Outcome::Failed(Some(Failure::Timeout)), || 0.5).is_none());
    /// ```
    pub fn wait_before_retry(
        &self,
        retries: u32,
        outcome: Outcome<'_>,
        unit: impl FnOnce() -> f64,
    ) -> Option<Duration> {
        if retries >= self.max_retries {
            return None;
        }
        let backoff = || self.backoff(retries, unit());
        match outcome {
            Outcome::Answered(status, headers) if self.retries_status(status) => match retry_after(headers) {
                Some(asked) if asked > self.max_delay => None,
                Some(asked) => Some(asked.max(backoff())),
                None => Some(backoff()),
            },
            Outcome::Answered(..) => None,
            Outcome::Failed(Some(failure)) => self.retries_failure(failure).then(backoff),
            // An error of unknown kind (a service's own error type): as a broken connection.
            Outcome::Failed(None) => {
                (self.retries_failure(Failure::Connect) || self.retries_failure(Failure::Reset)).then(backoff)
            }
        }
    }
}

/// How a try ended, for [`RetryPolicy::wait_before_retry`].
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// A response: its status and headers (for `Retry-After`).
    Answered(u16, &'a HeaderMap),
    /// No response: the failure, when its kind is known.
    Failed(Option<Failure>),
}

/// An upstream's `Retry-After` in seconds (the HTTP-date form is not honoured).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// Milli-retries: one retry costs this much.
const RETRY_COST: i64 = 1000;

/// A shared retry budget: lock-free, time passed in.
#[derive(Debug)]
pub struct RetryBudget {
    balance: AtomicI64,
    deposit: i64,
    min_per_second: i64,
    cap: i64,
    last_refill_ms: AtomicU64,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per request on average, and at least
    /// `min_per_second` per second; it starts with one second's floor.
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        // The float is clamped to [0, 1000] before the conversion.
        #[allow(clippy::cast_possible_truncation)]
        let deposit = (ratio.clamp(0.0, 1.0) * 1000.0).round() as i64;
        let min = i64::from(min_per_second) * RETRY_COST;
        Self {
            balance: AtomicI64::new(min),
            deposit,
            min_per_second: min,
            // At most ten seconds of floor plus 100 requests' deposits can be saved up.
            cap: min * 10 + deposit * 100,
            last_refill_ms: AtomicU64::new(0),
        }
    }

    /// An original request was sent at `now`.
    pub fn deposit(&self, now: Duration) {
        self.refill(now);
        self.add(self.deposit);
    }

    /// May a retry go now? Takes one retry from the budget when it may.
    pub fn withdraw(&self, now: Duration) -> bool {
        self.refill(now);
        let mut cur = self.balance.load(Ordering::Relaxed);
        loop {
            if cur < RETRY_COST {
                return false;
            }
            match self.balance.compare_exchange_weak(cur, cur - RETRY_COST, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    fn refill(&self, now: Duration) {
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        let last = self.last_refill_ms.load(Ordering::Relaxed);
        if last == 0 {
            // The first use starts the clock.
            let _ = self.last_refill_ms.compare_exchange(0, now_ms, Ordering::Relaxed, Ordering::Relaxed);
            return;
        }
        if now_ms <= last {
            return;
        }
        if self.last_refill_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            let elapsed = i64::try_from(now_ms - last).unwrap_or(i64::MAX);
            self.add(self.min_per_second.saturating_mul(elapsed) / 1000);
        }
    }

    fn add(&self, amount: i64) {
        let cap = self.cap.max(RETRY_COST);
        let _ = self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((b + amount).min(cap)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods() {
        for m in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE, Method::OPTIONS] {
            assert!(is_idempotent(&m), "{m}");
        }
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(300),
            backoff_factor: 2.0,
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(0, 0.999_999_9).as_millis(), 99);
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 0.5), Duration::from_millis(225));
        assert_eq!(p.backoff(10, 1.0), Duration::from_millis(300));
    }

    #[test]
    fn retry_on_conditions() {
        let p = RetryPolicy { retry_on: vec![RetryOn::Timeout, RetryOn::Status(429)], ..RetryPolicy::default() };
        assert!(p.retries_failure(Failure::Timeout));
        assert!(!p.retries_failure(Failure::Connect));
        assert!(p.retries_status(429));
        assert!(!p.retries_status(503));
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn the_budget_limits_retries_to_a_ratio_plus_a_floor() {
        let b = RetryBudget::new(0.2, 2);
        let t = Duration::from_secs(100);
        // The starting floor: two retries.
        assert!(b.withdraw(t));
        assert!(b.withdraw(t));
        assert!(!b.withdraw(t));
        // 10 requests deposit two retries' worth.
        for _ in 0..10 {
            b.deposit(t);
        }
        assert!(b.withdraw(t));
        assert!(b.withdraw(t));
        assert!(!b.withdraw(t), "an outage cannot turn every request into three");
        // A second later the floor has refilled.
        let later = t + Duration::from_secs(1);
        assert!(b.withdraw(later));
        assert!(b.withdraw(later));
        assert!(!b.withdraw(later));
    }
}
