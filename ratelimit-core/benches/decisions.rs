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

use std::hint::black_box;
use std::net::TcpListener;
use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use ratelimit_core::{Algorithm, CacheConfig, Config, RateLimiter, RedisConfig, Source};
use tokio::runtime::Runtime;

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
fn cache_hit(c: &mut Criterion, server: &Server) {
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
    let before = limiter.stats().cache.denial_hits;
    let mut timed = 0;
    c.bench_function("allow, cache hit (denied key, Redis-backed)", |b| {
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
fn memory(c: &mut Criterion) {
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
fn governor(c: &mut Criterion) {
    let quota = governor::Quota::per_second(NonZeroU32::MAX);
    let limiter = governor::RateLimiter::keyed(quota);
    let key = String::from("tenant:7");
    assert!(limiter.check_key(&key).is_ok());
    c.bench_function("governor keyed check_key (GCRA)", |b| {
        b.iter(|| black_box(limiter.check_key(black_box(&key))));
    });
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let server = Server::start();
    cache_hit(&mut criterion, &server);
    drop(server);
    memory(&mut criterion);
    governor(&mut criterion);
    criterion.final_summary();
}
