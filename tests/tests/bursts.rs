//! Exactness under bursts, with the configuration users run: `Config::new(..).with_redis(..)`
//! (100 ms Redis timeout, breaker and local fallback on) on tokio's default multi-threaded
//! runtime (one worker a core, as `#[tokio::main]` builds it), thousands of concurrent callers,
//! a healthy Redis, and two busy loops competing for the CPUs.
//!
//! The bursts once ran on four workers on the two cores. A 3-master cluster's burst of 20,000
//! callers then timed out a call or two in about one run in four: the client's own threads
//! (the workers, and the thread that reads the cluster's sockets), not Redis, went unscheduled
//! for 100 ms, among six busy threads on two cores. With the timeout at 30 ms and the client's
//! threads given priority over the busy loops (`renice`), 5 runs of 5 timed out nothing; with
//! Redis's processes given that priority instead, 3 of 5 still did.
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
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    super::$test(super::Target::Standalone $(, $arg)*).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread")]
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

/// `total_reads_processed` of `INFO stats`: the reads Redis made from client sockets.
fn reads_processed(server: &ratelimit_tests::RedisServer) -> u64 {
    let mut connection = server
        .client()
        .get_connection()
        .expect("the test's redis-server answers");
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut connection)
        .expect("INFO stats");
    info.lines()
        .find_map(|line| line.strip_prefix("total_reads_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO stats reports total_reads_processed")
}

/// Concurrent calls on one connection go out together, as pipelines, and the calls of a
/// pipeline on one key as one batch: Redis reads them in far fewer reads than there are calls,
/// and still decides each call exactly once, with its own answer: exactly the limit of each key
/// passes, and the script calls Redis ran are the calls sent alone plus one a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_go_out_together_and_each_runs_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = ratelimit_tests::RedisServer::start();
    let limiter = limiter_on(&server, "pipelines:").await;
    const CALLERS: usize = 1000;
    const KEYS: usize = 5;
    let (calls_before, reads_before) = (
        ratelimit_tests::evalsha_calls(&server.url()),
        reads_processed(&server),
    );
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let limiter = limiter.clone();
            tokio::spawn(async move { (i % KEYS, limiter.allow(&format!("k{}", i % KEYS)).await) })
        })
        .collect();
    let (mut allowed, mut by_redis) = ([0_u64; KEYS], 0);
    for task in tasks {
        let (key, decision) = task.await.expect("the caller's task");
        let decision = decision.expect("a decision");
        // The hot-key shield answers denials of these hot keys; Redis everything else.
        match decision.source() {
            Source::Redis => by_redis += 1,
            Source::Cache => assert!(!decision.allowed(), "the shield only denies"),
            other => panic!("a decision by {other:?}"),
        }
        allowed[key] += u64::from(decision.allowed());
    }
    assert_eq!(
        allowed, [LIMIT; KEYS],
        "exactly the limit of each key passed"
    );
    let calls = ratelimit_tests::evalsha_calls(&server.url()) - calls_before;
    let reads = reads_processed(&server) - reads_before;
    let stats = limiter.stats();
    assert_eq!(
        calls,
        by_redis - stats.coalesced_calls + stats.batches,
        "every call Redis decided ran once, alone or in a batch, none twice: {stats:?}"
    );
    assert!(
        stats.batches > 0,
        "calls on one key were decided together: {stats:?}"
    );
    assert!(
        stats.pipelines > 0 && stats.pipelined_calls >= 2 * stats.pipelines,
        "calls went out together: {} pipelines carried {} of {by_redis} calls",
        stats.pipelines,
        stats.pipelined_calls
    );
    assert!(
        reads * 4 <= by_redis,
        "{by_redis} decisions arrived in {reads} reads: not sent together"
    );
}

/// A burst on one fresh key with the local cache on (the README's `cache:` block): the callers
/// that had to wait for a turn ask the cache again once they have it, and the denial the first
/// replies left there answers them. Redis hears the calls of the first turns, not the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_that_waited_for_a_turn_find_the_denial_the_first_replies_cached() {
    use ratelimit_core::CacheConfig;

    let _one = ONE_AT_A_TIME.lock().await;
    let server = ratelimit_tests::RedisServer::start();
    const SPENT_AT: u64 = 5;
    const CALLERS: usize = 1000;
    let config = Config::new(SPENT_AT, Duration::from_secs(60))
        .with_prefix("waited:")
        .with_redis(server.url())
        .with_cache(CacheConfig::new(Duration::from_millis(500), 100_000_000));
    let limiter = RateLimiter::new(config)
        .await
        .unwrap_or_else(|e| panic!("building a limiter on {}: {e}", server.url()));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.allow("spent").await })
        })
        .collect();
    let (mut allowed, mut by_redis) = (0, 0);
    for task in tasks {
        let decision = task.await.expect("the caller's task").expect("a decision");
        match decision.source() {
            Source::Redis => by_redis += 1,
            Source::Cache => assert!(!decision.allowed(), "the exact cache only denies"),
            other => panic!("a decision by {other:?}"),
        }
        allowed += u64::from(decision.allowed());
    }
    assert_eq!(allowed, SPENT_AT, "exactly the limit passed");
    println!("Redis decided {by_redis} of {CALLERS} calls");
    // A pooled connection takes 16 calls at a time (`IN_FLIGHT_PER_CONNECTION`), 64 in all:
    // the rest of the burst waits, and finds the denial once its turn comes.
    let turns = ratelimit_core::test_util::IN_FLIGHT_PER_CONNECTION
        * ratelimit_core::RedisConfig::DEFAULT_POOL_SIZE;
    assert!(
        by_redis <= 4 * turns,
        "Redis decided {by_redis} of {CALLERS} calls on a key spent by its first {SPENT_AT}: \
         {:?}",
        limiter.stats()
    );
}

