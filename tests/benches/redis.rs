//! The Redis paths against `redis-benchmark` running the same script, in the same run.
//!
//! ```text
//! cargo bench -p ratelimit-tests --bench redis
//! ```
//!
//! One throwaway `redis-server` (the test harness's [`RedisServer`]) serves every bench. Each
//! criterion group measures one path twice, as time per operation:
//!
//! - `limiter`: `RateLimiter::allow` on Redis (no cache), one caller in sequence or 50 tokio
//!   tasks sharing the limiter and doing `iters` calls in all;
//! - `redis-benchmark`: `redis-benchmark -c <1|50> -n <iters>` (no `-P`) sending `EVALSHA` of the
//!   same script (its sha from `SCRIPT LOAD`) with the same key and the same arguments.
//!
//! The peer's command line is not rebuilt from what the limiter is believed to send: it is read
//! back from the server. Two of the limiter's calls are recorded with `SLOWLOG` (threshold 0), the
//! argument that differs between them (the nonce) becomes a `__rand_int__` placeholder, and the
//! rest is sent verbatim. Limits are far above what either side can reach within a window, so
//! every call of both sides takes the allowed path and writes (checked after each group), and a
//! window of one second keeps the sorted sets at about one second's worth of calls on both sides.
//! After each group the bench prints what each side asked of Redis (`INFO commandstats`):
//! `EVALSHA` calls per timed operation and Redis's own time per call, which should match.
//!
//! Before the groups, the bench prints heap allocations per decision, counted by a global
//! allocator on the deciding thread (a current-thread runtime): the Redis paths, the cache path
//! (a cached denial) and the memory path; the Redis paths also on every thread, which would add
//! any thread that works for a call (the redis crate's I/O thread, for connections it drives).
//!
//! Needs `redis-server` and `redis-benchmark` on `PATH` (the `redis-server` and `redis-tools`
//! packages; `scripts/test.sh` installs them). Under `cargo test --all-targets` criterion runs
//! every bench once with one iteration, which takes well under a second here.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use ratelimit_core::test_util::scripts;
use ratelimit_core::{
    Algorithm, CacheConfig, Config, FakeClock, RateLimiter, RedisConfig, Source, Window,
};
use ratelimit_tests::{CountingAllocator, RedisServer};
use tokio::runtime::Runtime;

// ---------------------------------------------------------------------------------------------
// Counting allocator

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Heap allocations made on this thread while `runtime` runs `decisions`, after running
/// `warm_up` first (connections opened, logs at their steady length).
fn allocations_during<W, F>(
    runtime: &Runtime,
    warm_up: impl FnOnce() -> W,
    decisions: impl FnOnce() -> F,
) -> u64
where
    W: Future<Output = ()>,
    F: Future<Output = ()>,
{
    runtime.block_on(warm_up());
    ratelimit_tests::allocations_during(runtime, decisions)
}

// ---------------------------------------------------------------------------------------------
// The paths under test

/// Concurrent callers in the throughput groups (and `redis-benchmark -c`).
const CALLERS: u64 = 50;

/// Every Redis call's bound: generous, so a busy two-core machine never turns a slow call into a
/// fallback decision (the bench asserts every decision came from Redis).
const TIMEOUT: Duration = Duration::from_secs(2);

/// `redis-benchmark -r`: the range of `__rand_int__` (12 digits), wide enough that the peer's
/// sliding-log members, like the limiter's nonces, practically never repeat.
const RANDOM_RANGE: &str = "100000000";

/// One policy measured on Redis.
struct RedisPath {
    /// Group name prefix.
    name: &'static str,
    /// The policy (limits no bench reaches in one window).
    config: Config,
    /// The script the limiter is expected to run, loaded with `SCRIPT LOAD` for the peer.
    script: &'static str,
    /// The identity both sides use.
    identity: &'static str,
    /// Whether to measure 50 concurrent callers too.
    concurrent: bool,
}

