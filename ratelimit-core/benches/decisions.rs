//! Nanoseconds per decision on the paths that make no round trip: a denial answered by the
//! local cache of a Redis-backed limiter, the in-memory backend, and the `governor` crate's
//! keyed limiter doing the same work (one key, always allowed) as the peer to beat.
//!
//! ```text
//! cargo bench -p ratelimit-core --bench decisions
//! ```
//!
//! The cache-hit bench needs `redis-server` on `PATH`: `main` starts a throwaway one on a free
//! loopback port (no persistence) and kills it at the end. Async decisions are timed in
//! batches inside one `block_on` of a current-thread runtime (`iter_custom`), so the figure is
//! the decision's, not the runtime's: a cached or in-memory decision completes on first poll.
//!
//! Before each bench, the heap allocations one decision makes (on the same limiter, after a
//! warm-up) are counted by a global allocator and printed (`allocations per decision, ...`).

// A global allocator is an `unsafe impl GlobalAlloc`; the workspace denies unsafe code. The impl
// only forwards to `System` and counts. It, and the throwaway `redis-server` below, are copies of
// the test harness's (`ratelimit_tests::CountingAllocator`, `ratelimit_tests::RedisServer`): the
// harness crate depends on this one, so this bench cannot depend on it without a cycle.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::net::TcpListener;
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::Criterion;
use ratelimit_core::{Algorithm, CacheConfig, Config, RateLimiter, RedisConfig, Source};
use tokio::runtime::Runtime;

/// Forwards to the system allocator, counting allocations made on threads that asked for it.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

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

/// Runs `decide` `n` times on `runtime` to warm up, then prints the heap allocations per call
/// made on this thread over `n` more (in one `block_on`, so only the decisions count).
fn print_allocations<F: Future<Output = ()>>(
    runtime: &Runtime,
    n: u64,
    name: &str,
    mut decide: impl FnMut() -> F,
) {
    let total = runtime.block_on(async {
        for _ in 0..n {
            decide().await;
        }
        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.with(|c| c.set(true));
        for _ in 0..n {
            decide().await;
        }
        COUNTING.with(|c| c.set(false));
        ALLOCATIONS.load(Ordering::Relaxed)
    });
    let per_decision = total as f64 / n as f64;
    println!("allocations per decision, {name}: {per_decision:.2} ({total} in {n})");
}

/// A `redis-server` child process, killed when dropped (also when a bench panics).
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test.sh installs it)");
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
fn cache_hit(c: &mut Criterion, server: &Server, counted: u64) {
    let runtime = current_thread();
    let limiter = runtime.block_on(async {
        let config = Config::new(1, Duration::from_secs(60))
            .with_redis_config(
                RedisConfig::new([server.url()]).with_timeout(Duration::from_secs(2)),
            )
            .with_cache(CacheConfig::new(Duration::from_millis(200), 1 << 20));
        // The server may still be starting.
        let mut attempts = 0;
        let limiter = loop {
            match RateLimiter::new(config.clone()).await {
                Ok(limiter) => break limiter,
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("redis-server did not come up: {e}"),
            }
        };
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
    assert_eq!(
        limiter.stats().cache.denial_hits - before,
        timed,
        "every timed decision was answered by the cache"
    );
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
    let server = Server::start();
    cache_hit(&mut criterion, &server, counted);
    drop(server);
    memory(&mut criterion, counted);
    governor(&mut criterion, counted);
    criterion.final_summary();
}
