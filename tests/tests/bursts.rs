//! Exactness under bursts, with the configuration users run: `Config::new(..).with_redis(..)`
//! (100 ms Redis timeout, breaker and local fallback on), thousands of concurrent callers, a
//! healthy Redis, and two busy loops competing for the CPUs.
//!
//! Time a call spends queued inside the limiter's own client is not a Redis failure: no
//! decision may come from the fallback, the breaker may not open, and exactly the limit passes.

use std::collections::HashMap;
use std::time::Duration;

use ratelimit_core::{Config, RateLimiter, Source};
use ratelimit_tests::{BusyLoops, shared_cluster, shared_standalone};

const LIMIT: u64 = 100;

/// One burst at a time: each test brings its own two busy loops, and several bursts at once
/// would measure a machine far busier than the one described.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy)]
enum Target {
    Standalone,
    Cluster,
}

/// The default configuration, as the README shows it, on `target`.
async fn limiter(target: Target, limit: u64, prefix: &str) -> RateLimiter {
    let config = Config::new(limit, Duration::from_secs(60)).with_prefix(prefix);
    let config = match target {
        Target::Standalone => config.with_redis(shared_standalone().url()),
        Target::Cluster => config.with_redis_cluster(shared_cluster().urls()),
    };
    RateLimiter::new(config)
        .await
        .unwrap_or_else(|e| panic!("building a limiter on {target:?}: {e}"))
}

/// The same configuration on a private `server` (to kill and restart), under `prefix`.
async fn limiter_on(server: &ratelimit_tests::RedisServer, prefix: &str) -> RateLimiter {
    let config = Config::new(LIMIT, Duration::from_secs(60))
        .with_prefix(prefix)
        .with_redis(server.url());
    RateLimiter::new(config)
        .await
        .unwrap_or_else(|e| panic!("building a limiter on {}: {e}", server.url()))
}

/// `callers` concurrent `allow` calls spread over `keys` keys (in turn): checks that exactly
/// `limit` were admitted for each key, then that Redis (or the cache, for denials) made every
/// decision: the queue behind the burst sent nothing to the fallback and opened no breaker.
async fn burst(limiter: &RateLimiter, keys: usize, callers: usize, limit: u64) {
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let limiter = limiter.clone();
            let key = format!("burst:{}", i % keys);
            tokio::spawn(async move {
                let decision = limiter.allow(&key).await;
                (key, decision)
            })
        })
        .collect();
    let mut allowed: HashMap<String, u64> = HashMap::new();
    let mut sources: HashMap<&'static str, u64> = HashMap::new();
    for task in tasks {
        let (key, decision) = task.await.expect("task panicked");
        let decision = decision.expect("no error with a healthy Redis");
        *sources.entry(decision.source().name()).or_default() += 1;
        *allowed.entry(key).or_default() += u64::from(decision.allowed());
    }
    assert_eq!(allowed.len(), keys);
    for (key, n) in &allowed {
        assert_eq!(
            *n, limit,
            "{key}: {n} admitted of {callers} callers ({sources:?})"
        );
    }
    let stats = limiter.stats();
    assert_eq!(
        stats.fallback_decisions, 0,
        "queued calls were sent to the fallback: {sources:?}, {stats:?}"
    );
    assert_eq!(
        stats.breaker_transitions.opened, 0,
        "the breaker opened on a healthy Redis: {stats:?}"
    );
    let by_redis = sources.get("redis").copied().unwrap_or(0);
    let by_cache = sources.get("cache").copied().unwrap_or(0);
    assert_eq!(by_redis + by_cache, callers as u64, "{sources:?}");
}

async fn exactly_the_limit_on_one_key(target: Target, callers: usize) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let _hogs = BusyLoops::start(2);
    let prefix = format!("burst-{callers}-{target:?}:");
    let limiter = limiter(target, LIMIT, &prefix).await;
    burst(&limiter, 1, callers, LIMIT).await;
}

async fn exactly_the_limit_on_each_of_100_keys(target: Target) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let _hogs = BusyLoops::start(2);
    let prefix = format!("burst-100keys-{target:?}:");
    // 200 callers a key against a limit of 100: half of them must be denied.
    let limiter = limiter(target, LIMIT, &prefix).await;
    burst(&limiter, 100, 20_000, LIMIT).await;
}

macro_rules! on_both {
    ($($name:ident => $test:ident($($arg:expr),*);)*) => {
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$test(super::Target::Standalone $(, $arg)*).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$test(super::Target::Cluster $(, $arg)*).await
                }
            )*
        }
    };
}

on_both! {
    one_key_1000_callers => exactly_the_limit_on_one_key(1_000);
    one_key_3000_callers => exactly_the_limit_on_one_key(3_000);
    one_key_10000_callers => exactly_the_limit_on_one_key(10_000);
    hundred_keys_20000_callers => exactly_the_limit_on_each_of_100_keys();
}

