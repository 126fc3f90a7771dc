//! The limiter's side of the comparison with rate-limiter-flexible (`scripts/compare-peer.sh`):
//! the same workload as `load/peer/rate-limiter-flexible.js`, printed as the same JSON line.
//!
//! - **Throughput**: `--callers` concurrent callers, each taking the next key of `k0..k{N-1}`
//!   from one shared counter, for `--duration`; a fixed window of 1,000,000 per 60 s on Redis
//!   (`--limit` another number),
//!   the default configuration otherwise (no local cache, `local` fallback). The figure is
//!   completed calls over the time until the last caller finished. `--keys 1` measures one hot
//!   key, `--algorithm` another algorithm than the peer's fixed window, `--windows 2` a second,
//!   hourly window.
//! - **Exactness**: 200 concurrent calls on one fresh key, fixed window of 100 per 60 s; how
//!   many were allowed (exactly 100 is right).
//!
//! ```text
//! cargo run --release -p ratelimit-load --bin peer-workload -- --redis-url redis://127.0.0.1:6379
//! {"decisions_per_sec":41234.5,"exact_pass":100}
//! ```
//! Without `--redis-url` it runs on a throwaway `redis-server` (the test harness's), stopped at
//! the end. Decisions not made by Redis are counted on standard error: by the fallback (on an
//! overloaded machine; the figure is then not Redis's alone), or by the hot-key shield (the
//! exactness burst's denials, once its key is hot).
//!
//! Every call of the throughput run must be allowed: a denied call is answered locally once
//! its key is known to be spent, at a fraction of a Redis decision's cost, so a run that
//! reached its limit (one hot key at 200,000 calls a second reaches 1,000,000 in 5 s) would
//! report a rate Redis never decided. Such a run fails, naming how many calls were denied;
//! run it shorter, or with a larger `--limit`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use ratelimit_core::parse_duration;
use ratelimit_core::{Algorithm, Config, Policy, RateLimiter, RedisConfig, Source, Window};
use ratelimit_load::MeasuredRedis;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// The throughput run's window, a minute, and its second with `--windows 2`, an hour: each
/// of `--limit` calls, large enough that every call is allowed and writes.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(60);
const SECOND_THROUGHPUT_WINDOW: Duration = Duration::from_secs(3600);
/// The exactness check's window, and how many call at once.
const EXACT_WINDOW: Window = Window::new(100, Duration::from_secs(60));
const EXACT_CALLS: usize = 200;
/// Our fixed windows are aligned to the epoch: the exactness burst starts at least this long
/// before a window ends, so all of it falls into one window.
const CLEAR_OF_WINDOW_END: Duration = Duration::from_secs(2);

/// Runs the peer comparison's workload on this limiter and prints one JSON line:
/// `{"decisions_per_sec":…,"exact_pass":…}`.
#[derive(Debug, Parser)]
#[command(name = "peer-workload")]
struct Args {
    /// The Redis to run on [default: a throwaway redis-server]
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// How long the throughput run lasts, e.g. 5s
    #[arg(long, value_name = "D", default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent callers
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    callers: u32,
    /// Distinct keys, `k0` to `k{N-1}`, taken in turn
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Pooled Redis connections [default: the limiter's default]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pool_size: Option<u32>,
    /// The throughput run's algorithm (the exactness check stays a fixed window): fixed_window,
    /// sliding_window, token_bucket or sliding_counter
    #[arg(long, value_name = "NAME", default_value = "fixed_window", value_parser = algorithm)]
    algorithm: Algorithm,
    /// The throughput run's windows: 1 (`--limit` a minute), or 2 (and `--limit` an hour; a
    /// sliding log of two windows is the multi-window log)
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    windows: u8,
    /// The calls each throughput window allows (a sliding log holds up to that many entries)
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    limit: u64,
}

/// An algorithm by its configuration name.
fn algorithm(name: &str) -> Result<Algorithm, String> {
    [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
        Algorithm::SlidingCounter,
    ]
    .into_iter()
    .find(|a| a.name() == name)
    .ok_or_else(|| format!("no algorithm named {name:?}"))
}

/// What the throughput run counted.
struct Throughput {
    decisions: u64,
    denied: u64,
    not_by_redis: NotByRedis,
    elapsed: Duration,
}

/// Decisions Redis did not make: by the local cache (the hot-key shield answers a hot key's
/// denials, even with the cache off), or by the fallback (Redis did not answer in time).
#[derive(Debug, Default, Clone, Copy)]
struct NotByRedis {
    cache: u64,
    fallback: u64,
}

impl NotByRedis {
    fn count(&mut self, source: Source) {
        match source {
            Source::Redis | Source::Memory => {}
            Source::Cache => self.cache += 1,
            Source::Fallback(_) => self.fallback += 1,
        }
    }

    fn add(&mut self, other: Self) {
        self.cache += other.cache;
        self.fallback += other.fallback;
    }
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let args = Args::parse();
    let redis = MeasuredRedis::start(args.redis_url).await?;
    let url = redis.url();

