//! The edges of exactness: what a reload, a hostile identity, a spread key, a window length or
//! a lease could do to a count, each against real Redis (and the in-memory backend where the
//! behaviour is shared).

use std::time::Duration;

use prometheus_client::registry::Registry;
use ratelimit_core::{
    Algorithm, CacheConfig, Config, Error, HotKeyConfig, Identity, KeyBuilder, Policy, RateLimiter,
    Source, Window,
};
use ratelimit_tests::{Backend, for_each_backend, spawn_allows};

/// `limit` a minute, with every decision sampled, so the hot-key shield knows a key is hot
/// from its first denials; with the cache on when `cache`.
fn locally_answered(limit: u64, cache: bool) -> Config {
    let config = Config::new(limit, Duration::from_secs(60))
        .with_hot_keys(HotKeyConfig::default().with_sample_every(1));
    match cache {
        true => config.with_cache(CacheConfig::new(Duration::from_millis(500), 1 << 20)),
        false => config,
    }
}

/// A limiter of 5 a minute ([`locally_answered`]) whose key `client` was asked 300 times: on
/// Redis, its denials are answered locally by then (asserted), by the cache or the shield.
async fn spent_until_denials_are_local(backend: Backend, cache: bool, prefix: &str) -> RateLimiter {
    let limiter = backend.limiter(locally_answered(5, cache), prefix).await;
    let mut from_cache = 0;
    for _ in 0..300 {
        let d = limiter.allow("client").await.expect("allow");
        from_cache += u32::from(d.source() == Source::Cache);
    }
    if backend != Backend::Memory {
        assert!(
            from_cache > 0,
            "cache={cache}: denials should be answered locally"
        );
    }
    limiter
}

/// A reload that raises the limit lifts the denials cached under the old one, with the cache on
/// and with the hot-key shield (on by default) alike.
async fn a_reload_lifts_cached_denials(backend: Backend) {
    for cache in [true, false] {
        let prefix = Backend::unique_prefix("reload-cache");
        let limiter = spent_until_denials_are_local(backend, cache, &prefix).await;
        let raised = backend.configure(locally_answered(100_000, cache), &prefix);
        let reloaded = limiter.reconfigure(raised).expect("reconfigure");
        let d = reloaded.allow("client").await.expect("allow");
        assert!(
            d.allowed(),
            "{backend:?} cache={cache}: still denied after the reload: {d:?}"
        );
        assert_eq!(d.limit(), 100_000);
    }
}

/// A reset gives a denied key its quota back at once, also where the denial is answered
/// locally: with the cache on and with the hot-key shield (on by default) alike, the reset
/// forgets the key the cache answered from.
async fn a_reset_lifts_cached_denials(backend: Backend) {
    for cache in [true, false] {
        let prefix = Backend::unique_prefix("reset-cache");
        let limiter = spent_until_denials_are_local(backend, cache, &prefix).await;
        limiter.reset("client").await.expect("reset");
        let d = limiter.allow("client").await.expect("allow");
        assert!(
            d.allowed(),
            "{backend:?} cache={cache}: still denied after the reset: {d:?}"
        );
        assert_eq!(d.remaining(), 4, "{backend:?} cache={cache}");
        // Another client's denial is not lifted by this one's reset.
        for _ in 0..10 {
            limiter.allow("other").await.expect("allow");
        }
        limiter.reset("client").await.expect("reset");
        let other = limiter.allow("other").await.expect("allow");
        assert!(!other.allowed(), "{backend:?} cache={cache}: {other:?}");
    }
}

/// After a reload from 10/1m to 10/1h, a denied client's log lives as long as the new window
/// says, on Redis as in memory: it does not expire with the old minute.
async fn a_denied_log_keeps_the_ttl_of_the_windows_in_force(backend: Backend) {
    if backend == Backend::Memory {
        return; // the twin suite holds memory and Redis expiries to the same millisecond
    }
    let prefix = Backend::unique_prefix("reload-ttl");
    for windows in [1, 2] {
        let minute: Vec<Window> = (0..windows)
            .map(|i| Window::new(10 * (i + 1), Duration::from_secs(60 * (i + 1))))
            .collect();
        let hour: Vec<Window> = (0..windows)
            .map(|i| Window::new(10 * (i + 1), Duration::from_secs(3600 * (i + 1))))
            .collect();
        let name = format!("logs{windows}");
        let limiter = backend
            .limiter(
                Config::with_policy(Policy::new(name.as_str(), minute)),
                &prefix,
            )
            .await;
        for _ in 0..10 {
            assert!(limiter.allow("client").await.expect("allow").allowed());
        }
        let limiter = limiter
            .reconfigure(backend.configure(
                Config::with_policy(Policy::new(name.as_str(), hour)),
                &prefix,
            ))
            .expect("reconfigure");
        assert!(!limiter.allow("client").await.expect("allow").allowed());
        let key = KeyBuilder::new(&prefix).keys(
            &Policy::new(name.as_str(), [Window::per_hour(1)]),
            Identity::new(b"client"),
        )[0]
        .clone();
        let ttl = pttl(backend, &key);
        assert!(
            ttl > 60_000 * windows as i64,
            "{backend:?}, {windows} windows: the log of a denied client expires in {ttl} ms"
        );
    }
}

