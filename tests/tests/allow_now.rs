//! `allow_now`: a decision made without a future where nothing waits (in memory, or answered by
//! the cache), and nothing taken where Redis must be asked. On memory, standalone Redis and the
//! cluster.

use std::time::Duration;

use prometheus_client::registry::Registry;
use ratelimit_core::{
    CacheConfig, Config, Error, FallbackConfig, FallbackMode, Policy, PolicyError, RateLimiter,
    RedisConfig, Source, Window,
};
use ratelimit_tests::{Backend, RedisServer, for_each_backend};

/// `allow_now`, `allow_with_remote` after it (as the tower layer calls them) and `allow` count
/// against one quota: exactly the limit passes, whichever is called. Where Redis decides,
/// `allow_now` answers `None` and takes nothing.
async fn now_and_later_share_one_quota(backend: Backend) {
    let prefix = Backend::unique_prefix("now-quota");
    let limiter = backend
        .limiter(Config::new(10, Duration::from_secs(600)), &prefix)
        .await;
    let mut allowed = 0;
    for i in 0..30 {
        let decision = if i % 2 == 0 {
            match limiter.allow_now("client") {
                Some(decided) => decided.expect("decided now"),
                None => {
                    assert_ne!(backend, Backend::Memory, "memory always decides now");
                    let policy = limiter.policy().clone();
                    limiter
                        .allow_with_remote(&policy, "client", 1)
                        .await
                        .expect("allow_with_remote")
                }
            }
        } else {
            limiter.allow("client").await.expect("allow")
        };
        allowed += u32::from(decision.allowed());
    }
    assert_eq!(allowed, 10, "{backend:?}");

    // Nothing is taken by an `allow_now` that had to leave the decision to Redis.
    let fresh = "untouched";
    for _ in 0..25 {
        if let Some(decided) = limiter.allow_now(fresh) {
            assert_eq!(backend, Backend::Memory, "no cache: Redis decides");
            decided.expect("decided now");
        }
    }
    let left = limiter.peek(fresh).await.expect("peek").remaining();
    let expected = if backend == Backend::Memory { 0 } else { 10 };
    assert_eq!(left, expected, "{backend:?}");
}

/// With the cache on, a key Redis denied is answered now, by the cache, and the answer is the
/// same denial `allow` gives.
async fn a_cached_denial_is_answered_now(backend: Backend) {
    let prefix = Backend::unique_prefix("now-cache");
    let config = Config::new(1, Duration::from_secs(600))
        .with_cache(CacheConfig::new(Duration::from_millis(500), 1 << 20));
    let limiter = backend.limiter(config, &prefix).await;
    assert!(limiter.allow("abuser").await.expect("allow").allowed());
    assert!(!limiter.allow("abuser").await.expect("allow").allowed());
    let now = limiter
        .allow_now("abuser")
        .expect("the cache (or memory) knows the key")
        .expect("a decision");
    assert!(!now.allowed());
    assert!(
        now.retry_after()
            .is_some_and(|r| r > Duration::from_secs(500))
    );
    let source = if backend == Backend::Memory {
        Source::Memory
    } else {
        Source::Cache
    };
    assert_eq!(now.source(), source, "{backend:?}");
    // `allow_with_remote` does not ask the cache: Redis denies the key itself.
    let policy = limiter.policy().clone();
    let remote = limiter
        .allow_with_remote(&policy, "abuser", 1)
        .await
        .expect("a decision");
    assert!(!remote.allowed());
    let source = if backend == Backend::Memory {
        Source::Memory
    } else {
        Source::Redis
    };
    assert_eq!(remote.source(), source, "{backend:?}");
}

/// A cost that can never fit and a policy that is not valid are errors, answered now.
async fn errors_are_answered_now(backend: Backend) {
    let prefix = Backend::unique_prefix("now-errors");
    let limiter = backend
        .limiter(Config::new(5, Duration::from_secs(60)), &prefix)
        .await;
    let policy = Policy::new("uploads", [Window::per_minute(2)]);
    match limiter.allow_with_now(&policy, "client", 3) {
        Some(Err(Error::CostAboveLimit { cost: 3, limit: 2 })) => {}
        other => panic!("{backend:?}: {other:?}"),
    }
    let zero = Policy::new("zero", [Window::per_minute(0)]);
    match limiter.allow_with_now(&zero, "client", 1) {
        Some(Err(Error::Policy(PolicyError::ZeroLimit { index: 0 }))) => {}
        other => panic!("{backend:?}: {other:?}"),
    }
}

