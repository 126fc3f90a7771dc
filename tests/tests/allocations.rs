//! Heap allocations per decision, counted by a global allocator: the in-memory backend's
//! `allow` and `peek` on a key it already tracks, decisions the local cache answers for a
//! Redis-backed limiter (a cached denial, for `allow` and for `peek`), a Redis round trip, and
//! requests through the layer (allowed in memory; denied from the cache, against the same
//! denial in memory).
//!
//! The counter only counts on a thread that turned counting on, so allocations made by other
//! tests running in parallel (or by runtime threads) do not count; measurements are serialized
//! because the count itself is one atomic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ratelimit_core::{
    Algorithm, CacheConfig, Config, FakeClock, Policy, RateLimiter, RedisConfig, Source, Window,
};
use ratelimit_tests::{CountingAllocator, RedisServer, allocations_during};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Decisions measured, after warming up.
const DECISIONS: u64 = 1000;

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::SlidingWindow,
    Algorithm::TokenBucket,
    Algorithm::FixedWindow,
    Algorithm::SlidingCounter,
];

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// An in-memory limiter on a fake clock that moves 1 ms a decision: the log of the key stays
/// at the 1000 entries one second holds, as it would under steady traffic.
fn memory_limiter() -> (RateLimiter, FakeClock) {
    let clock = FakeClock::new(1_700_000_000_000_000);
    let limiter = RateLimiter::new_lazy(
        Config::new(1_000_000, Duration::from_secs(1)).with_clock(clock.clone()),
    )
    .expect("a valid in-memory configuration");
    (limiter, clock)
}

async fn memory_decisions(limiter: &RateLimiter, clock: &FakeClock, n: u64, consume: bool) {
    for _ in 0..n {
        clock.advance(Duration::from_millis(1));
        let decision = if consume {
            limiter.allow("tenant:7").await
        } else {
            limiter.peek("tenant:7").await
        };
        let decision = decision.expect("the in-memory backend always answers");
        assert!(decision.allowed());
    }
}

#[test]
fn memory_allow_on_an_existing_key_does_not_allocate() {
    let (limiter, clock) = memory_limiter();
    let runtime = current_thread();
    let warm = allocations_during(&runtime, || {
        memory_decisions(&limiter, &clock, 3 * DECISIONS, true)
    });
    assert!(
        warm > 0,
        "the counter counts (the first decision inserts the key)"
    );
    let measured = allocations_during(&runtime, || {
        memory_decisions(&limiter, &clock, DECISIONS, true)
    });
    assert_eq!(measured, 0, "allocations over {DECISIONS} in-memory allows");
}

#[test]
fn memory_peek_does_not_allocate() {
    let (limiter, clock) = memory_limiter();
    let runtime = current_thread();
    allocations_during(&runtime, || {
        memory_decisions(&limiter, &clock, 3 * DECISIONS, true)
    });
    let measured = allocations_during(&runtime, || {
        memory_decisions(&limiter, &clock, DECISIONS, false)
    });
    assert_eq!(measured, 0, "allocations over {DECISIONS} in-memory peeks");
}

/// Every algorithm's in-memory `allow` on keys it tracks (a thousand of them, each an entry
/// whose key and state are inline): no allocation.
#[test]
fn memory_allow_of_every_algorithm_does_not_allocate() {
    let runtime = current_thread();
    let keys: Vec<String> = (0..DECISIONS)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    for algorithm in ALGORITHMS {
        let limiter = RateLimiter::new_lazy(
            Config::new(1_000, Duration::from_secs(60)).with_algorithm(algorithm),
        )
        .expect("a valid in-memory configuration");
        let decide = || async {
            for key in &keys {
                let decision = limiter.allow(key).await;
                assert!(decision.expect("the in-memory backend answers").allowed());
            }
        };
        let first = allocations_during(&runtime, decide);
        assert!(first > 0, "{algorithm}: new keys fill the tables");
        let tracked = allocations_during(&runtime, decide);
        assert_eq!(
            tracked, 0,
            "{algorithm}: allocations over {DECISIONS} allows of tracked keys"
        );
    }
}

