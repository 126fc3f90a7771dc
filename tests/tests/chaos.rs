//! Chaos: the limiter in front of a Redis that dies, restarts, slows down, vanishes behind a
//! partition or resets its connections.
//!
//! Every test has its own `redis-server` (it gets killed and restarted) reached through its own
//! [`FaultProxy`], and a limiter with a 100 ms Redis timeout, a breaker that opens after 3
//! consecutive failures and probes after 300 ms. Whatever Redis does, every call must answer
//! `Ok` within the timeout plus scheduling slack, with the fallback's semantics while Redis is
//! away, and decisions must come from Redis again once it is back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ratelimit_core::BreakerState;
use ratelimit_core::{
    CacheConfig, Config, Decision, Error, FallbackConfig, FallbackMode, RateLimiter, RedisConfig,
    Source,
};
use ratelimit_tests::RedisServer;
use ratelimit_tests::proxy::{Fault, FaultProxy};

/// The bound on every Redis call.
const TIMEOUT: Duration = Duration::from_millis(100);
/// Consecutive failures that open the breaker.
const THRESHOLD: u32 = 3;
/// How long the breaker stays open before a probe.
const COOL_DOWN: Duration = Duration::from_millis(300);
/// The most one decision may take: the timeout plus slack for a debug build on a 2-core
/// machine running these tests in parallel.
const DEADLINE: Duration = Duration::from_millis(250);
/// A call that has not answered by then is hung: fail instead of waiting forever.
const HANG: Duration = Duration::from_secs(3);
/// How long the limiter may take to decide on Redis again once Redis is back.
const RECOVERY: Duration = Duration::from_secs(5);
/// Pause between polls while waiting for recovery.
const POLL: Duration = Duration::from_millis(20);
/// Long enough that no window ends while a test runs.
const LONG_WINDOW: Duration = Duration::from_secs(600);
/// A limit no test reaches (when only the source of decisions matters).
const LARGE_LIMIT: u64 = 100_000;
/// Connections the limiter spreads calls over (round robin).
const POOL: usize = RedisConfig::DEFAULT_POOL_SIZE;
/// Flapping: Redis is down for one period, then up for one period, this many times.
const FLAP_PERIOD: Duration = Duration::from_secs(1);
/// Flapping: the number of kill/restart cycles (4 × 2 periods ≈ 8 s).
const FLAPS: u32 = 4;

/// A private Redis, a proxy in front of it, and a limiter talking to Redis through the proxy.
struct Rig {
    server: Arc<RedisServer>,
    proxy: FaultProxy,
    limiter: RateLimiter,
}

impl Rig {
    /// `limit` per `window`, fallback `mode`, built while the proxy passes.
    async fn start(mode: FallbackMode, limit: u64, window: Duration) -> Rig {
        Self::start_with(mode, Config::new(limit, window)).await
    }

    /// `config` pointed at a fresh server through a fresh proxy, with the chaos settings.
    async fn start_with(mode: FallbackMode, config: Config) -> Rig {
        let config =
            config.with_fallback(FallbackConfig::new(mode, THRESHOLD).with_cool_down(COOL_DOWN));
        Self::start_on(RedisServer::start(), None, config).await
    }

    /// `config` (its fallback included) pointed at `server` through a fresh proxy, with the
    /// chaos timeout; `password` is sent with `AUTH` on every new connection.
    async fn start_on(server: RedisServer, password: Option<&str>, config: Config) -> Rig {
        let server = Arc::new(server);
        let upstream: SocketAddr = server
            .addr()
            .parse()
            .expect("RedisServer::addr is a socket address");
        let proxy = FaultProxy::start(upstream);
        let url = match password {
            Some(password) => format!("redis://:{password}@{}", proxy.addr()),
            None => proxy.url(),
        };
        let config = config.with_redis_config(RedisConfig::new([url]).with_timeout(TIMEOUT));
        let limiter = RateLimiter::new(config)
            .await
            .expect("the limiter builds while the proxy passes");
        let rig = Rig {
            server,
            proxy,
            limiter,
        };
        // Open every pooled connection, as in a service that has been running for a while.
        for _ in 0..2 * POOL {
            let decision = timed("peek(warm-up)", rig.limiter.peek("warm-up")).await;
            assert_eq!(decision.source(), Source::Redis);
        }
        rig
    }