fn pttl(backend: Backend, key: &str) -> i64 {
    for url in backend.redis_urls() {
        let mut connection = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connecting");
        if let Ok(ttl) = redis::cmd("PTTL").arg(key).query::<i64>(&mut connection)
            && ttl != -2
        {
            return ttl;
        }
    }
    panic!("{key} is on no node");
}

/// A client that sends the hashed form of someone else's identity (`#<32 hex>`) gets a quota
/// of its own; it cannot drain the other's.
async fn an_identity_that_looks_hashed_is_hashed_again(backend: Backend) {
    let prefix = Backend::unique_prefix("lookalike");
    let limiter = backend
        .limiter(Config::new(3, Duration::from_secs(3600)), &prefix)
        .await;
    let victim = "{victim}";
    let lookalike = Identity::new(victim.as_bytes()).as_str().to_owned();
    assert!(lookalike.starts_with('#'));
    for _ in 0..3 {
        assert!(limiter.allow(&lookalike).await.expect("allow").allowed());
    }
    let d = limiter.allow(victim).await.expect("allow");
    assert!(d.allowed(), "{backend:?}: the victim's quota was drained");
    assert_eq!(d.remaining(), 2);
    // Nor can a client name a sub-counter of a spread key.
    let spread = Policy::new("spread", [Window::per_hour(8)])
        .with_algorithm(Algorithm::TokenBucket)
        .with_spread(2);
    for _ in 0..8 {
        limiter
            .allow_with(&spread, "victim#0", 1)
            .await
            .expect("allow");
        limiter
            .allow_with(&spread, "victim#1", 1)
            .await
            .expect("allow");
    }
    let mut allowed = 0;
    for _ in 0..8 {
        allowed += u32::from(
            limiter
                .allow_with(&spread, "victim", 1)
                .await
                .expect("allow")
                .allowed(),
        );
    }
    assert_eq!(allowed, 8, "{backend:?}: sub-counters were drained by name");
    backend.assert_every_key_expires(&prefix);
}

/// A spread key's request is decided by one sub-counter: a cost above the largest share can
/// never be granted, and is an error like any cost above the limit.
async fn a_spread_cost_above_a_share_is_an_error(backend: Backend) {
    let prefix = Backend::unique_prefix("spread-cost");
    let limiter = backend
        .limiter(Config::new(100, Duration::from_secs(3600)), &prefix)
        .await;
    let spread = Policy::new("spread", [Window::per_hour(100)])
        .with_algorithm(Algorithm::TokenBucket)
        .with_spread(4);
    match limiter.allow_with(&spread, "k", 30).await {
        Err(Error::CostAboveLimit {
            cost: 30,
            limit: 25,
        }) => {}
        other => panic!("{backend:?}: {other:?}"),
    }
    let d = limiter.allow_with(&spread, "k", 25).await.expect("allow");
    assert!(d.allowed(), "{backend:?}: a full share fits");
}

/// Windows of 1 ms and 1500 µs in one policy are two windows, on Redis as in memory.
async fn windows_shorter_than_a_millisecond_apart_do_not_share_state(backend: Backend) {
    let prefix = Backend::unique_prefix("us-windows");
    for algorithm in [
        Algorithm::TokenBucket,
        Algorithm::FixedWindow,
        Algorithm::SlidingCounter,
    ] {
        let policy = Policy::new(
            format!("us-{algorithm}"),
            [
                Window::new(1000, Duration::from_micros(1000)),
                Window::new(1000, Duration::from_micros(1500)),
            ],
        )
        .with_algorithm(algorithm);
        let keys = KeyBuilder::new(&prefix).keys(&policy, Identity::new(b"k"));
        assert_ne!(keys[0], keys[1], "{algorithm}");
        let limiter = backend
            .limiter(Config::with_policy(policy.clone()), &prefix)
            .await;
        let d = limiter.allow_n("k", 3).await.expect("allow");
        // Had both windows shared one counter, the second would read the first's 3 and see 6.
        assert_eq!(d.remaining(), 997, "{backend:?} {algorithm}: {d:?}");
    }
}