/// Decisions made now are counted in the metrics as `allow`'s are.
async fn decisions_made_now_are_counted(backend: Backend) {
    let prefix = Backend::unique_prefix("now-metrics");
    let config = Config::new(2, Duration::from_secs(600))
        .with_cache(CacheConfig::new(Duration::from_millis(500), 1 << 20));
    let limiter = backend.limiter(config, &prefix).await;
    for _ in 0..3 {
        limiter.allow("client").await.expect("allow");
    }
    // In memory each of these is decided now; on Redis, the cache answers the denied key.
    for _ in 0..4 {
        assert!(
            !limiter
                .allow_now("client")
                .expect("decided now")
                .expect("a decision")
                .allowed()
        );
    }
    let mut registry = Registry::default();
    limiter.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    for series in [
        r#"ratelimiter_requests_total{result="allowed",window="10m",rule="default"} 2"#,
        r#"ratelimiter_requests_total{result="denied",window="10m",rule="default"} 5"#,
    ] {
        assert!(
            text.contains(series),
            "{backend:?}: no `{series}` in\n{text}"
        );
    }
}

/// A burst of 1,000 concurrent callers deciding as the tower layer does (`allow_with_now`,
/// then `allow_with_remote` on `None`) admits exactly the limit with the exact cache, and never
/// more with leases.
async fn a_burst_decided_now_or_remotely_admits_the_limit(backend: Backend) {
    for leases in [false, true] {
        let prefix = Backend::unique_prefix("now-burst");
        let mut cache = CacheConfig::new(Duration::from_millis(500), 1 << 20);
        if leases {
            cache = cache.with_leases(10);
        }
        let limiter = backend
            .limiter(
                Config::new(100, Duration::from_secs(600)).with_cache(cache),
                &prefix,
            )
            .await;
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    let policy = limiter.policy().clone();
                    let decision = match limiter.allow_with_now(&policy, "client", 1) {
                        Some(decided) => decided,
                        None => limiter.allow_with_remote(&policy, "client", 1).await,
                    };
                    decision.expect("a decision").allowed()
                })
            })
            .collect();
        let mut allowed = 0;
        for task in tasks {
            allowed += u32::from(task.await.expect("task"));
        }
        if leases {
            assert!(
                (1..=100).contains(&allowed),
                "{backend:?} with leases: {allowed}"
            );
        } else {
            assert_eq!(allowed, 100, "{backend:?}");
        }
    }
}

for_each_backend!(
    a_burst_decided_now_or_remotely_admits_the_limit,
    now_and_later_share_one_quota,
    a_cached_denial_is_answered_now,
    errors_are_answered_now,
    decisions_made_now_are_counted,
);

/// With Redis gone, `allow_now` still leaves the decision to `allow` (`None`, nothing taken),
/// whose fallback answers, before and after the breaker opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_the_fallback_decides_through_allow() {
    let server = RedisServer::start();
    let config = Config::new(5, Duration::from_secs(600))
        .with_redis_config(
            RedisConfig::new([server.url()]).with_timeout(Duration::from_millis(300)),
        )
        .with_fallback(FallbackConfig::new(FallbackMode::Local, 2));
    let limiter = RateLimiter::new(config)
        .await
        .expect("a limiter on the test's Redis");
    assert!(limiter.allow("client").await.expect("allow").allowed());
    server.kill();
    let mut allowed = 0;
    for _ in 0..8 {
        assert!(
            limiter.allow_now("client").is_none(),
            "no local answer without a cache"
        );
        let decision = limiter.allow("client").await.expect("the fallback answers");
        assert_eq!(decision.source(), Source::Fallback(FallbackMode::Local));
        allowed += u32::from(decision.allowed());
    }
    assert!(
        (1..=5).contains(&allowed),
        "the local fallback admits within the limit: {allowed}"
    );
}