    let mut windows = vec![Window::new(args.limit, THROUGHPUT_WINDOW)];
    if args.windows == 2 {
        windows.push(Window::new(args.limit, SECOND_THROUGHPUT_WINDOW));
    }
    let limiter = RateLimiter::new(config(windows, args.algorithm, url, args.pool_size)).await?;
    let before = evalsha_usec(url).await?;
    let run = throughput(&limiter, args.callers, args.keys, args.duration).await?;
    if run.denied > 0 {
        return Err(format!(
            "{} of the throughput run's {} calls were denied: the limit of its window was \
             reached, and denials of a spent key are answered without Redis; run it shorter \
             than {:?}",
            run.denied, run.decisions, args.duration
        )
        .into());
    }
    let redis_usec = evalsha_usec(url).await?.saturating_sub(before);
    let stats = limiter.stats();
    eprintln!(
        "peer-workload: {} pipelines carried {} calls; {} batches decided {} calls on one key \
         each; Redis spent {:.2} µs a decision in scripts",
        stats.pipelines,
        stats.pipelined_calls,
        stats.batches,
        stats.coalesced_calls,
        redis_usec as f64 / run.decisions.max(1) as f64
    );
    let (exact_pass, exact_not_by_redis) = exactness(url, args.pool_size).await?;

    let mut not_by_redis = run.not_by_redis;
    not_by_redis.add(exact_not_by_redis);
    if not_by_redis.fallback > 0 {
        eprintln!(
            "peer-workload: {} decisions were made by the fallback, not Redis",
            not_by_redis.fallback
        );
    }
    if not_by_redis.cache > 0 {
        eprintln!(
            "peer-workload: {} denials were answered by the hot-key shield",
            not_by_redis.cache
        );
    }
    let line = serde_json::json!({
        "decisions_per_sec": run.decisions as f64 / run.elapsed.as_secs_f64(),
        "exact_pass": exact_pass,
    });
    println!("{line}");
    Ok(())
}

/// Microseconds Redis has spent in `EVALSHA` so far (`INFO commandstats`).
async fn evalsha_usec(url: &str) -> Result<u64, AnyError> {
    let stats = ratelimit_load::commandstats(url).await?;
    Ok(stats.get("evalsha").map_or(0, |s| s.usec))
}

/// `windows` of `algorithm` on the Redis at `url`, the default configuration otherwise.
fn config(windows: Vec<Window>, algorithm: Algorithm, url: &str, pool_size: Option<u32>) -> Config {
    let mut redis = RedisConfig::new([url]);
    if let Some(size) = pool_size {
        redis = redis.with_pool_size(size as usize);
    }
    Config::with_policy(Policy::new("peer", windows).with_algorithm(algorithm))
        .with_redis_config(redis)
}

/// `callers` concurrent callers for `duration`, each taking the next of `keys` keys in turn.
async fn throughput(
    limiter: &RateLimiter,
    callers: u32,
    keys: u64,
    duration: Duration,
) -> Result<Throughput, AnyError> {
    // Connections are open once the limiter is built; this loads the script.
    limiter.allow("warm-up").await?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (limiter, next) = (limiter.clone(), next.clone());
            tokio::spawn(async move {
                let (mut decisions, mut denied) = (0u64, 0u64);
                let mut not_by_redis = NotByRedis::default();
                let mut key = String::new();
                while Instant::now() < deadline {
                    key.clear();
                    let _ = write!(key, "k{}", next.fetch_add(1, Ordering::Relaxed) % keys);
                    let decision = limiter.allow(&key).await?;
                    decisions += 1;
                    denied += u64::from(!decision.allowed());
                    not_by_redis.count(decision.source());
                }
                Ok::<_, ratelimit_core::Error>((decisions, denied, not_by_redis))
            })
        })
        .collect();
    let mut run = Throughput {
        decisions: 0,
        denied: 0,
        not_by_redis: NotByRedis::default(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (decisions, denied, not_by_redis) = task.await??;
        run.decisions += decisions;
        run.denied += denied;
        run.not_by_redis.add(not_by_redis);
    }
    run.elapsed = started.elapsed();
    Ok(run)
}

/// [`EXACT_CALLS`] concurrent calls on one fresh key: how many were allowed, and how many
/// decisions Redis did not make.
async fn exactness(url: &str, pool_size: Option<u32>) -> Result<(u64, NotByRedis), AnyError> {
    let limiter = RateLimiter::new(config(
        vec![EXACT_WINDOW],
        Algorithm::FixedWindow,
        url,
        pool_size,
    ))
    .await?;
    limiter.allow("warm-up").await?;
    wait_clear_of_window_end(EXACT_WINDOW.duration()).await;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let key: Arc<str> = format!("exact-{nanos}").into();
    let tasks: Vec<_> = (0..EXACT_CALLS)
        .map(|_| {
            let (limiter, key) = (limiter.clone(), key.clone());
            tokio::spawn(async move { limiter.allow(&*key).await })
        })
        .collect();
    let (mut allowed, mut not_by_redis) = (0u64, NotByRedis::default());
    for task in tasks {
        let decision = task.await??;
        allowed += u64::from(decision.allowed());
        not_by_redis.count(decision.source());
    }
    Ok((allowed, not_by_redis))
}

/// Sleeps past the end of the current epoch-aligned `window` if it ends within
/// [`CLEAR_OF_WINDOW_END`] (Redis runs on this machine: its clock is this one).
async fn wait_clear_of_window_end(window: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let window_us = window.as_micros().max(1);
    let left_us = window_us - now.as_micros() % window_us;
    let left = Duration::from_micros(u64::try_from(left_us).unwrap_or(u64::MAX));
    if left < CLEAR_OF_WINDOW_END {
        tokio::time::sleep(left + Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Args::command().debug_assert();
    }
}
