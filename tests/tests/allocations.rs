//! Heap allocations per decision, counted by a global allocator: the in-memory backend's
//! `allow` and `peek` on a key it already tracks, and decisions the local cache answers for a
//! Redis-backed limiter (a cached denial, for `allow` and for `peek`).
//!
//! The counter only counts on a thread that turned counting on, so allocations made by other
//! tests running in parallel (or by runtime threads) do not count; measurements are serialized
//! because the count itself is one atomic.

// A global allocator is an `unsafe impl GlobalAlloc`; the workspace denies unsafe code, and this
// file is the one place that needs it. The impl only forwards to `System` and counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ratelimit_core::{CacheConfig, Config, FakeClock, RateLimiter, RedisConfig};
use ratelimit_tests::RedisServer;

/// Forwards to the system allocator, counting allocations made on threads that asked for it.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

/// Serializes measurements: they share [`ALLOCATIONS`].
static MEASURING: Mutex<()> = Mutex::new(());

fn count() {
    // `try_with`: the flag may already be gone while a thread shuts down.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees hold; counting touches only an atomic and a const-initialized thread-local `Cell`,
// neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`, with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Decisions measured, after warming up.
const DECISIONS: u64 = 1000;

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// Runs `decisions` on `runtime`, counting the allocations made on this thread while it runs
/// (and only then: building the future does not count).
fn allocations_during<F: Future<Output = ()>>(
    runtime: &tokio::runtime::Runtime,
    decisions: impl FnOnce() -> F,
) -> u64 {
    let _serial = MEASURING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let measured = decisions();
    runtime.block_on(async {
        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.with(|c| c.set(true));
        measured.await;
        COUNTING.with(|c| c.set(false));
    });
    ALLOCATIONS.load(Ordering::Relaxed)
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
