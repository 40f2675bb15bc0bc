//! Passive outlier detection, free of any runtime: callers pass `now` as the time
//! since an epoch of their choosing (a paused tokio clock in tests). Lock-free on
//! the request path (a few atomics per endpoint); a mutex only when an endpoint
//! reaches a threshold, so that the `max_ejection_percent` cap holds across threads.
//!
//! An endpoint is ejected after `consecutive_5xx` 5xx answers in a row, or
//! `consecutive_gateway_errors` gateway errors in a row (connect errors, timeouts,
//! 502/503/504). Its n-th ejection lasts n × `base_ejection_time`, at most
//! `max_ejection_time`; n falls by one for every `base_ejection_time` the endpoint
//! spends back in rotation (Envoy's rule), so an endpoint that recovered starts over.
//! At most `floor(endpoints × max_ejection_percent / 100)` are ejected at once.
//!
//! ```
//! use std::time::Duration;
//! use nexus_core::outlier::{Answer, OutlierConfig, Outliers};
//! let config = OutlierConfig { consecutive_5xx: 2, ..OutlierConfig::default() };
//! let set = Outliers::new(config, 2);
//! let t = Duration::from_secs(1);
//! assert_eq!(set.record(0, Answer::ServerError, t), None);
//! // The second 5xx in a row ejects endpoint 0 for base_ejection_time (30 s).
//! assert_eq!(set.record(0, Answer::ServerError, t), Some(t + Duration::from_secs(30)));
//! assert!(set.is_ejected(0, t) && !set.is_ejected(1, t));
//! // 50 % of 2 endpoints: endpoint 1 stays, whatever it answers.
//! for _ in 0..10 { set.record(1, Answer::ServerError, t); }
//! assert!(!set.is_ejected(1, t));
//! assert!(!set.is_ejected(0, t + Duration::from_secs(30)));
//! ```

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Outlier-detection settings (the `outlier_detection:` block of an upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// 5xx answers in a row that eject an endpoint.
    pub consecutive_5xx: u32,
    /// Gateway errors in a row (connect errors, timeouts, 502/503/504) that eject an endpoint.
    pub consecutive_gateway_errors: u32,
    /// The n-th ejection lasts n × this.
    pub base_ejection_time: Duration,
    /// The longest ejection.
    pub max_ejection_time: Duration,
    /// The largest share of endpoints ejected at once, in percent.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    /// The config file's defaults: 5, 3, 30 s, 300 s, 50 %.
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 3,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl From<&crate::config::OutlierDetectionConfig> for OutlierConfig {
    fn from(c: &crate::config::OutlierDetectionConfig) -> Self {
        Self {
            consecutive_5xx: c.consecutive_5xx.max(1),
            consecutive_gateway_errors: c.consecutive_gateway_errors.max(1),
            base_ejection_time: c.base_ejection_time.as_std(),
            max_ejection_time: c.max_ejection_time.as_std(),
            max_ejection_percent: c.max_ejection_percent.min(100),
        }
    }
}

/// What one answer of an endpoint was, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Anything below 500: the endpoint works.
    Success,
    /// A 5xx other than 502, 503 and 504.
    ServerError,
    /// A connect error, a timeout, or 502/503/504: counts as a 5xx too.
    GatewayError,
    /// Not the endpoint's doing (the client's body failed, say): counts for nothing.
    Neutral,
}

impl Answer {
    /// The answer an HTTP status stands for.
    ///
    /// ```
    /// use nexus_core::outlier::Answer;
    /// assert_eq!(Answer::of_status(404), Answer::Success);
    /// assert_eq!(Answer::of_status(500), Answer::ServerError);
    /// assert_eq!(Answer::of_status(503), Answer::GatewayError);
    /// ```
    pub fn of_status(status: u16) -> Self {
        match status {
            502..=504 => Self::GatewayError,
            500..=599 => Self::ServerError,
            _ => Self::Success,
        }
    }
}

/// One endpoint's counters and ejection. Shared (`Arc`) so that a reload keeps the
/// state of an endpoint that stays.
#[derive(Debug, Default)]
pub struct EndpointOutlier {
    five_xx: AtomicU32,
    gateway: AtomicU32,
    /// Ejections counted for the next one's length (n).
    ejections: AtomicU32,
    /// When the last ejection ends, in ms since the epoch; 0: never ejected.
    until_ms: AtomicU64,
}

impl EndpointOutlier {
    /// Whether the endpoint is out of rotation at `now`.
    pub fn is_ejected(&self, now: Duration) -> bool {
        millis(now) < self.until_ms.load(Ordering::Relaxed)
    }

    /// When the current ejection ends; `None` when not ejected at `now`.
    pub fn ejected_until(&self, now: Duration) -> Option<Duration> {
        let until = self.until_ms.load(Ordering::Relaxed);
        (millis(now) < until).then(|| Duration::from_millis(until))
    }