/// Redis dies half-way through a client's quota: the local fallback carries on from this
/// instance's own admissions, so the client gets exactly the rest of its limit, never a fresh
/// one. Then the same across a switch in the middle of a burst of 1000 callers, half-way
/// through the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_local_fallback_starts_from_this_instances_admissions() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = ratelimit_tests::RedisServer::start();
    let limiter = limiter_on(&server, "switch:").await;
    for _ in 0..60 {
        let d = limiter.allow("client").await.expect("allow");
        assert!(d.allowed());
        assert_eq!(d.source(), Source::Redis);
    }
    server.kill();
    let mut allowed = 0;
    for _ in 0..200 {
        let d = limiter.allow("client").await.expect("allow");
        assert!(matches!(d.source(), Source::Fallback(_)), "{d:?}");
        allowed += u64::from(d.allowed());
    }
    assert_eq!(allowed, LIMIT - 60, "the fallback started from zero");

    // A burst with Redis killed in its middle: never more than the limit in all.
    let server = ratelimit_tests::RedisServer::start();
    let limiter = limiter_on(&server, "switch-burst:").await;
    for _ in 0..50 {
        assert!(limiter.allow("burst").await.expect("allow").allowed());
    }
    let killer = tokio::task::spawn_blocking(move || {
        server.kill();
        server
    });
    let tasks = ratelimit_tests::spawn_allows(&limiter, "burst", 1000);
    let mut allowed = 0;
    let mut from_fallback = 0;
    for task in tasks {
        let d = task.await.expect("task").expect("allow");
        allowed += u64::from(d.allowed());
        from_fallback += u64::from(matches!(d.source(), Source::Fallback(_)));
    }
    drop(killer.await);
    assert!(
        50 + allowed <= LIMIT,
        "50 + {allowed} admitted across the switch ({from_fallback} decided by the fallback)"
    );
    eprintln!("switch in a burst: 50 + {allowed} admitted, {from_fallback} by the fallback");
}

/// And back: while Redis was away the fallback admitted the rest of the limit, which Redis
/// never heard of. When Redis returns (empty, after a restart), this instance still admits
/// nothing more until the window frees its own admissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_never_passes_the_limit_when_redis_returns() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = ratelimit_tests::RedisServer::start();
    let limiter = limiter_on(&server, "switch-back:").await;
    let mut allowed = 0;
    for _ in 0..30 {
        allowed += u64::from(limiter.allow("client").await.expect("allow").allowed());
    }
    server.kill();
    for _ in 0..200 {
        allowed += u64::from(limiter.allow("client").await.expect("allow").allowed());
    }
    assert_eq!(allowed, LIMIT);
    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut after = 0;
    let mut redis_answered = false;
    while std::time::Instant::now() < deadline && !redis_answered {
        let d = limiter.allow("client").await.expect("allow");
        after += u64::from(d.allowed());
        redis_answered = limiter.stats().breaker == Some(ratelimit_core::BreakerState::Closed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        redis_answered,
        "Redis never came back: {:?}",
        limiter.stats()
    );
    for _ in 0..50 {
        after += u64::from(limiter.allow("client").await.expect("allow").allowed());
    }
    assert_eq!(
        after, 0,
        "Redis, empty after its restart, handed out the limit again"
    );
    // Another client, unknown to the fallback, is Redis's to decide again.
    let d = limiter.allow("other").await.expect("allow");
    assert!(d.allowed());
    assert_eq!(d.source(), Source::Redis);
}

/// Several instances: while Redis is away each keeps within the limit on its own, so together
/// they pass at most N times it (3 here), never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn n_instances_pass_at_most_n_times_the_limit_while_redis_is_away() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = ratelimit_tests::RedisServer::start();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(limiter_on(&server, "n-instances:").await);
    }
    let mut before = 0;
    for instance in &instances {
        for _ in 0..20 {
            before += u64::from(instance.allow("client").await.expect("allow").allowed());
        }
    }
    assert_eq!(before, 60, "Redis shares one limit");
    server.kill();
    let mut during = Vec::new();
    for instance in &instances {
        let mut allowed = 0;
        for _ in 0..200 {
            allowed += u64::from(instance.allow("client").await.expect("allow").allowed());
        }
        during.push(allowed);
    }
    // Each instance carries on from its own 20.
    assert_eq!(during, [LIMIT - 20; 3]);
    let total = before + during.iter().sum::<u64>();
    assert_eq!(total, 3 * LIMIT);
    eprintln!("3 instances, Redis away: {total} admitted for a limit of {LIMIT}");
}