/// A Redis-backed limiter with the exact cache whose key `abuser` has been denied: from then on
/// the cache answers it, without a round trip, for the next 10 s.
fn denied_on_redis(server: &RedisServer, runtime: &tokio::runtime::Runtime) -> RateLimiter {
    runtime.block_on(async {
        let limiter = RateLimiter::new(
            Config::new(1, Duration::from_secs(10))
                .with_redis_config(
                    RedisConfig::new([server.url()]).with_timeout(Duration::from_secs(2)),
                )
                .with_cache(CacheConfig::new(Duration::from_millis(200), 1 << 20)),
        )
        .await
        .expect("a limiter on the test's Redis");
        assert!(limiter.allow("abuser").await.expect("allow").allowed());
        assert!(!limiter.allow("abuser").await.expect("allow").allowed());
        limiter
    })
}

async fn cached_denials(limiter: &RateLimiter, n: u64, consume: bool) {
    for _ in 0..n {
        let decision = if consume {
            limiter.allow("abuser").await
        } else {
            limiter.peek("abuser").await
        };
        let decision = decision.expect("a cached denial");
        assert!(!decision.allowed());
    }
}

#[test]
fn a_cache_hit_does_not_allocate() {
    let server = RedisServer::start();
    let runtime = current_thread();
    let limiter = denied_on_redis(&server, &runtime);
    let hits_before = limiter.stats().cache.denial_hits;
    allocations_during(&runtime, || cached_denials(&limiter, DECISIONS, true));
    let allow = allocations_during(&runtime, || cached_denials(&limiter, DECISIONS, true));
    let peek = allocations_during(&runtime, || cached_denials(&limiter, DECISIONS, false));
    // The control: a decision that goes to Redis allocates (keys, nonce, arguments, reply), and
    // the counter sees it on this thread.
    let round_trip = allocations_during(&runtime, || async {
        let decision = limiter.peek("someone-else").await.expect("Redis answers");
        assert!(decision.allowed());
    });
    assert!(round_trip > 0, "a Redis round trip allocates");
    assert_eq!(
        limiter.stats().cache.denial_hits - hits_before,
        3 * DECISIONS,
        "every decision was a cache hit"
    );
    assert_eq!(allow, 0, "allocations over {DECISIONS} cached `allow`s");
    assert_eq!(peek, 0, "allocations over {DECISIONS} cached `peek`s");
}

/// A decision that goes to Redis allocates 3 times, on every thread together: the boxed future
/// of the decision, the boxed send of a call that finds its connection idle (two boxes that
/// each fit the allocator's per-thread cache, where one would not: `guard.rs`, `batch.rs`),
/// and the call's keys (the rest of the call is kept as numbers until it is written to the
/// socket, `backend/command.rs`). The script's reply is read into numbers, not an array
/// (`wire.rs`). The connection is driven by the caller (`wire.rs`): no other thread
/// takes part, and the socket's buffers are kept from one call to the next. The bench `tests/benches/redis.rs` counts every thread too.
#[test]
fn a_redis_decision_allocates_a_fixed_few() {
    let server = RedisServer::start();
    let runtime = current_thread();
    for algorithm in ALGORITHMS {
        for windows in [1_u32, 2] {
            let policy = Policy::new(
                "alloc",
                (1..=windows)
                    .map(|i| Window::new(1_000_000, Duration::from_secs(60 * u64::from(i)))),
            )
            .with_algorithm(algorithm);
            let limiter = runtime.block_on(async {
                RateLimiter::new(Config::with_policy(policy).with_redis_config(
                    RedisConfig::new([server.url()]).with_timeout(Duration::from_secs(2)),
                ))
                .await
                .expect("a limiter on the test's Redis")
            });
            let allows = |n: u64| {
                let limiter = &limiter;
                async move {
                    for _ in 0..n {
                        let decision = limiter.allow("client").await.expect("Redis answers");
                        assert!(decision.allowed() && decision.source() == Source::Redis);
                    }
                }
            };
            // Warms up: every pooled connection opened, the key created.
            runtime.block_on(allows(100));
            let total = allocations_during(&runtime, || allows(DECISIONS));
            // 3 a decision, and a few once for the whole run (a timer wheel's slots, say).
            assert!(
                total <= 3 * DECISIONS + 20,
                "{algorithm} with {windows} window(s): {total} allocations over {DECISIONS} \
                 Redis decisions, more than 3 each"
            );
        }
    }
}