    /// Count an answer; whether a threshold is reached.
    fn count(&self, answer: Answer, config: &OutlierConfig) -> bool {
        // Reset only what is not already 0: no write to a shared line on a healthy path.
        let reset = |c: &AtomicU32| {
            if c.load(Ordering::Relaxed) != 0 {
                c.store(0, Ordering::Relaxed);
            }
        };
        match answer {
            Answer::Neutral => false,
            Answer::Success => {
                reset(&self.five_xx);
                reset(&self.gateway);
                false
            }
            Answer::ServerError => {
                reset(&self.gateway);
                self.five_xx.fetch_add(1, Ordering::Relaxed) + 1 >= config.consecutive_5xx
            }
            Answer::GatewayError => {
                let five = self.five_xx.fetch_add(1, Ordering::Relaxed) + 1;
                let gateway = self.gateway.fetch_add(1, Ordering::Relaxed) + 1;
                five >= config.consecutive_5xx || gateway >= config.consecutive_gateway_errors
            }
        }
    }
}

/// An upstream's endpoints under outlier detection.
#[derive(Debug)]
pub struct Outliers {
    config: OutlierConfig,
    endpoints: Box<[Arc<EndpointOutlier>]>,
    /// The latest end of any ejection (ms); 0 once every ejection has ended, so that
    /// balancing asks no endpoint while none is out.
    latest_until_ms: AtomicU64,
    /// Held only to decide an ejection: the cap counts the endpoints out right now.
    deciding: Mutex<()>,
}

impl Outliers {
    /// `count` endpoints, none ejected.
    pub fn new(config: OutlierConfig, count: usize) -> Self {
        Self::with_states(config, (0..count).map(|_| Arc::default()).collect())
    }