    /// `allow(key)`, which must answer `Ok` within [`DEADLINE`].
    async fn allow(&self, key: &str) -> Decision {
        timed(&format!("allow({key})"), self.limiter.allow(key)).await
    }

    /// Polls `peek(key)` until Redis answers it on every pooled connection (`2 * POOL` times in
    /// a row), within [`RECOVERY`]; returns the last decision. Peeks take nothing, so this
    /// leaves every count as it was.
    async fn until_redis(&self, key: &str) -> Decision {
        let deadline = Instant::now() + RECOVERY;
        let mut in_a_row = 0;
        loop {
            let decision = timed(&format!("peek({key})"), self.limiter.peek(key)).await;
            if decision.source() == Source::Redis {
                in_a_row += 1;
                if in_a_row == 2 * POOL {
                    return decision;
                }
                continue;
            }
            in_a_row = 0;
            assert!(
                Instant::now() < deadline,
                "Redis is back but decisions still come from {} after {RECOVERY:?}; {:?}",
                decision.source(),
                self.limiter.stats()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILLs Redis (blocking this worker, not the runtime).
    fn kill(&self) {
        tokio::task::block_in_place(|| self.server.kill());
    }

    /// Restarts Redis on the same port, empty (blocking this worker, not the runtime).
    fn restart(&self) {
        tokio::task::block_in_place(|| self.server.restart());
    }
}

/// Awaits a limiter call, asserting it answers `Ok` within [`DEADLINE`].
async fn timed(what: &str, call: impl Future<Output = Result<Decision, Error>>) -> Decision {
    let started = Instant::now();
    let result = tokio::time::timeout(HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for {HANG:?}"));
    let took = started.elapsed();
    let decision = result.unwrap_or_else(|e| panic!("{what} returned Err: {e}"));
    assert!(
        took < DEADLINE,
        "{what} took {took:?} (timeout {TIMEOUT:?}), decided by {}",
        decision.source()
    );
    decision
}

fn is_open(state: Option<BreakerState>) -> bool {
    matches!(state, Some(BreakerState::Open | BreakerState::HalfOpen))
}

/// Kill Redis, then restart it on the same port: the fallback answers with its mode's semantics
/// meanwhile, and Redis decides again once it is back.
async fn survives_a_killed_and_restarted_redis(mode: FallbackMode) {
    const LIMIT: u64 = 5;
    const WINDOW: Duration = Duration::from_secs(1);
    let rig = Rig::start(mode, LIMIT, WINDOW).await;
    assert_eq!(rig.allow("warm").await.source(), Source::Redis);

    rig.kill();
    let mut decisions = Vec::new();
    for _ in 0..2 * LIMIT + 2 {
        decisions.push(rig.allow("outage").await);
    }
    let last_allowed = Instant::now();
    for decision in &decisions {
        assert_eq!(decision.source(), Source::Fallback(mode));
    }
    let allowed: Vec<bool> = decisions.iter().map(Decision::allowed).collect();
    match mode {
        FallbackMode::Open => assert!(allowed.iter().all(|a| *a), "{allowed:?}"),
        FallbackMode::Closed => {
            assert!(allowed.iter().all(|a| !*a), "{allowed:?}");
            assert!(decisions.iter().all(|d| d.retry_after().is_some()));
        }
        FallbackMode::Local => {
            // Exactly the limit, first come first served, counted down in local memory ...
            let expected: Vec<bool> = (0..2 * LIMIT + 2).map(|i| i < LIMIT).collect();
            assert_eq!(allowed, expected);
            let remaining: Vec<u64> = decisions.iter().map(Decision::remaining).collect();
            assert_eq!(&remaining[..5], &[4, 3, 2, 1, 0]);
            // ... and again the next window.
            tokio::time::sleep_until((last_allowed + WINDOW + POLL).into()).await;
            let mut again = 0;
            for _ in 0..2 * LIMIT {
                let decision = rig.allow("outage").await;
                assert_eq!(decision.source(), Source::Fallback(mode));
                again += u64::from(decision.allowed());
            }
            assert_eq!(again, LIMIT, "local fallback, second window");
        }
    }
    let stats = rig.limiter.stats();
    assert!(is_open(stats.breaker), "{stats:?}");
    assert!(stats.breaker_transitions.opened >= 1, "{stats:?}");
    assert!(stats.fallback_decisions >= 2 * LIMIT + 2, "{stats:?}");

    rig.restart();
    rig.until_redis("after").await;
    let decision = rig.allow("after").await;
    assert_eq!(decision.source(), Source::Redis);
    assert!(decision.allowed());
    let stats = rig.limiter.stats();
    assert_eq!(stats.breaker, Some(BreakerState::Closed), "{stats:?}");
    assert!(stats.breaker_transitions.closed >= 1, "{stats:?}");
}

ratelimit_tests::tokio_test_cases!(survives_a_killed_and_restarted_redis {
    a_killed_redis_falls_back_open_then_recovers => FallbackMode::Open,
    a_killed_redis_falls_back_closed_then_recovers => FallbackMode::Closed,
    a_killed_redis_falls_back_local_then_recovers => FallbackMode::Local,
});

/// Redis answering after 300 ms (> the 100 ms timeout): the breaker opens after the threshold,
/// and no decision waits for Redis longer than the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_redis_opens_the_breaker_and_never_slows_decisions() {
    let rig = Rig::start(FallbackMode::Local, LARGE_LIMIT, LONG_WINDOW).await;
    assert_eq!(rig.allow("k").await.source(), Source::Redis);

    rig.proxy.set(Fault::Delay(Duration::from_millis(300)));
    // Long enough for several cool-downs, so failed probes are exercised too.
    for i in 0..30 {
        let decision = rig.allow("k").await;
        assert_eq!(decision.source(), Source::Fallback(FallbackMode::Local));
        if i + 1 >= THRESHOLD {
            let stats = rig.limiter.stats();
            assert!(
                is_open(stats.breaker),
                "after {} timeouts: {stats:?}",
                i + 1
            );
        }
        tokio::time::sleep(POLL).await;
    }
    let stats = rig.limiter.stats();
    assert!(
        stats.breaker_transitions.opened >= 2,
        "probes failed: {stats:?}"
    );
    assert!(stats.breaker_transitions.rejected >= 10, "{stats:?}");
    assert_eq!(stats.breaker_transitions.closed, 0, "{stats:?}");

    // Late replies to timed-out calls must not be taken for answers to new ones.
    rig.proxy.set(Fault::Pass);
    rig.until_redis("k").await;
    let decision = rig.allow("fresh").await;
    assert_eq!(decision.source(), Source::Redis);
    assert_eq!(decision.remaining(), LARGE_LIMIT - 1);
}

/// A burst behind a slow Redis: the calls queued behind a pipeline that timed out fail with it,
/// at once, instead of going out as the next pipeline and waiting a second timeout. Every
/// decision comes from the fallback within the deadline, and no pipeline was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_behind_a_slow_redis_waits_for_one_timeout_at_most() {
    let rig = Rig::start(FallbackMode::Local, LARGE_LIMIT, LONG_WINDOW).await;
    rig.proxy.set(Fault::Delay(Duration::from_millis(300)));
    let pipelines_before = rig.limiter.stats().pipelines;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let limiter = rig.limiter.clone();
            tokio::spawn(async move {
                timed("allow(burst)", limiter.allow(&format!("k{}", i % 5))).await
            })
        })
        .collect();
    for task in tasks {
        let decision = task.await.expect("the caller's task");
        assert_eq!(decision.source(), Source::Fallback(FallbackMode::Local));
    }
    let stats = rig.limiter.stats();
    assert_eq!(
        stats.pipelines, pipelines_before,
        "calls queued behind a timed-out pipeline were sent after it: {stats:?}"
    );
    rig.proxy.set(Fault::Pass);
    rig.until_redis("k").await;
}