/// A caller that gives up while its pipeline is in flight (Redis stopped answering, the call
/// timed out) hands its connection's queue on: once Redis answers again, Redis decides again,
/// and nothing waits for a pipeline that nobody leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_that_give_up_leave_no_connection_waiting() {
    use ratelimit_core::{FallbackConfig, FallbackMode};
    let _one = ONE_AT_A_TIME.lock().await;
    let server = ratelimit_tests::RedisServer::start();
    // A breaker that never opens: every call after the pause goes to Redis.
    let config = Config::new(1_000_000, Duration::from_secs(60))
        .with_prefix("abandoned:")
        .with_redis(server.url())
        .with_fallback(FallbackConfig::new(FallbackMode::Local, u32::MAX));
    let limiter = RateLimiter::new(config)
        .await
        .unwrap_or_else(|e| panic!("building a limiter on {}: {e}", server.url()));
    assert_eq!(
        limiter.allow("k").await.expect("a decision").source(),
        Source::Redis
    );
    let concurrent = |n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let limiter = limiter.clone();
                tokio::spawn(async move { limiter.allow(&format!("k{}", i % 7)).await })
            })
            .collect();
        async move {
            let mut sources = HashMap::new();
            for task in tasks {
                let decision = task.await.expect("the caller's task").expect("a decision");
                *sources.entry(decision.source()).or_insert(0) += 1;
            }
            sources
        }
    };
    server.pause();
    let while_paused = concurrent(300).await;
    server.resume();
    assert_eq!(
        while_paused.get(&Source::Redis),
        None,
        "Redis was stopped: the fallback decided ({while_paused:?})"
    );
    // The stopped server's connections were given up and are opened anew.
    for round in 0..3 {
        let after = concurrent(300).await;
        assert_eq!(
            after.get(&Source::Redis),
            Some(&300),
            "round {round} after Redis answers again: {after:?}"
        );
    }
}

/// A queued caller that gives up just as its connection's queue is handed to it (the hand-off
/// waiting, unread, when its timeout drops it) passes the queue on as it goes: the next call is
/// sent, instead of queueing forever behind a pipeline that nobody leads.
#[tokio::test]
async fn a_caller_that_gives_up_as_the_queue_reaches_it_passes_it_on() {
    use std::future::Future;
    use std::task::{Context, Waker};

    let server = ratelimit_tests::RedisServer::start();
    let connection = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("the test's redis-server answers");
    let lane = ratelimit_core::test_util::Lane::default();
    let (mut first, mut second, mut third) = (connection.clone(), connection.clone(), connection);
    let mut context = Context::from_waker(Waker::noop());
    // The first call is sent at once; the second queues behind it.
    let timeout = Duration::from_secs(2);
    let mut leader = Box::pin(lane.send(&mut first, redis::cmd("PING"), timeout));
    let mut queued = Box::pin(lane.send(&mut second, redis::cmd("PING"), timeout));
    assert!(
        leader.as_mut().poll(&mut context).is_pending(),
        "sent, no reply yet"
    );
    assert!(queued.as_mut().poll(&mut context).is_pending(), "queued");
    // The first call's reply comes: the queue is handed to the second caller, which gives up
    // before it reads that.
    leader.await.expect("PONG");
    drop(queued);
    let next = tokio::time::timeout(
        Duration::from_secs(2),
        lane.send(&mut third, redis::cmd("PING"), timeout),
    )
    .await;
    assert!(
        matches!(next, Ok(Ok(_))),
        "the next call waited for a pipeline nobody leads: {next:?}"
    );
}

/// Callers cancelled at any point of their call (a client that hangs up, a handler's own
/// timeout), round after round, leave every connection's queue usable: each round after, calls
/// on every pooled connection are decided by Redis at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_cancelled_anywhere_leave_every_queue_usable() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use ratelimit_core::{FallbackConfig, FallbackMode, RedisConfig};

    let _one = ONE_AT_A_TIME.lock().await;
    let seed = ratelimit_tests::seed_from_env("BURSTS_SEED");
    println!("BURSTS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let server = ratelimit_tests::RedisServer::start();
    // A breaker that never opens: a queue left waiting shows as a call that times out.
    let config = Config::new(1_000_000, Duration::from_secs(60))
        .with_prefix("cancelled:")
        .with_redis_config(RedisConfig::new([server.url()]).with_timeout(Duration::from_secs(1)))
        .with_fallback(FallbackConfig::new(FallbackMode::Local, u32::MAX));
    let pool = RedisConfig::DEFAULT_POOL_SIZE;
    let limiter = RateLimiter::new(config)
        .await
        .unwrap_or_else(|e| panic!("building a limiter on {}: {e}", server.url()));
    for round in 0..100 {
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let limiter = limiter.clone();
                let patience = Duration::from_micros(rng.random_range(0..3_000));
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(patience, limiter.allow(&format!("k{}", i % 3))).await;
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("the caller's task");
        }
        // One call on each pooled connection in turn (they are handed out round-robin).
        for probe in 0..2 * pool {
            let decision = tokio::time::timeout(Duration::from_millis(500), limiter.allow("probe"))
                .await
                .unwrap_or_else(|_| {
                    panic!("round {round}, probe {probe}: no answer in 500 ms (seed {seed})")
                })
                .expect("a decision");
            assert_eq!(
                decision.source(),
                Source::Redis,
                "round {round}, probe {probe} (seed {seed})"
            );
        }
    }
}
