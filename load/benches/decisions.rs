//! Nanoseconds per decision on the paths that make no round trip: a denial answered by the
//! local cache of a Redis-backed limiter, the in-memory backend, and the `governor` crate's
//! keyed limiter doing the same work (one key, always allowed) as the peer to beat. Each of
//! ours is timed twice: `allow(..).await`, and `allow_now` (no future, as `governor` has none).
//!
//! ```text
//! cargo bench -p ratelimit-load --bench decisions
//! ```
//!
//! The cache-hit bench needs `redis-server` on `PATH`: `main` starts a throwaway one (the test
//! harness's [`RedisServer`]: a free loopback port, no persistence) and kills it at the end. Async
//! decisions are timed in batches inside one `block_on` of a current-thread runtime
//! (`iter_custom`), so the figure is the decision's, not the runtime's: a cached or in-memory
//! decision completes on first poll.
//!
//! Before each bench, the heap allocations one decision makes (on the same limiter, after a
//! warm-up) are counted by the harness's [`CountingAllocator`] and printed
//! (`allocations per decision, ...`).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::Criterion;
use ratelimit_core::{Algorithm, CacheConfig, Config, RateLimiter, RedisConfig, Source};
use ratelimit_tests::{CountingAllocator, RedisServer, allocations_during};
use tokio::runtime::Runtime;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Runs `decide` `n` times on `runtime` to warm up, then prints the heap allocations per call
/// made on this thread over `n` more (in one `block_on`, so only the decisions count).
fn print_allocations<F: Future<Output = ()>>(
    runtime: &Runtime,
    n: u64,
    name: &str,
    mut decide: impl FnMut() -> F,
) {
    runtime.block_on(async {
        for _ in 0..n {
            decide().await;
        }
    });
    let total = allocations_during(runtime, || async move {
        for _ in 0..n {
            decide().await;
        }
    });
    let per_decision = total as f64 / n as f64;
    println!("allocations per decision, {name}: {per_decision:.2} ({total} in {n})");
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// Times `iters` decisions of `limiter` for `key` in one `block_on`.
fn time_allows(runtime: &Runtime, limiter: &RateLimiter, key: &str, iters: u64) -> Duration {
    runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            let decision = limiter.allow(black_box(key)).await;
            black_box(decision.expect("a local decision never fails"));
        }
        started.elapsed()
    })
}

/// `allow` on a key Redis denied: the exact cache answers until `retry_after` (a minute here).
fn cache_hit(c: &mut Criterion, server: &RedisServer, counted: u64) {
    let runtime = current_thread();
    let limiter = runtime.block_on(async {
        let config = Config::new(1, Duration::from_secs(60))
            .with_redis_config(
                RedisConfig::new([server.url()]).with_timeout(Duration::from_secs(2)),
            )
            .with_cache(CacheConfig::new(Duration::from_millis(200), 1 << 20));
        // `RedisServer::start` returned once the server answered `PING`.
        let limiter = RateLimiter::new(config)
            .await
            .unwrap_or_else(|e| panic!("the throwaway redis-server answers: {e}"));
        for _ in 0..2 {
            limiter.allow("abuser").await.expect("Redis answers");
        }
        limiter
    });
    let hit = runtime
        .block_on(limiter.allow("abuser"))
        .expect("a cached denial");
    assert!(!hit.allowed() && hit.source() == Source::Cache);
    let name = "allow, cache hit (denied key, Redis-backed)";
    print_allocations(&runtime, counted, name, || async {
        black_box(limiter.allow("abuser").await.expect("a cached denial"));
    });
    let before = limiter.stats().cache.denial_hits;
    let mut timed = 0;
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            timed += iters;
            time_allows(&runtime, &limiter, "abuser", iters)
        });
    });
    c.bench_function("allow_now, cache hit (denied key, Redis-backed)", |b| {
        b.iter(|| {
            timed += 1;
            black_box(now(&limiter, "abuser"))
        });
    });
    assert_eq!(
        limiter.stats().cache.denial_hits - before,
        timed,
        "every timed decision was answered by the cache"
    );
}

/// `allow_now` for `key`, which a local path always answers.
fn now(limiter: &RateLimiter, key: &str) -> ratelimit_core::Decision {
    limiter
        .allow_now(black_box(key))
        .expect("answered now")
        .expect("a local decision never fails")
}

/// `allow` on the in-memory backend for a key it tracks, with limits no bench reaches.
fn memory(c: &mut Criterion, counted: u64) {
    let runtime = current_thread();
    // A sliding log keeps one entry a permit: a short window keeps the log (about one window's
    // worth of decisions, some tens of thousands here) within the limit, so every call is allowed.
    let sliding = RateLimiter::new_lazy(Config::new(1_000_000, Duration::from_millis(10)))
        .expect("a valid policy");
    let bucket = RateLimiter::new_lazy(
        Config::new(1_000_000_000, Duration::from_secs(1)).with_algorithm(Algorithm::TokenBucket),
    )
    .expect("a valid policy");
    for (name, limiter) in [
        ("allow, memory, sliding_window (1M/10ms)", &sliding),
        ("allow, memory, token_bucket (1G/s)", &bucket),
    ] {
        let allowed_first = runtime
            .block_on(limiter.allow("tenant:7"))
            .expect("memory answers");
        assert!(allowed_first.allowed());
        print_allocations(&runtime, counted, name, || async {
            black_box(limiter.allow("tenant:7").await.expect("memory answers"));
        });
        c.bench_function(name, |b| {
            b.iter_custom(|iters| time_allows(&runtime, limiter, "tenant:7", iters));
        });
        c.bench_function(&name.replacen("allow", "allow_now", 1), |b| {
            b.iter(|| now(limiter, "tenant:7"));
        });
        let after = runtime
            .block_on(limiter.allow("tenant:7"))
            .expect("memory answers");
        assert!(after.allowed(), "{name}: still allowed after the bench");
    }
}

/// The peer: `governor`'s keyed GCRA limiter (DashMap store, quanta clock), one key, allowed.
fn governor(c: &mut Criterion, counted: u64) {
    let quota = governor::Quota::per_second(NonZeroU32::MAX);
    let limiter = governor::RateLimiter::keyed(quota);
    let key = String::from("tenant:7");
    assert!(limiter.check_key(&key).is_ok());
    let name = "governor keyed check_key (GCRA)";
    print_allocations(&current_thread(), counted, name, || async {
        black_box(limiter.check_key(black_box(&key))).expect("allowed");
    });
    c.bench_function(name, |b| {
        b.iter(|| black_box(limiter.check_key(black_box(&key))));
    });
}

fn main() {
    // Decisions counted for the allocation figures (and as many to warm up): fewer when
    // criterion only tests that each bench runs (`cargo test --all-targets`).
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let counted = if benchmarking { 100_000 } else { 1_000 };
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let server = RedisServer::start();
    cache_hit(&mut criterion, &server, counted);
    drop(server);
    memory(&mut criterion, counted);
    governor(&mut criterion, counted);
    criterion.final_summary();
}