/// Every series whose labels are known from the configuration exists, at zero, before the
/// first decision.
async fn known_series_exist_before_the_first_event(backend: Backend) {
    let prefix = Backend::unique_prefix("series");
    let limiter = backend
        .limiter(Config::new(5, Duration::from_secs(60)), &prefix)
        .await;
    let mut registry = Registry::default();
    limiter.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    for series in [
        r#"ratelimiter_fallback_events_total{mode="open"} 0"#,
        r#"ratelimiter_fallback_events_total{mode="closed"} 0"#,
        r#"ratelimiter_fallback_events_total{mode="local"} 0"#,
        r#"ratelimiter_redis_errors_total{kind="timeout"} 0"#,
        r#"ratelimiter_redis_errors_total{kind="connection"} 0"#,
        r#"ratelimiter_config_reloads_total{result="failed"} 0"#,
        r#"ratelimiter_requests_total{result="allowed",window="1m",rule="default"} 0"#,
        r#"ratelimiter_requests_total{result="denied",window="1m",rule="default"} 0"#,
        r#"ratelimiter_redis_latency_seconds_count{operation="allow"} 0"#,
    ] {
        assert!(
            text.contains(series),
            "{backend:?}: no `{series}` in\n{text}"
        );
    }
}

for_each_backend!(
    a_reload_lifts_cached_denials,
    a_reset_lifts_cached_denials,
    a_denied_log_keeps_the_ttl_of_the_windows_in_force,
    an_identity_that_looks_hashed_is_hashed_again,
    a_spread_cost_above_a_share_is_an_error,
    windows_shorter_than_a_millisecond_apart_do_not_share_state,
    known_series_exist_before_the_first_event,
);

/// Leases on several instances sharing one Redis, each under bursts of concurrent misses:
/// however many instances lease, never more than the limit is admitted within a window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_on_four_instances_never_admit_more_than_the_limit() {
    let prefix = Backend::unique_prefix("leases");
    let lease_config = || {
        Backend::Standalone.configure(
            Config::new(100, Duration::from_secs(3600))
                .with_cache(CacheConfig::new(Duration::from_millis(500), 1 << 20).with_leases(20)),
            &prefix,
        )
    };
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(RateLimiter::new(lease_config()).await.expect("limiter"));
    }
    let mut tasks = Vec::new();
    for round in 0..5 {
        for instance in &instances {
            tasks.extend(spawn_allows(instance, "shared", 100 + round));
        }
    }
    let mut allowed = 0;
    for task in tasks {
        allowed += u32::from(task.await.expect("task").expect("allow").allowed());
    }
    // Never more; fewer when permits sit unspent in another instance's lease (documented:
    // leases trade false denials for Redis calls).
    assert!(
        allowed <= 100,
        "four leasing instances admitted {allowed} of 100"
    );
    eprintln!("four leasing instances admitted {allowed} of 100");
    let leases: u64 = instances.iter().map(|i| i.stats().cache.leases_taken).sum();
    assert!(leases > 0, "the burst was answered without a single lease");

    // A policy whose window is not longer than the cache's ttl never leases: a permit spent
    // after its window had ended in Redis would be spent twice.
    let short = Policy::new("short", [Window::new(1000, Duration::from_millis(200))]);
    let before = instances[0].stats().cache.leases_taken;
    for _ in 0..50 {
        assert!(
            instances[0]
                .allow_with(&short, "k", 1)
                .await
                .expect("allow")
                .allowed()
        );
    }
    assert_eq!(
        instances[0].stats().cache.leases_taken,
        before,
        "a lease outliving its window"
    );
}

/// A cached denial lasts as long as Redis said, counted from when the call was sent, not from
/// when the reply came back: on a slow link (60 ms each way here), a client that comes back
/// exactly when Redis would admit it again is asked of Redis, not denied from the cache for
/// another round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_denial_does_not_outlive_redis_s_answer() {
    use ratelimit_tests::proxy::{Fault, FaultProxy};
    let server = ratelimit_tests::RedisServer::start();
    let upstream: std::net::SocketAddr = server.addr().parse().expect("address");
    let proxy = FaultProxy::start(upstream);
    const WINDOW: Duration = Duration::from_millis(400);
    let limiter = RateLimiter::new(
        Config::new(1, WINDOW)
            .with_prefix("anchor:")
            .with_cache(CacheConfig::new(Duration::from_millis(100), 1 << 20))
            .with_redis_config(
                ratelimit_core::RedisConfig::new([proxy.url()])
                    .with_timeout(Duration::from_secs(2)),
            ),
    )
    .await
    .expect("limiter");
    proxy.set(Fault::Delay(Duration::from_millis(60)));
    let sent = std::time::Instant::now();
    assert!(limiter.allow("client").await.expect("allow").allowed());
    let denied = limiter.allow("client").await.expect("allow");
    assert!(!denied.allowed());
    // Anchored when sent, the denial ends by `sent + WINDOW` plus however late the first call
    // reached Redis beyond its 60 ms; anchored at the reply it would last until at least
    // `sent + WINDOW + 120 ms`. Halfway, Redis must be asked again.
    tokio::time::sleep_until((sent + WINDOW + Duration::from_millis(60)).into()).await;
    let again = limiter.allow("client").await.expect("allow");
    assert_ne!(
        again.source(),
        Source::Cache,
        "the cached denial outlived Redis's answer: {again:?}"
    );
}