fn redis_paths() -> [RedisPath; 3] {
    let second = Duration::from_secs(1);
    [
        RedisPath {
            name: "redis sliding_window",
            config: Config::new(1_000_000, second),
            script: scripts::SLIDING_WINDOW,
            identity: "bench:sw",
            concurrent: true,
        },
        RedisPath {
            name: "redis multi_window",
            config: Config::new(500_000, Duration::from_millis(500))
                .with_window(Window::new(1_000_000, second)),
            script: scripts::MULTI_WINDOW,
            identity: "bench:mw",
            concurrent: true,
        },
        RedisPath {
            name: "redis token_bucket",
            config: Config::new(1_000_000, second).with_algorithm(Algorithm::TokenBucket),
            script: scripts::TOKEN_BUCKET,
            identity: "bench:tb",
            concurrent: false,
        },
    ]
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// A Redis-backed limiter without cache, built (and so connected) on `runtime`: its connections
/// are driven by that runtime.
fn limiter_on(runtime: &Runtime, server: &RedisServer, config: Config) -> RateLimiter {
    runtime.block_on(async {
        RateLimiter::new(
            config.with_redis_config(RedisConfig::new([server.url()]).with_timeout(TIMEOUT)),
        )
        .await
        .expect("a limiter on the bench's redis-server")
    })
}

async fn allow_on_redis(limiter: &RateLimiter, identity: &str) {
    let decision = limiter
        .allow(black_box(identity))
        .await
        .expect("Redis answers");
    assert!(
        decision.allowed() && decision.source() == Source::Redis,
        "every timed call is allowed by Redis: {decision:?}"
    );
    black_box(decision);
}

/// Times `iters` sequential `allow`s in one `block_on`.
fn sequential_allows(
    runtime: &Runtime,
    limiter: &RateLimiter,
    identity: &str,
    iters: u64,
) -> Duration {
    runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..iters {
            allow_on_redis(limiter, identity).await;
        }
        started.elapsed()
    })
}

/// Times `iters` `allow`s spread over [`CALLERS`] tasks sharing `limiter`.
fn concurrent_allows(
    runtime: &Runtime,
    limiter: &RateLimiter,
    identity: &'static str,
    iters: u64,
) -> Duration {
    runtime.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let calls = iters / CALLERS + u64::from(caller < iters % CALLERS);
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    for _ in 0..calls {
                        allow_on_redis(&limiter, identity).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a caller task finishes");
        }
        started.elapsed()
    })
}

// ---------------------------------------------------------------------------------------------
// The peer: redis-benchmark

/// Runs a synchronous command on `server`.
fn query<T: redis::FromRedisValue>(con: &mut redis::Connection, cmd: &mut redis::Cmd) -> T {
    cmd.query(con)
        .unwrap_or_else(|e| panic!("{cmd:?} on the bench's redis-server: {e}"))
}