/// Cuts the network between limiter and Redis (every byte dropped, connections left open) and
/// checks that the local fallback answers within the timeout, until a probe has failed too, so
/// that every pooled connection has lost bytes. The fallback carries on from the `admitted`
/// permits Redis granted this instance before.
async fn partition(rig: &Rig, admitted: u64) {
    rig.proxy.set(Fault::Blackhole);
    let deadline = Instant::now() + RECOVERY;
    let mut calls = 0;
    while rig.limiter.stats().breaker_transitions.opened < 2 {
        assert!(Instant::now() < deadline, "{:?}", rig.limiter.stats());
        let decision = rig.allow("k").await;
        calls += 1;
        assert_eq!(decision.source(), Source::Fallback(FallbackMode::Local));
        assert!(decision.allowed());
        assert_eq!(decision.remaining(), LARGE_LIMIT - admitted - calls);
        if calls >= u64::from(THRESHOLD) {
            assert!(is_open(rig.limiter.stats().breaker));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A partition: the local fallback answers, each call within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_falls_back_locally_within_the_timeout() {
    let rig = Rig::start(FallbackMode::Local, LARGE_LIMIT, LONG_WINDOW).await;
    assert_eq!(rig.allow("k").await.source(), Source::Redis);
    partition(&rig, 1).await;
    let stats = rig.limiter.stats();
    assert!(stats.breaker_transitions.rejected > 0, "{stats:?}");
    assert_eq!(stats.breaker_transitions.closed, 0, "{stats:?}");
}

/// Opening a connection is bounded by the timeout, as a call is. Behind a partition every
/// pooled connection times out and is replaced; the new one's handshake (`AUTH`) gets no answer,
/// and the decision still comes from the fallback within the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opening_a_connection_behind_a_partition_is_bounded_by_the_timeout() {
    const PASSWORD: &str = "chaos-pass";
    let server = RedisServer::start_with_args(&["--requirepass", PASSWORD]);
    // A breaker that never opens: every call goes to Redis, so every connection is reopened.
    let config = Config::new(LARGE_LIMIT, LONG_WINDOW)
        .with_fallback(FallbackConfig::new(FallbackMode::Local, u32::MAX));
    let rig = Rig::start_on(server, Some(PASSWORD), config).await;
    rig.proxy.set(Fault::Blackhole);
    let accepted = rig.proxy.connections();
    // The first call on each pooled connection times out and drops it; the next opens another.
    for _ in 0..3 * POOL {
        let decision = rig.allow("k").await;
        assert_eq!(decision.source(), Source::Fallback(FallbackMode::Local));
    }
    assert!(
        rig.proxy.connections() >= accepted + POOL,
        "{} connections opened behind the partition, {POOL} pooled",
        rig.proxy.connections() - accepted
    );
    rig.proxy.set(Fault::Pass);
    rig.until_redis("k").await;
}

/// Once a partition heals, Redis decides again (over new connections: the old ones lost bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healed_partition_brings_redis_back() {
    let rig = Rig::start(FallbackMode::Local, LARGE_LIMIT, LONG_WINDOW).await;
    partition(&rig, 0).await;
    rig.proxy.set(Fault::Pass);
    rig.until_redis("k").await;
    assert_eq!(rig.allow("k").await.source(), Source::Redis);
}

/// A restart loses every counter: limits start afresh, from Redis, with nothing stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_empty_redis_starts_limits_afresh() {
    const LIMIT: u64 = 3;
    let rig = Rig::start(FallbackMode::Local, LIMIT, LONG_WINDOW).await;
    for _ in 0..LIMIT {
        let decision = rig.allow("k").await;
        assert_eq!(decision.source(), Source::Redis);
        assert!(decision.allowed());
    }
    let spent = rig.allow("k").await;
    assert_eq!(spent.source(), Source::Redis);
    assert!(!spent.allowed());

    rig.restart();
    // Peeks take nothing, so whatever the fallback answered meanwhile, Redis starts from zero.
    let fresh = rig.until_redis("k").await;
    assert!(fresh.allowed());
    assert_eq!(fresh.remaining(), LIMIT);
    let decision = rig.allow("k").await;
    assert_eq!(decision.source(), Source::Redis);
    assert!(decision.allowed(), "the limit survived an empty restart");
    assert_eq!(decision.remaining(), LIMIT - 1);
    let peek = timed("peek(k)", rig.limiter.peek("k")).await;
    assert_eq!(peek.source(), Source::Redis);
    assert_eq!(peek.remaining(), LIMIT - 1);
}

