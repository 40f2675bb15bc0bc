//! The Redis backend against a real `redis-server` started on a free port
//! (`make test` installs it when missing).

use nexus_core::config::OnBackendError;
use nexus_middleware::rate_limit::{KeyValue, RateLimitConfig, RateLimiter, RedisOptions};
use nexus_middleware::test_util::RedisServer;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::time::Instant;

fn config(requests: u32) -> RateLimitConfig {
    RateLimitConfig { name: format!("t{requests}"), requests, per: Duration::from_secs(60), ..Default::default() }
}

const CLIENT: KeyValue<'static> = KeyValue::Ip(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)));

#[tokio::test]
async fn two_replicas_share_one_limit() {
    let r = RedisServer::start().await;
    let a = RateLimiter::redis(config(5), &r.url(), RedisOptions::default()).unwrap();
    let b = RateLimiter::redis(config(5), &r.url(), RedisOptions::default()).unwrap();
    let mut passed = Vec::new();
    for i in 0..6 {
        let l = if i % 2 == 0 { &a } else { &b };
        let d = l.check(CLIENT).await;
        assert!(!d.backend_error, "{d:?}");
        passed.push(d.allowed);
        if i < 5 {
            assert_eq!(d.remaining, 4 - i, "{d:?}");
        } else {
            assert_eq!(d.retry_after_secs, 12, "{d:?}");
            assert_eq!(d.reset_secs, 60, "{d:?}");
        }
    }
    assert_eq!(passed, [true, true, true, true, true, false]);
    // Another key is untouched.
    assert!(a.check(KeyValue::Text("other".into())).await.allowed);
}

#[tokio::test]
async fn an_unreachable_redis_follows_on_backend_error_without_hanging() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}/");
    for (on, allowed) in [(OnBackendError::Allow, true), (OnBackendError::Deny, false)] {
        let opts = RedisOptions { on_backend_error: on, timeout: Duration::from_millis(200), ..Default::default() };
        let l = RateLimiter::redis(config(1), &url, opts).unwrap();
        for _ in 0..3 {
            let started = Instant::now();
            let d = l.check(CLIENT).await;
            assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
            assert!(d.backend_error);
            assert_eq!(d.allowed, allowed);
        }
    }
}

#[tokio::test]
async fn redis_going_away_and_coming_back() {
    let r = RedisServer::start().await;
    let opts = RedisOptions {
        on_backend_error: OnBackendError::Deny,
        timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let l = RateLimiter::redis(config(100), &r.url(), opts).unwrap();
    assert!(l.check(CLIENT).await.allowed);
    let port = r.port();
    drop(r);
    let d = l.check(CLIENT).await;
    assert!(d.backend_error && !d.allowed, "{d:?}");
    // A new server on the same port: the connections recover by themselves.
    let _again = RedisServer::start_on(port).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = l.check(CLIENT).await;
        if d.allowed && !d.backend_error {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {d:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