/// Requests sent through the layer in one measurement, after warming up.
const REQUESTS: u64 = 1000;

/// Allocations the layer may add for each second of the system clock that begins during a
/// measurement. `X-RateLimit-Reset` in epoch seconds (the default) is a number each thread
/// writes once and shares with its next responses while the number holds (its bytes, then
/// their shared form: 2 allocations). The number moves when the epoch second turns and, for a
/// reset read off the system clock (a cached denial), when the seconds to the reset do: at
/// most twice a second.
const RESET_ALLOCATIONS_A_SECOND: u64 = 4;

/// `f`'s result, and how many seconds of the system clock began while it ran.
fn with_seconds_begun<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let second = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
    };
    let before = second();
    let result = f();
    (result, second().saturating_sub(before))
}

/// `n` requests for one route from one IPv4 client, as a server hands them over.
fn requests_from_one_client(n: u64) -> Vec<axum::http::Request<()>> {
    let peer: std::net::SocketAddr = "192.0.2.7:40000".parse().expect("an address");
    (0..n)
        .map(|_| {
            let mut request = axum::http::Request::new(());
            *request.uri_mut() = axum::http::Uri::from_static("/api/hello");
            request
                .extensions_mut()
                .insert(ratelimit_tower::PeerAddr(peer));
            request
        })
        .collect()
}

/// Sends `requests` through `service` one at a time, each allowed; the clock moves 1 ms a
/// request, so the key's state stays the size steady traffic keeps it.
async fn serve_allowed<S, B>(
    mut service: S,
    clock: FakeClock,
    requests: Vec<axum::http::Request<()>>,
) where
    S: tower::Service<axum::http::Request<()>, Response = axum::http::Response<B>>,
    S::Error: std::fmt::Debug,
{
    use tower::ServiceExt as _;
    for request in requests {
        clock.advance(Duration::from_millis(1));
        let ready = service.ready().await.expect("the service is ready");
        let response = ready.call(request).await.expect("a response");
        assert_eq!(response.status(), axum::http::StatusCode::OK);
    }
}

/// What the handler answers, at once.
type Answer = std::future::Ready<Result<axum::http::Response<()>, std::convert::Infallible>>;

/// The handler: an empty `200`, as bare as a response gets.
fn handler() -> tower::util::ServiceFn<fn(axum::http::Request<()>) -> Answer> {
    tower::service_fn(|_| std::future::ready(Ok(axum::http::Response::new(()))))
}

/// What the layer adds to an allowed request, in-memory backend, keyed by client IP, both
/// header families: allocations counted through `layer` minus those of the bare handler.
/// `Ok` when they are `per_request` a request (and the reset's, for each second begun).
fn allocations_added_by(
    layer: &ratelimit_tower::RateLimitLayer,
    clock: &FakeClock,
    per_request: u64,
) -> Result<(), String> {
    let runtime = current_thread();
    let bare = allocations_during(&runtime, || {
        serve_allowed(handler(), clock.clone(), requests_from_one_client(REQUESTS))
    });
    let limited = || {
        serve_allowed(
            tower::Layer::layer(layer, handler()),
            clock.clone(),
            requests_from_one_client(REQUESTS),
        )
    };
    allocations_during(&runtime, limited);
    // The run before the measured one included: a second that begins after its last response
    // has the measured run's first write `X-RateLimit-Reset` anew.
    let (through_layer, seconds) = with_seconds_begun(|| {
        allocations_during(&runtime, limited);
        allocations_during(&runtime, limited)
    });
    let added = through_layer - bare;
    let allowed =
        per_request * REQUESTS..=per_request * REQUESTS + RESET_ALLOCATIONS_A_SECOND * seconds;
    if allowed.contains(&added) {
        Ok(())
    } else {
        Err(format!(
            "allocations the layer adds: {added} over {REQUESTS} requests ({through_layer} \
             through the layer, {bare} bare), not {per_request} a request (and \
             {RESET_ALLOCATIONS_A_SECOND} for each of the {seconds} seconds that began)"
        ))
    }
}