/// Redis killed and restarted every second while a caller keeps asking: every call answers in
/// time, the breaker opens and closes with Redis, and Redis decides at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flapping_redis_never_fails_a_call() {
    let rig = Rig::start(FallbackMode::Local, LARGE_LIMIT, LONG_WINDOW).await;
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let limiter = rig.limiter.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sources = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let decision = timed("allow(flap)", limiter.allow("flap")).await;
                sources.push(decision.source());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sources
        })
    };
    for _ in 0..FLAPS {
        rig.kill();
        tokio::time::sleep(FLAP_PERIOD).await;
        rig.restart();
        tokio::time::sleep(FLAP_PERIOD).await;
    }
    stop.store(true, Ordering::Relaxed);
    let sources = caller.await.expect("the caller panicked");

    let from_redis = sources.iter().filter(|s| **s == Source::Redis).count();
    let from_fallback = sources
        .iter()
        .filter(|s| matches!(s, Source::Fallback(_)))
        .count();
    assert!(
        from_redis > 0 && from_fallback > 0,
        "{from_redis} from Redis, {from_fallback} from the fallback"
    );
    assert_eq!(from_redis + from_fallback, sources.len());
    let stats = rig.limiter.stats();
    assert!(stats.breaker_transitions.opened >= 2, "{stats:?}");
    assert!(stats.breaker_transitions.closed >= 2, "{stats:?}");
    rig.until_redis("flap").await;
}