/// The command line the limiter sends for `identity`, read back from the server's `SLOWLOG`, with
/// the per-call nonce replaced by `redis-benchmark`'s `__rand_int__`. Panics unless it is an
/// `EVALSHA` of `script` (by the sha `SCRIPT LOAD` returns for it) whose calls differ in exactly
/// one argument.
fn peer_command(
    server: &RedisServer,
    runtime: &Runtime,
    limiter: &RateLimiter,
    identity: &str,
    script: &str,
) -> Vec<String> {
    let mut con = server
        .client()
        .get_connection()
        .expect("a connection to the bench's redis-server");
    let sha: String = query(&mut con, redis::cmd("SCRIPT").arg("LOAD").arg(script));
    let (_, threshold): (String, String) = query(
        &mut con,
        redis::cmd("CONFIG")
            .arg("GET")
            .arg("slowlog-log-slower-than"),
    );
    let _: () = query(
        &mut con,
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(0),
    );
    let _: () = query(&mut con, redis::cmd("SLOWLOG").arg("RESET"));
    runtime.block_on(async {
        for _ in 0..2 {
            allow_on_redis(limiter, identity).await;
        }
    });
    let _: () = query(
        &mut con,
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(&threshold),
    );
    let entries: Vec<redis::Value> = query(&mut con, redis::cmd("SLOWLOG").arg("GET").arg(128));
    let calls: Vec<Vec<String>> = entries
        .iter()
        .filter_map(|entry| match entry {
            // id, timestamp, duration, arguments, client address, client name
            redis::Value::Array(fields) => fields.get(3),
            _ => None,
        })
        .map(|args| redis::from_redis_value::<Vec<String>>(args.clone()).expect("arguments"))
        .filter(|args| {
            args.first()
                .is_some_and(|c| c.eq_ignore_ascii_case("EVALSHA"))
        })
        .collect();
    let [second, first] = calls.as_slice() else {
        panic!("expected the limiter's two EVALSHA calls in the slowlog, found {calls:?}");
    };
    assert_eq!(
        first.get(1),
        Some(&sha),
        "the limiter runs the script the peer loads"
    );
    assert_eq!(first.len(), second.len(), "{first:?} / {second:?}");
    let differing: Vec<usize> = (0..first.len())
        .filter(|&i| first[i] != second[i])
        .collect();
    let [nonce] = differing.as_slice() else {
        panic!("expected the calls to differ in the nonce only: {first:?} / {second:?}");
    };
    let common: usize = first[*nonce]
        .chars()
        .zip(second[*nonce].chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    let mut command = first.clone();
    command[*nonce] = format!("{}__rand_int__", &first[*nonce][..common]);
    command
}

/// Time `redis-benchmark` takes for `iters` requests of `command` over `clients` connections.
///
/// The time is `iters / rps`, with `rps` from its CSV report: `redis-benchmark` opens its
/// connections (and reads the server's config) before it starts its clock and stops it at the
/// last reply, so its process start and connection setup are not in the figure, as the limiter's
/// connections are opened before it is timed. Its clock counts whole milliseconds, so criterion's
/// samples are made long (hundreds of milliseconds, flat sampling). A run too short for that
/// clock (it reports `inf`: one request in criterion's test mode, the first warm-up rounds) falls
/// back to the wall time of the whole process.
fn redis_benchmark(server: &RedisServer, clients: u64, iters: u64, command: &[String]) -> Duration {
    let started = Instant::now();
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(["-c", &clients.to_string(), "-n", &iters.to_string()])
        .args(["-r", RANDOM_RANGE, "--csv"])
        .args(command)
        .output()
        .expect("redis-benchmark on PATH (the redis-tools package; scripts/test.sh installs it)");
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "redis-benchmark failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    // "p99_latency_ms","max_latency_ms": rps is the seventh field from the end.
    let rps = stdout
        .lines()
        .last()
        .and_then(|line| line.rsplit(',').nth(6))
        .map(|field| field.trim_matches('"'))
        .unwrap_or_else(|| panic!("a CSV report from redis-benchmark: {stdout}"));
    match rps.parse::<f64>() {
        Ok(rps) if rps.is_finite() && rps > 0.0 => Duration::from_secs_f64(iters as f64 / rps),
        Ok(_) => wall,
        Err(e) => panic!("redis-benchmark's rps {rps:?}: {e}\n{stdout}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Groups

/// Both sides did every call on the allowed path: the key still has most of its quota.
fn assert_still_allowed(runtime: &Runtime, limiter: &RateLimiter, identity: &str) {
    let peek = runtime
        .block_on(limiter.peek(identity))
        .expect("Redis answers a peek");
    let limit = limiter.policy().smallest_limit();
    assert!(
        peek.allowed() && peek.remaining() > limit / 2,
        "the bench stayed far below the limit: {peek:?}"
    );
}

/// `EVALSHA` calls so far and the microseconds Redis spent in them (`INFO commandstats`).
fn evalsha_stats(server: &RedisServer) -> (u64, u64) {
    let mut con = server
        .client()
        .get_connection()
        .expect("a connection to the bench's redis-server");
    let info: String = query(&mut con, redis::cmd("INFO").arg("commandstats"));
    let line = info.lines().find(|l| l.starts_with("cmdstat_evalsha:"));
    let field = |name: &str| {
        line.and_then(|l| {
            l.split([':', ','])
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        })
        .unwrap_or(0)
    };
    (field("calls"), field("usec"))
}

/// What one side of a group asked of Redis over all its timed runs.
#[derive(Default)]
struct ServerWork {
    iters: u64,
    calls: u64,
    usec: u64,
}

impl ServerWork {
    /// Runs `timed` (`iters` operations) and adds the `EVALSHA` work it caused; returns its time.
    fn measure(
        &mut self,
        server: &RedisServer,
        iters: u64,
        timed: impl FnOnce() -> Duration,
    ) -> Duration {
        let (calls, usec) = evalsha_stats(server);
        let elapsed = timed();
        let (calls_after, usec_after) = evalsha_stats(server);
        self.iters += iters;
        self.calls += calls_after - calls;
        self.usec += usec_after - usec;
        elapsed
    }

    fn summary(&self) -> String {
        format!(
            "{:.2} EVALSHA a call, {:.1} µs of Redis time each",
            self.calls as f64 / self.iters.max(1) as f64,
            self.usec as f64 / self.calls.max(1) as f64
        )
    }
}

/// One criterion group: `limiter` (times `iters` decisions) against `redis-benchmark` sending
/// `command` over `clients` connections. Prints, for both, the `EVALSHA` calls a timed operation
/// caused and Redis's own time per call: the two sides must ask the same of Redis.
fn pair(
    c: &mut Criterion,
    server: &RedisServer,
    name: String,
    clients: u64,
    command: &[String],
    mut limiter: impl FnMut(u64) -> Duration,
) {
    let (mut ours, mut theirs) = (ServerWork::default(), ServerWork::default());
    let mut group = c.benchmark_group(&name);
    group
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(1));
    group.bench_function("limiter", |b| {
        b.iter_custom(|iters| ours.measure(server, iters, || limiter(iters)));
    });
    group.bench_function("redis-benchmark", |b| {
        b.iter_custom(|iters| {
            theirs.measure(server, iters, || {
                redis_benchmark(server, clients, iters, command)
            })
        });
    });
    group.finish();
    println!("{name}: Redis work: limiter {}", ours.summary());
    println!("{name}: Redis work: redis-benchmark {}", theirs.summary());
}

fn bench_path(c: &mut Criterion, server: &RedisServer, parallel: &Runtime, path: &RedisPath) {
    let sequential = current_thread();
    let limiter = limiter_on(&sequential, server, path.config.clone());
    let command = peer_command(server, &sequential, &limiter, path.identity, path.script);
    println!(
        "{}: redis-benchmark -r {RANDOM_RANGE} {}",
        path.name,
        command.join(" ")
    );
    pair(
        c,
        server,
        format!("{}, 1 caller", path.name),
        1,
        &command,
        |iters| sequential_allows(&sequential, &limiter, path.identity, iters),
    );
    assert_still_allowed(&sequential, &limiter, path.identity);

    if path.concurrent {
        let limiter = limiter_on(parallel, server, path.config.clone());
        pair(
            c,
            server,
            format!("{}, {CALLERS} callers", path.name),
            CALLERS,
            &command,
            |iters| concurrent_allows(parallel, &limiter, path.identity, iters),
        );
        assert_still_allowed(parallel, &limiter, path.identity);
    }
}

// ---------------------------------------------------------------------------------------------
// Allocations

/// Prints heap allocations per decision of the Redis paths (sequential `allow`, a round trip
/// each), the cache path (a cached denial) and the memory path.
fn print_allocations(server: &RedisServer, decisions: u64) {
    let runtime = current_thread();
    let mut rows: Vec<(String, u64)> = Vec::new();
    for path in redis_paths() {
        let limiter = limiter_on(&runtime, server, path.config);
        let allows = |n: u64| {
            let limiter = &limiter;
            async move {
                for _ in 0..n {
                    allow_on_redis(limiter, "alloc").await;
                }
            }
        };
        // The warm-up opens every pooled connection.
        let total = allocations_during(&runtime, || allows(100), || allows(decisions));
        rows.push((format!("{}, allow (round trip)", path.name), total));
        // The same, counting every other thread too (none works for a plain-TCP connection).
        let everywhere =
            ratelimit_tests::allocations_everywhere_during(&runtime, || allows(decisions));
        rows.push((
            format!("{}, allow (round trip, every thread)", path.name),
            everywhere,
        ));
    }

    let cached = runtime.block_on(async {
        RateLimiter::new(
            Config::new(1, Duration::from_secs(60))
                .with_redis_config(RedisConfig::new([server.url()]).with_timeout(TIMEOUT))
                .with_cache(CacheConfig::new(Duration::from_millis(200), 1 << 20)),
        )
        .await
        .expect("a limiter on the bench's redis-server")
    });
    runtime.block_on(async {
        assert!(cached.allow("abuser").await.expect("allow").allowed());
        assert!(!cached.allow("abuser").await.expect("allow").allowed());
    });
    let cached_denials = |n: u64| {
        let cached = &cached;
        async move {
            for _ in 0..n {
                let decision = cached.allow("abuser").await.expect("a decision");
                assert!(!decision.allowed() && decision.source() == Source::Cache);
            }
        }
    };
    let total = allocations_during(
        &runtime,
        || cached_denials(100),
        || cached_denials(decisions),
    );
    assert_eq!(
        cached.stats().cache.denial_hits,
        100 + decisions,
        "every measured decision was a cache hit"
    );
    rows.push(("cache hit (denied key, Redis-backed), allow".into(), total));

    // A fake clock moving 1 ms a decision keeps the sliding log at its steady length (1000
    // entries for one second), as steady traffic would.
    for (name, algorithm) in [
        ("memory sliding_window, allow", Algorithm::SlidingWindow),
        ("memory token_bucket, allow", Algorithm::TokenBucket),
    ] {
        let clock = FakeClock::new(1_700_000_000_000_000);
        let limiter = RateLimiter::new_lazy(
            Config::new(1_000_000, Duration::from_secs(1))
                .with_algorithm(algorithm)
                .with_clock(clock.clone()),
        )
        .expect("a valid in-memory configuration");
        let memory_allows = |n: u64| {
            let (limiter, clock) = (&limiter, &clock);
            async move {
                for _ in 0..n {
                    clock.advance(Duration::from_millis(1));
                    let decision = limiter.allow("tenant:7").await.expect("memory answers");
                    assert!(decision.allowed());
                }
            }
        };
        let total = allocations_during(
            &runtime,
            || memory_allows(3000),
            || memory_allows(decisions),
        );
        rows.push((name.into(), total));
    }

    for (name, total) in rows {
        let per_decision = total as f64 / decisions as f64;
        println!("allocations per decision, {name}: {per_decision:.2} ({total} in {decisions})");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let server = RedisServer::start();
    print_allocations(&server, if benchmarking { 10_000 } else { 100 });

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(10)
        .configure_from_args();
    // What a server runs on: a worker a core.
    let parallel = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a multi-thread runtime");
    for path in redis_paths() {
        bench_path(&mut criterion, &server, &parallel, &path);
    }
    criterion.final_summary();
}