/// 5 a request by default: the key, the header values' one buffer, the decision in the
/// request's extensions, and the handler's empty header map getting its first entries (2).
/// With the decision in the response's extensions too, 3 more: the map, its table, the value.
#[test]
fn an_allowed_request_through_the_layer_allocates_a_fixed_few() {
    let (limiter, clock) = memory_limiter();
    let layer = ratelimit_tower::RateLimitLayer::from_limiter(limiter);
    if let Err(e) = allocations_added_by(&layer, &clock, 5) {
        panic!("{e}");
    }
    let with_info = layer.with_info_in_response(true);
    if let Err(e) = allocations_added_by(&with_info, &clock, 8) {
        panic!("with the decision in the response: {e}");
    }
}

/// Sends `requests` through `service`, each answered with `status`.
async fn serve_answered<S, B>(mut service: S, requests: Vec<axum::http::Request<()>>, status: u16)
where
    S: tower::Service<axum::http::Request<()>, Response = axum::http::Response<B>>,
    S::Error: std::fmt::Debug,
{
    use tower::ServiceExt as _;
    for request in requests {
        let ready = service.ready().await.expect("the service is ready");
        let response = ready.call(request).await.expect("a response");
        assert_eq!(response.status().as_u16(), status);
    }
}

/// Allocations a request through a layer over `limiter`, once `REQUESTS` have warmed it up,
/// each answered with `status`.
fn through_layer(limiter: RateLimiter, runtime: &tokio::runtime::Runtime, status: u16) -> u64 {
    let layer = ratelimit_tower::RateLimitLayer::from_limiter(limiter);
    let served = || {
        serve_answered(
            tower::Layer::layer(&layer, handler()),
            requests_from_one_client(REQUESTS),
            status,
        )
    };
    allocations_during(runtime, served);
    allocations_during(runtime, served)
}

/// [`through_layer`], and how many seconds of the system clock began while it ran.
fn through_layer_timed(
    limiter: RateLimiter,
    runtime: &tokio::runtime::Runtime,
    status: u16,
) -> (u64, u64) {
    with_seconds_begun(|| through_layer(limiter, runtime, status))
}

/// A client Redis denied is answered by the cache through the layer without a future: its
/// `429` allocates what the in-memory backend's `429` does, and nothing more (a check boxed
/// for the round trip it does not make would be one more a request).
#[test]
fn a_cached_denial_through_the_layer_allocates_what_a_memory_denial_does() {
    let server = RedisServer::start();
    let runtime = current_thread();
    let cached = runtime.block_on(async {
        RateLimiter::new(
            Config::new(1, Duration::from_secs(600))
                .with_redis_config(
                    RedisConfig::new([server.url()]).with_timeout(Duration::from_secs(2)),
                )
                .with_cache(CacheConfig::new(Duration::from_millis(500), 1 << 20)),
        )
        .await
        .expect("a limiter on the test's Redis")
    });
    let memory = RateLimiter::new_lazy(Config::new(1, Duration::from_secs(600)))
        .expect("a valid in-memory configuration");
    // The client's one permit, then a denial from Redis, which the cache keeps.
    for limiter in [&cached, &memory] {
        let decisions: Vec<bool> = runtime.block_on(async {
            let mut allowed = Vec::new();
            for _ in 0..2 {
                let d = limiter.allow("192.0.2.7").await.expect("a decision");
                allowed.push(d.allowed());
            }
            allowed
        });
        assert_eq!(decisions, [true, false]);
    }
    let hits_before = cached.stats().cache.denial_hits;
    let (from_cache, seconds_cached) = through_layer_timed(cached.clone(), &runtime, 429);
    assert_eq!(
        cached.stats().cache.denial_hits - hits_before,
        2 * REQUESTS,
        "every denial came from the cache"
    );
    let (from_memory, seconds_memory) = through_layer_timed(memory, &runtime, 429);
    // Equal, but for `X-RateLimit-Reset` written anew when a second began during either.
    let seconds = seconds_cached + seconds_memory;
    assert!(
        from_cache.abs_diff(from_memory) <= RESET_ALLOCATIONS_A_SECOND * seconds,
        "allocations over {REQUESTS} denied requests: {from_cache} cached on Redis, \
         {from_memory} in memory ({seconds} seconds began)"
    );
}
