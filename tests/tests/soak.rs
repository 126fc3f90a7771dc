//! Memory bounded by configuration under many distinct keys, at CI size: counts the bounded
//! structures themselves (tracked keys, cache bytes, hot keys), never time or resident memory.
//! `load/src/bin/soak.rs` (`scripts/soak.sh`) measures the resident memory at full size.
//!
//! A `RateLimiter` does not say how many keys its in-memory backend tracks, so the in-memory
//! bound is checked twice: on `MemoryBackend` itself (public, with `len()`), and on a limiter
//! through its decisions (a spent key it remembers is denied by `peek`, one it forgot is
//! allowed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ratelimit_core::MemoryConfig;
use ratelimit_core::test_util::MemoryBackend;
use ratelimit_core::{
    CacheConfig, Config, FakeClock, HotKeyConfig, Identity, Policy, RateLimiter, RedisConfig,
    Source, Window,
};
use ratelimit_tests::RedisServer;

/// The in-memory bound of these tests.
const MAX_KEYS: usize = 10_000;
/// Distinct keys pushed through it: thirty times the bound.
const KEYS: u64 = 300_000;
/// The in-memory backend keeps 64 shards of `ceil(max_keys / 64)` keys each: `max_keys`
/// rounded up to a multiple of 64 is what it may track.
const TRACKED_BOUND: usize = MAX_KEYS.div_ceil(64) * 64;
/// A full shard forgets an eighth of itself; after many evictions every shard holds more than
/// seven eighths of its share, less one (the key that made room).
const TRACKED_FLOOR: usize = MAX_KEYS * 7 / 8 - 64;

/// The cache bound of these tests: room for about 2,200 cached denials (a key and 96 bytes
/// each), or half as many denials and as many leases.
const MAX_SIZE: u64 = 256 * 1024;
/// Distinct keys driven to denial through a Redis-backed limiter with that cache, in exact mode
/// and in lease mode: more than ten times what it holds (each key costs two script calls; more
/// would not keep the test short).
const DENIED_KEYS: u64 = 30_000;
const LEASED_KEYS: u64 = 15_000;

fn key(i: u64) -> String {
    format!("soak:{i}")
}

/// 300,000 distinct keys through a backend bounded at 10,000: it never tracks more than its
/// bound, it fills up to it (so the bound is what stops it), and expired state is reclaimed.
#[test]
fn the_memory_backend_never_tracks_more_than_max_keys() {
    let clock = FakeClock::new(1_000_000_000);
    let backend = MemoryBackend::new(Arc::new(clock.clone()), MAX_KEYS);
    let policy = Policy::new("soak", [Window::per_minute(1)]);
    let mut most = 0;
    for i in 0..KEYS {
        let verdict = backend.evaluate(&policy, Identity::new(key(i).as_bytes()), 1, true);
        assert!(verdict.allowed, "key {i} is new: allowed");
        let tracked = backend.len();
        assert!(
            tracked <= TRACKED_BOUND,
            "after {} keys the backend tracks {tracked}, above its bound of {TRACKED_BOUND} \
             (max_keys {MAX_KEYS})",
            i + 1
        );
        most = most.max(tracked);
    }
    let tracked = backend.len();
    assert!(
        tracked >= TRACKED_FLOOR,
        "full after {KEYS} keys: tracks {tracked}, expected at least {TRACKED_FLOOR} (most {most})"
    );
    // Nothing expired yet (the clock stood still): eviction alone kept it bounded. Once the
    // window has passed, a sweep reclaims everything.
    clock.advance(Duration::from_secs(61));
    backend.sweep();
    assert_eq!(backend.len(), 0, "every key expired and was swept");
}

/// The same through a `RateLimiter`, seen only through its decisions: after 300,000 distinct
/// keys each spent its one permit, at most the bound of them are still remembered (denied by
/// `peek`), most of the earliest keys are forgotten, and the hot-key detector tracks no more
/// than its capacity.
#[tokio::test]
async fn a_memory_limiter_remembers_at_most_max_keys() {
    let clock = FakeClock::new(1_000_000_000);
    let limiter = RateLimiter::new(
        Config::new(1, Duration::from_secs(60))
            .with_memory(MemoryConfig::new(MAX_KEYS))
            .with_clock(clock.clone()),
    )
    .await
    .expect("an in-memory limiter");
    for i in 0..KEYS {
        let decision = limiter.allow(key(i)).await.expect("memory answers");
        assert!(decision.allowed(), "key {i} is new: allowed");
    }
    // A remembered key has spent its permit (nothing expired: the clock stood still), so `peek`
    // denies it; a forgotten one is allowed. `peek` of a forgotten key stores nothing.
    let mut remembered = 0;
    let mut early_remembered = 0;
    for i in 0..KEYS {
        if !limiter
            .peek(key(i))
            .await
            .expect("memory answers")
            .allowed()
        {
            remembered += 1;
            if i < 10_000 {
                early_remembered += 1;
            }
        }
    }
    assert!(
        remembered <= TRACKED_BOUND,
        "{remembered} of {KEYS} spent keys still denied: more than the bound of {TRACKED_BOUND}"
    );
    assert!(
        remembered >= TRACKED_FLOOR,
        "{remembered} spent keys still denied: the limiter forgot more than eviction accounts for"
    );
    // The limiter says as much itself.
    assert_eq!(limiter.stats().memory_keys, remembered);
    // Eviction drops the eighth of a full shard that expires soonest; with the clock standing
    // still every key expires at once, so ties fall in table order and some early keys
    // outlive newer ones. Most must be gone.
    assert!(
        early_remembered < 5_000,
        "{early_remembered} of the first 10,000 keys are still remembered: eviction spares them"
    );
    assert!(
        !limiter
            .peek(key(KEYS - 1))
            .await
            .expect("memory answers")
            .allowed(),
        "the last key (which made room for itself) is tracked"
    );
    let hot = limiter.hot_keys();
    assert!(
        hot.len() <= HotKeyConfig::default().capacity(),
        "the hot-key detector reports {} keys, above its capacity",
        hot.len()
    );
}