/// 1000 concurrent callers, spread over 50 ms, while Redis is killed 20 ms in: every call
/// answers `Ok` in time, some from Redis, the rest from the fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_callers_survive_redis_dying_under_them() {
    let rig = Rig::start(FallbackMode::Local, LARGE_LIMIT, LONG_WINDOW).await;
    assert_eq!(rig.allow("k0").await.source(), Source::Redis);
    let killer = {
        let server = rig.server.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tokio::task::block_in_place(|| server.kill());
        })
    };
    let callers: Vec<_> = (0..1000u64)
        .map(|i| {
            let limiter = rig.limiter.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i % 50)).await;
                let key = format!("k{}", i % 10);
                timed(&format!("allow({key}) #{i}"), limiter.allow(&key))
                    .await
                    .source()
            })
        })
        .collect();
    let mut sources = Vec::new();
    for caller in callers {
        sources.push(caller.await.expect("a caller panicked"));
    }
    killer.await.expect("the killer panicked");
    let from_redis = sources.iter().filter(|s| **s == Source::Redis).count();
    let from_fallback = sources
        .iter()
        .filter(|s| **s == Source::Fallback(FallbackMode::Local))
        .count();
    assert_eq!(from_redis + from_fallback, 1000);
    assert!(
        from_redis > 0 && from_fallback > 0,
        "Redis was not killed mid-way: {from_redis} from Redis, {from_fallback} from the fallback"
    );
}

