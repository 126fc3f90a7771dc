//! A Redis that may evict the limiter's keys is reported, not trusted: a count Redis drops is a
//! quota handed back without a word.

use std::time::Duration;

use prometheus_client::registry::Registry;
use ratelimit_core::{Config, RateLimiter};
use ratelimit_tests::{Backend, RedisServer, shared_cluster};

fn metrics_text(limiter: &RateLimiter) -> String {
    let mut registry = Registry::default();
    limiter.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text
}

/// A Redis shared as a cache (`allkeys-lru` under `maxmemory`): the limiter says so from the
/// start, and once other data pushes its keys out, it counts the evictions it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_is_reported_and_its_evictions_counted() {
    let server =
        RedisServer::start_with_args(&["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"]);
    let limiter = RateLimiter::new(
        Config::new(5, Duration::from_secs(3600))
            .with_prefix("evict:")
            .with_redis(server.url()),
    )
    .await
    .expect("limiter");
    assert!(
        metrics_text(&limiter)
            .contains(r#"ratelimiter_invariant_ok{invariant="redis_keeps_counts"} 0"#),
        "not reported at start:\n{}",
        metrics_text(&limiter)
    );
    let report = limiter.check_invariants().await;
    let check = report.get("redis_keeps_counts").expect("the invariant");
    assert!(!check.ok);
    assert!(check.detail.contains("allkeys-lru"), "{}", check.detail);

    // A client spends its quota, then other data fills the server.
    for _ in 0..5 {
        assert!(limiter.allow("client").await.expect("allow").allowed());
    }
    let mut connection = server.client().get_connection().expect("connect");
    let filler = "x".repeat(10_000);
    for i in 0..2_000 {
        let _: () = redis::cmd("SET")
            .arg(format!("cache:{i}"))
            .arg(&filler)
            .query(&mut connection)
            .expect("SET");
    }
    let report = limiter.check_invariants().await;
    let check = report.get("redis_keeps_counts").expect("the invariant");
    assert!(!check.ok);
    assert!(
        check.detail.contains("evicted since the limiter started"),
        "{}",
        check.detail
    );
    let text = metrics_text(&limiter);
    let evicted: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ratelimiter_redis_evicted_keys "))
        .and_then(|v| v.trim().parse().ok())
        .expect("ratelimiter_redis_evicted_keys");
    assert!(evicted > 0, "{text}");
}

/// `noeviction` (Redis's default), on a standalone server and on every primary of a cluster:
/// the invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_keeps_every_key_holds_the_invariant() {
    for backend in [Backend::Standalone, Backend::Cluster] {
        let prefix = Backend::unique_prefix("keeps");
        let limiter = backend
            .limiter(Config::new(5, Duration::from_secs(60)), &prefix)
            .await;
        let report = limiter.check_invariants().await;
        let check = report.get("redis_keeps_counts").expect("the invariant");
        assert!(check.ok, "{backend:?}: {}", check.detail);
        if backend == Backend::Cluster {
            let primaries = shared_cluster().masters().len();
            assert!(
                check.detail.starts_with(&format!("{primaries} primaries")),
                "{}",
                check.detail
            );
        }
    }
    // Under maxmemory, noeviction still keeps every key.
    let server =
        RedisServer::start_with_args(&["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"]);
    let limiter =
        RateLimiter::new(Config::new(5, Duration::from_secs(60)).with_redis(server.url()))
            .await
            .expect("limiter");
    let report = limiter.check_invariants().await;
    assert!(report.get("redis_keeps_counts").expect("invariant").ok);
}

/// A managed Redis that refuses `CONFIG GET`: unknown, which is not reported as safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_eviction_policy_is_not_taken_for_safe() {
    let server = RedisServer::start_with_args(&["--rename-command", "CONFIG", ""]);
    let limiter =
        RateLimiter::new(Config::new(5, Duration::from_secs(60)).with_redis(server.url()))
            .await
            .expect("limiter");
    let report = limiter.check_invariants().await;
    let check = report.get("redis_keeps_counts").expect("the invariant");
    assert!(!check.ok);
    assert!(check.detail.contains("unknown"), "{}", check.detail);
}