/// What the callers of [`the_cache_stays_within_max_size`] share: the next key to visit, the
/// most the cache weighed, and the denials the cache answered.
#[derive(Default)]
struct Progress {
    next: AtomicU64,
    most: AtomicU64,
    cached_denials: AtomicU64,
}

/// `keys` distinct keys driven to denial by 64 concurrent tasks: `cache_bytes` never exceeds
/// `max_size`, reaches most of it (the bound is what stops it), and the denials (and, with
/// leases, the leases) are really cached.
///
/// Exact mode: one a minute, two requests (allowed by Redis, then denied by Redis and cached).
/// Lease mode: two a minute, three requests (a lease of two from Redis, the second request
/// answered from it, the third denied by Redis and cached); the second may be denied when the
/// cache evicted the lease before it was used.
async fn the_cache_stays_within_max_size(leases: bool, keys: u64) {
    let server = RedisServer::start();
    let mut cache = CacheConfig::new(Duration::from_millis(200), MAX_SIZE);
    if leases {
        cache = cache.with_leases(10);
    }
    let (limit, requests) = if leases { (2, 3) } else { (1, 2) };
    let limiter = RateLimiter::new(
        Config::new(limit, Duration::from_secs(60))
            .with_redis_config(
                RedisConfig::new([server.url()]).with_timeout(Duration::from_secs(5)),
            )
            .with_cache(cache),
    )
    .await
    .expect("Redis answers");
    let progress = Arc::new(Progress::default());
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (limiter, progress) = (limiter.clone(), progress.clone());
            tokio::spawn(async move {
                let Progress {
                    next,
                    most,
                    cached_denials,
                } = &*progress;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        return;
                    }
                    let key = key(i);
                    for r in 0..requests {
                        let decision = limiter.allow(&key).await.expect("Redis answers");
                        if r == 0 || r + 1 == requests {
                            assert_eq!(
                                decision.allowed(),
                                r == 0,
                                "request {r} on key {i}: {decision:?}"
                            );
                        }
                        let bytes = limiter.stats().cache_bytes;
                        assert!(
                            bytes <= MAX_SIZE,
                            "after key {i}: the cache weighs {bytes} bytes, above max_size {MAX_SIZE}"
                        );
                        most.fetch_max(bytes, Ordering::Relaxed);
                    }
                    // Once more: the denial is answered from the cache.
                    let again = limiter.allow(&key).await.expect("Redis answers");
                    assert!(!again.allowed(), "key {i} stays denied");
                    if again.source() == Source::Cache {
                        cached_denials.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a task panicked: see above");
    }
    let stats = limiter.stats();
    assert_eq!(stats.fallback_decisions, 0, "Redis answered every call");
    assert!(
        stats.cache_bytes <= MAX_SIZE,
        "{} bytes at the end",
        stats.cache_bytes
    );
    let most = progress.most.load(Ordering::Relaxed);
    assert!(
        most >= MAX_SIZE * 3 / 4,
        "the cache filled up to {most} bytes only, of {MAX_SIZE}: the bound was never reached"
    );
    let cached_denials = progress.cached_denials.load(Ordering::Relaxed);
    assert!(
        cached_denials >= keys * 9 / 10,
        "only {cached_denials} of {keys} denials were answered from the cache"
    );
    if leases {
        assert!(
            stats.cache.lease_hits >= keys * 9 / 10,
            "leases answered {} requests, of {keys} keys",
            stats.cache.lease_hits
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exact_cache_stays_within_max_size_under_30k_denied_keys() {
    the_cache_stays_within_max_size(false, DENIED_KEYS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_cache_stays_within_max_size_under_15k_leased_and_denied_keys() {
    the_cache_stays_within_max_size(true, LEASED_KEYS).await;
}