    /// Endpoints with the states given (a reload passes on those of endpoints that stay).
    pub fn with_states(config: OutlierConfig, endpoints: Vec<Arc<EndpointOutlier>>) -> Self {
        let latest = endpoints.iter().map(|e| e.until_ms.load(Ordering::Relaxed)).max().unwrap_or(0);
        Self {
            config,
            endpoints: endpoints.into_boxed_slice(),
            latest_until_ms: AtomicU64::new(latest),
            deciding: Mutex::new(()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// Endpoint `i`'s state (to hand over to the next config version).
    pub fn state(&self, i: usize) -> &Arc<EndpointOutlier> {
        &self.endpoints[i]
    }

    /// Whether some ejection may still run (no clock needed): false while none ever was,
    /// or since every ejection ended and [`any_ejected`](Self::any_ejected) noticed.
    pub fn maybe_ejected(&self) -> bool {
        self.latest_until_ms.load(Ordering::Relaxed) != 0
    }

    /// Whether any endpoint may be ejected at `now`. Cheap: one atomic load while none
    /// ever was, or since every ejection ended and someone noticed.
    pub fn any_ejected(&self, now: Duration) -> bool {
        let latest = self.latest_until_ms.load(Ordering::Relaxed);
        if latest == 0 {
            return false;
        }
        if millis(now) < latest {
            return true;
        }
        // All over: the next callers skip the per-endpoint checks (unless an ejection
        // raced in, which the compare-exchange leaves in place).
        let _ = self.latest_until_ms.compare_exchange(latest, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    /// Whether endpoint `i` is out of rotation at `now`.
    pub fn is_ejected(&self, i: usize, now: Duration) -> bool {
        self.endpoints.get(i).is_some_and(|e| e.is_ejected(now))
    }

    /// Count endpoint `i`'s answer at `now`; `Some(until)` when it ejected the endpoint.
    pub fn record(&self, i: usize, answer: Answer, now: Duration) -> Option<Duration> {
        let endpoint = self.endpoints.get(i)?;
        // Answers of requests that were in flight when it went out count for nothing.
        if endpoint.is_ejected(now) || !endpoint.count(answer, &self.config) {
            return None;
        }
        self.eject(i, now)
    }

    fn eject(&self, i: usize, now: Duration) -> Option<Duration> {
        let _deciding = self.deciding.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let endpoint = &self.endpoints[i];
        if endpoint.is_ejected(now) {
            return None;
        }
        let cap = self.endpoints.len() * self.config.max_ejection_percent.min(100) as usize / 100;
        let out = self.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        if out >= cap {
            // Over the cap: it stays, and its counters keep counting (the next failure asks again).
            return None;
        }
        let base = self.config.base_ejection_time.max(Duration::from_millis(1));
        // n falls by one for every base time spent back in rotation since the last ejection.
        let last_until = endpoint.until_ms.load(Ordering::Relaxed);
        let back_for = millis(now).saturating_sub(last_until);
        let recovered = u32::try_from(back_for / millis(base).max(1)).unwrap_or(u32::MAX);
        let n = endpoint.ejections.load(Ordering::Relaxed).saturating_sub(recovered).saturating_add(1);
        endpoint.ejections.store(n, Ordering::Relaxed);
        let length = base.saturating_mul(n).min(self.config.max_ejection_time.max(base));
        let until = now + length;
        endpoint.until_ms.store(millis(until), Ordering::Relaxed);
        endpoint.five_xx.store(0, Ordering::Relaxed);
        endpoint.gateway.store(0, Ordering::Relaxed);
        self.latest_until_ms.fetch_max(millis(until), Ordering::Relaxed);
        Some(Duration::from_millis(millis(until)))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn set(count: usize, config: OutlierConfig) -> Outliers {
        Outliers::new(config, count)
    }

    #[test]
    fn five_xx_in_a_row_eject_and_a_success_in_between_resets() {
        let s = set(4, OutlierConfig { consecutive_5xx: 3, ..OutlierConfig::default() });
        s.record(0, Answer::ServerError, S);
        s.record(0, Answer::ServerError, S);
        s.record(0, Answer::Success, S);
        s.record(0, Answer::ServerError, S);
        s.record(0, Answer::ServerError, S);
        assert!(!s.is_ejected(0, S), "the success started the count over");
        assert_eq!(s.record(0, Answer::ServerError, S), Some(S + Duration::from_secs(30)));
        assert!(s.any_ejected(S));
    }

    #[test]
    fn gateway_errors_have_their_own_threshold_and_a_plain_500_breaks_their_run() {
        let s =
            set(4, OutlierConfig { consecutive_5xx: 10, consecutive_gateway_errors: 2, ..OutlierConfig::default() });
        s.record(1, Answer::GatewayError, S);
        s.record(1, Answer::ServerError, S);
        assert_eq!(s.record(1, Answer::GatewayError, S), None, "the 500 broke the run of gateway errors");
        assert!(s.record(1, Answer::GatewayError, S).is_some());
        // Neutral answers change nothing.
        for _ in 0..20 {
            assert_eq!(s.record(2, Answer::Neutral, S), None);
        }
    }

    #[test]
    fn the_next_ejection_is_longer_and_recovery_shortens_it_again() {
        let config = OutlierConfig {
            consecutive_5xx: 1,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: 100,
            ..OutlierConfig::default()
        };
        let s = set(1, config);
        let t0 = Duration::from_secs(100);
        assert_eq!(s.record(0, Answer::ServerError, t0), Some(t0 + Duration::from_secs(10)));
        // Failures while ejected (requests already in flight) do not extend it.
        assert_eq!(s.record(0, Answer::ServerError, t0 + S), None);
        let t1 = t0 + Duration::from_secs(10);
        assert!(!s.is_ejected(0, t1));
        assert!(!s.any_ejected(t1));
        assert_eq!(s.record(0, Answer::ServerError, t1), Some(t1 + Duration::from_secs(20)));
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(s.record(0, Answer::ServerError, t2), Some(t2 + Duration::from_secs(25)), "capped");
        // 50 s back in rotation: five base times, n starts over.
        let t3 = t2 + Duration::from_secs(25 + 50);
        assert_eq!(s.record(0, Answer::ServerError, t3), Some(t3 + Duration::from_secs(10)));
    }

    #[test]
    fn the_cap_keeps_a_share_of_the_endpoints_in_rotation() {
        let cfg = |pct| OutlierConfig { consecutive_5xx: 1, max_ejection_percent: pct, ..OutlierConfig::default() };
        // 50 % of 3 is 1; 0 % ejects none; 100 % may eject all.
        for (pct, expect) in [(50, 1), (0, 0), (100, 3), (99, 2)] {
            let s = set(3, cfg(pct));
            for i in 0..3 {
                s.record(i, Answer::ServerError, S);
            }
            assert_eq!((0..3).filter(|&i| s.is_ejected(i, S)).count(), expect, "{pct} %");
        }
        // Once an ejection ends, the endpoint over the cap may go when it fails again.
        let s = set(2, cfg(50));
        s.record(0, Answer::ServerError, S);
        s.record(1, Answer::ServerError, S);
        assert!(s.is_ejected(0, S) && !s.is_ejected(1, S));
        let later = S + Duration::from_secs(30);
        assert!(s.record(1, Answer::ServerError, later).is_some());
    }

    #[test]
    fn states_carried_over_keep_their_ejection() {
        let s = set(2, OutlierConfig { consecutive_5xx: 1, ..OutlierConfig::default() });
        s.record(0, Answer::ServerError, S);
        let next = Outliers::with_states(OutlierConfig::default(), vec![Arc::clone(s.state(0)), Arc::default()]);
        assert!(next.is_ejected(0, S) && next.any_ejected(S));
    }

    #[test]
    fn threads_racing_to_eject_respect_the_cap() {
        let s = Arc::new(set(
            8,
            OutlierConfig { consecutive_5xx: 1, max_ejection_percent: 25, ..OutlierConfig::default() },
        ));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        s.record(i, Answer::GatewayError, S);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((0..8).filter(|&i| s.is_ejected(i, S)).count(), 2);
    }
}
