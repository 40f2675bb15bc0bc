//! Buckets in Redis, shared by every replica: one GCRA script per check (atomic
//! on the server, using the server's clock so replicas need not agree on time),
//! a few multiplexed connections used in turn, and a timeout. When Redis cannot
//! answer in time, `on_backend_error` decides and the failure is logged (at
//! most once every ten seconds, so an outage does not flood the log).

use super::{BoxDecision, Decision, Fixed, KeyValue, RateLimitConfig, RateLimitError, ceil_secs};
use nexus_core::config::OnBackendError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// GCRA: `tat` (theoretical arrival time, µs) per key; tau = interval * (burst - 1).
/// Returns {allowed, remaining, retry_after_us, reset_us}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local tau = interval * (burst - 1)
local new_tat = tat + interval
local allow_at = new_tat - interval - tau
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((now - allow_at) / interval)
if remaining > burst - 1 then remaining = burst - 1 end
return {1, remaining, 0, new_tat - now}
";

/// How the Redis backend behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// Longest wait for one check (connecting included). Default 100 ms.
    pub timeout: Duration,
    /// Multiplexed connections used in turn. Default 4.
    pub connections: usize,
    /// What a check decides when Redis cannot answer. Default allow.
    pub on_backend_error: OnBackendError,
    /// Prefix of every key; the limit's name and the client key follow. Default `nexus:rl`.
    pub key_prefix: String,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(100),
            connections: 4,
            on_backend_error: OnBackendError::Allow,
            key_prefix: "nexus:rl".into(),
        }
    }
}

pub(super) struct RedisBackend {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    conns: OnceLock<Vec<ConnectionManager>>,
    next: AtomicUsize,
    script: redis::Script,
    options: RedisOptions,
    prefix: String,
    interval_us: u64,
    burst: u32,
    epoch: Instant,
    last_warn_ms: AtomicU64,
}

impl RedisBackend {
    pub(super) fn new(url: &str, config: &RateLimitConfig, options: RedisOptions) -> Result<Self, RateLimitError> {
        let client = redis::Client::open(url).map_err(|e| RateLimitError(format!("invalid Redis URL: {e}")))?;
        let interval_us = u64::try_from(config.interval()?.as_micros()).unwrap_or(u64::MAX).max(1);
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                conns: OnceLock::new(),
                next: AtomicUsize::new(0),
                script: redis::Script::new(GCRA),
                prefix: format!("{}:{}:", options.key_prefix, config.name),
                options,
                interval_us,
                burst: config.burst(),
                epoch: Instant::now(),
                last_warn_ms: AtomicU64::new(0),
            }),
        })
    }

    pub(super) fn check(&self, key: KeyValue<'_>, fixed: Fixed) -> BoxDecision {
        let shared = Arc::clone(&self.shared);
        let key = format!("{}{key}", shared.prefix);
        Box::pin(async move {
            let result = match shared.connection() {
                Ok(mut conn) => {
                    let mut call = shared.script.key(&key);
                    call.arg(shared.interval_us).arg(shared.burst);
                    match tokio::time::timeout(shared.options.timeout, call.invoke_async::<Vec<i64>>(&mut conn)).await {
                        Ok(Ok(v)) if v.len() == 4 => Ok(v),
                        Ok(Ok(v)) => Err(format!("unexpected script answer {v:?}")),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {:?}", shared.options.timeout)),
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(v) => {
                    let us = |x: i64| Duration::from_micros(u64::try_from(x).unwrap_or(0));
                    Decision {
                        allowed: v[0] == 1,
                        limit: shared.burst,
                        remaining: u32::try_from(v[1]).unwrap_or(0),
                        reset_secs: ceil_secs(us(v[3])),
                        retry_after_secs: ceil_secs(us(v[2])).max(1),
                        backend_error: false,
                        fixed,
                    }
                }
                Err(e) => {
                    shared.warn(&e);
                    on_error(shared.options.on_backend_error, shared.burst, fixed)
                }
            }
        })
    }
}

impl Shared {
    fn connection(&self) -> Result<ConnectionManager, String> {
        let conns = self.conns.get_or_init(|| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.options.timeout))
                .set_response_timeout(Some(self.options.timeout))
                .set_number_of_retries(1);
            (0..self.options.connections.max(1))
                .filter_map(|_| ConnectionManager::new_lazy_with_config(self.client.clone(), config.clone()).ok())
                .collect()
        });
        if conns.is_empty() {
            return Err("cannot create a Redis connection".into());
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % conns.len();
        Ok(conns[i].clone())
    }

    fn warn(&self, error: &str) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 10_000)
            && self.last_warn_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                prefix = %self.prefix,
                on_backend_error = ?self.options.on_backend_error,
                error,
                "rate-limit backend (Redis) failed; applying on_backend_error"
            );
        }
    }
}

/// What a backend failure decides.
fn on_error(on: OnBackendError, limit: u32, fixed: Fixed) -> Decision {
    Decision {
        allowed: on == OnBackendError::Allow,
        limit,
        remaining: 0,
        reset_secs: 0,
        retry_after_secs: 1,
        backend_error: true,
        fixed,
    }
}
