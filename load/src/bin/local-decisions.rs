//! A fixed number of local decisions, for counting instructions under `valgrind --tool=callgrind`
//! (repeatable even on a busy machine, where criterion's nanoseconds are not).
//!
//! Paths: `memory-token-bucket` and `memory-sliding-window` (the in-memory backend, one key,
//! always allowed, as in `load/benches/decisions.rs`), `cache-hit` (a Redis-backed limiter whose
//! key Redis denied: the exact cache answers; starts a throwaway `redis-server`), and
//! `governor` (the peer's keyed `check_key`). `--now` decides with `allow_now` (no future) where
//! the default is `allow(..).await`. Only the measured loops are counted (`--toggle-collect`), so
//! setup (the clock's calibration, a `redis-server`) stays out:
//!
//! ```text
//! cargo build --release -p ratelimit-load --bin local-decisions
//! valgrind --tool=callgrind --toggle-collect=local_decisions::measured_decisions \
//!   --toggle-collect=local_decisions::measured_now --toggle-collect=local_decisions::measured_governor \
//!   target/release/local-decisions --path memory-token-bucket --decisions 100000
//! # instructions a decision: the total Ir / 100000
//! ```

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ratelimit_core::{Algorithm, CacheConfig, Config, RateLimiter, RedisConfig, Source};
use ratelimit_tests::RedisServer;

#[derive(Debug, Parser)]
#[command(about = "Runs N local decisions (for instruction counts)")]
struct Args {
    /// Which decision.
    #[arg(long, value_enum)]
    path: Path,
    /// How many.
    #[arg(long, default_value_t = 100_000)]
    decisions: u64,
    /// Decide with `allow_now` (answered without a future) instead of `allow(..).await`.
    #[arg(long)]
    now: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Path {
    MemoryTokenBucket,
    MemorySlidingWindow,
    CacheHit,
    Governor,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let key = "tenant:7";
    let mut server = None;
    let limiter = match args.path {
        Path::Governor => {
            let limiter =
                governor::RateLimiter::keyed(governor::Quota::per_second(NonZeroU32::MAX));
            return measured_governor(&limiter, &String::from(key), args.decisions);
        }
        Path::MemoryTokenBucket => RateLimiter::new_lazy(
            Config::new(1_000_000_000, Duration::from_secs(1))
                .with_algorithm(Algorithm::TokenBucket),
        )?,
        Path::MemorySlidingWindow => {
            RateLimiter::new_lazy(Config::new(1_000_000, Duration::from_millis(10)))?
        }
        Path::CacheHit => {
            let redis = server.insert(RedisServer::start());
            let limiter = runtime.block_on(RateLimiter::new(
                Config::new(1, Duration::from_secs(600))
                    .with_redis_config(
                        RedisConfig::new([redis.url()]).with_timeout(Duration::from_secs(2)),
                    )
                    .with_cache(CacheConfig::new(Duration::from_millis(200), 1 << 20)),
            ))?;
            // Allowed, then denied by Redis: from then on the cache answers.
            for _ in 0..2 {
                runtime.block_on(limiter.allow(key))?;
            }
            limiter
        }
    };
    let expect = match args.path {
        Path::CacheHit => Source::Cache,
        _ => Source::Memory,
    };
    if args.now {
        measured_now(&limiter, key, args.decisions, expect)?;
    } else {
        measured_decisions(&runtime, &limiter, key, args.decisions, expect)?;
    }
    drop(server);
    Ok(())
}

/// The measured loop (`--toggle-collect=local_decisions::measured_decisions` counts only it):
/// `block_on`.
#[inline(never)]
fn measured_decisions(
    runtime: &tokio::runtime::Runtime,
    limiter: &RateLimiter,
    key: &str,
    n: u64,
    expect: Source,
) -> Result<(), Box<dyn std::error::Error>> {
    runtime.block_on(async {
        for _ in 0..n {
            let decision = limiter.allow(black_box(key)).await?;
            if decision.source() != expect {
                return Err(format!("answered by {}", decision.source()).into());
            }
            black_box(decision);
        }
        Ok(())
    })
}

/// The measured loop of `--now` (`--toggle-collect=local_decisions::measured_now`): `allow_now`,
/// no runtime.
#[inline(never)]
fn measured_now(
    limiter: &RateLimiter,
    key: &str,
    n: u64,
    expect: Source,
) -> Result<(), Box<dyn std::error::Error>> {
    for _ in 0..n {
        let decision = limiter
            .allow_now(black_box(key))
            .ok_or("the decision needed Redis")??;
        if decision.source() != expect {
            return Err(format!("answered by {}", decision.source()).into());
        }
        black_box(decision);
    }
    Ok(())
}

/// The peer's measured loop.
#[inline(never)]
fn measured_governor(
    limiter: &governor::DefaultKeyedRateLimiter<String>,
    key: &String,
    n: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    for _ in 0..n {
        black_box(limiter.check_key(black_box(key))).map_err(|e| e.to_string())?;
    }
    Ok(())
}