/// Every connection reset (and new ones refused with RST): calls fall back; once connections
/// are accepted again, the limiter reconnects and Redis decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reset_connections_fall_back_then_reconnect() {
    let rig = Rig::start(FallbackMode::Local, LARGE_LIMIT, LONG_WINDOW).await;
    assert_eq!(rig.allow("k").await.source(), Source::Redis);
    let before = rig.proxy.connections();

    rig.proxy.set(Fault::Reset);
    for _ in 0..10 {
        let decision = rig.allow("k").await;
        assert_eq!(decision.source(), Source::Fallback(FallbackMode::Local));
        tokio::time::sleep(POLL).await;
    }
    assert!(is_open(rig.limiter.stats().breaker));

    rig.proxy.set(Fault::Pass);
    rig.until_redis("k").await;
    assert_eq!(rig.allow("k").await.source(), Source::Redis);
    assert!(
        rig.proxy.connections() > before,
        "the limiter did not open new connections"
    );
}

/// `calls` of `cmdstat_evalsha` in `INFO commandstats`, asked of the server directly.
fn evalsha_calls(server: &RedisServer) -> u64 {
    tokio::task::block_in_place(|| ratelimit_tests::evalsha_calls(&server.url()))
}

/// A spent key hammered 1000 more times: the cache answers the denials, Redis hardly sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_denial_cache_shields_redis_from_a_spent_key() {
    const LIMIT: u64 = 5;
    let config = Config::new(LIMIT, LONG_WINDOW)
        .with_cache(CacheConfig::new(Duration::from_millis(200), 10_000_000));
    let rig = Rig::start_with(FallbackMode::Local, config).await;
    for _ in 0..LIMIT {
        let decision = rig.allow("hot").await;
        assert_eq!(decision.source(), Source::Redis);
        assert!(decision.allowed());
    }
    let before = evalsha_calls(&rig.server);
    for _ in 0..1000 {
        let decision = rig.allow("hot").await;
        assert!(!decision.allowed());
    }
    let after = evalsha_calls(&rig.server);
    let stats = rig.limiter.stats();
    assert!(stats.cache.denial_hits >= 990, "{stats:?}");
    assert!(
        after - before < 20,
        "Redis ran {} scripts for 1000 denials of a spent key",
        after - before
    );
}

/// A caller that gives up on the breaker's probe (a client disconnecting, a tower timeout: the
/// `allow` future is dropped) must not leave the breaker half-open for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_probe_does_not_wedge_the_breaker() {
    let rig = Rig::start(FallbackMode::Local, LARGE_LIMIT, LONG_WINDOW).await;
    rig.proxy.set(Fault::Delay(Duration::from_millis(300)));
    for _ in 0..THRESHOLD {
        rig.allow("k").await;
    }
    tokio::time::sleep(COOL_DOWN + POLL).await;
    // This call is the probe; it waits on the slow Redis and its caller gives up.
    let gave_up = tokio::time::timeout(Duration::from_millis(10), rig.limiter.allow("k")).await;
    assert!(
        gave_up.is_err(),
        "the probe answered before its caller gave up"
    );
    rig.proxy.set(Fault::Pass);
    rig.until_redis("k").await;
}

/// Right after Redis comes back, decisions come from Redis: the one retry of a call whose
/// connection broke must not land on another pooled connection that is just as broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_calls_after_a_restart_are_decided_by_redis() {
    let rig = Rig::start(FallbackMode::Local, LARGE_LIMIT, LONG_WINDOW).await;
    rig.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    rig.restart();
    let sources: Vec<Source> = {
        let mut sources = Vec::new();
        for _ in 0..2 * POOL {
            sources.push(rig.allow("k").await.source());
        }
        sources
    };
    assert!(sources.iter().all(|s| *s == Source::Redis), "{sources:?}");
}
