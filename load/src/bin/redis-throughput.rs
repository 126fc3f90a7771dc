//! Measures `allow` on Redis: one caller in sequence, then many at once.
//!
//! Beside the limiter it measures bare `EVALSHA` of the same script over a multiplexed
//! connection and over a bb8 pool, so the cost of the limiter's own work and the choice of
//! connection show in one run. `scripts/bench-redis.sh` runs it next to `redis-benchmark`, on
//! the same throwaway server.
//!
//! ```text
//! cargo run --release -p ratelimit-load --bin redis-throughput -- --concurrency 50 --requests 20000 [--redis-url URL] [--multi-window]
//! ```
//! With `--multi-window` the policy has two windows (`LIMIT` a minute and `LIMIT` an hour,
//! `multi_window.lua`) and only the limiter is measured.
//! Without `--redis-url` it runs on a throwaway `redis-server` (the test harness's), stopped at
//! the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ratelimit_core::test_util::scripts;
use ratelimit_core::{Config, Policy, RateLimiter, RedisConfig, Window};
use ratelimit_load::MeasuredRedis;
use redis::AsyncCommands;

/// The policy the benchmark measures: large enough that every call is allowed and writes.
const LIMIT: u64 = 1_000_000;

/// Measures `allow` on Redis (one caller, then many), beside bare `EVALSHA` of the same script
/// over a multiplexed connection and a bb8 pool.
#[derive(Debug, Parser)]
#[command(name = "redis-throughput")]
struct Args {
    /// Concurrent callers
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Calls of each concurrent measurement (a quarter of them for the single caller)
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    requests: usize,
    /// An existing Redis to measure on [default: a throwaway redis-server]
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Two windows (a minute and an hour, `multi_window.lua`) instead of one second; the
    /// limiter only
    #[arg(long)]
    multi_window: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let redis = MeasuredRedis::start(args.redis_url).await?;
    let url = redis.url().to_owned();
    let concurrency = args.concurrency as usize;
    let requests = args.requests;
    let pool_sizes = [1usize, 4];

    let policy = if args.multi_window {
        println!("# allow on {url}: {requests} requests, multi_window {LIMIT}/1m + {LIMIT}/1h");
        Policy::new(
            "default",
            [
                Window::new(LIMIT, Duration::from_secs(60)),
                Window::new(LIMIT, Duration::from_secs(3600)),
            ],
        )
    } else {
        println!("# allow on {url}: {requests} requests, sliding_window {LIMIT}/1s");
        Policy::new("default", [Window::per_second(LIMIT)])
    };
    let client = redis::Client::open(url.as_str())?;
    let mut admin = client.get_multiplexed_async_connection().await?;
    let bench_keys = [
        "ratelimit:{default:bench:1}:sw",
        "ratelimit:{default:bench:0}:sw",
    ];
    for pool in pool_sizes {
        // Each run starts from an empty log, as redis-benchmark's does (an hour-long window
        // keeps every entry of the runs before).
        let _: () = admin.del(&bench_keys).await?;
        let limiter = RateLimiter::new(
            Config::with_policy(policy.clone()).with_redis_config(
                RedisConfig::new([url.clone()])
                    .with_pool_size(pool)
                    .with_timeout(Duration::from_secs(2)),
            ),
        )
        .await?;
        let seq = run(1, requests / 4, {
            let limiter = limiter.clone();
            move |_| allow_once(limiter.clone(), "bench:0")
        })
        .await?;
        report(&format!("limiter allow, 1 caller, pool_size={pool}"), seq);
        let par = run(concurrency, requests, {
            let limiter = limiter.clone();
            move |_| allow_once(limiter.clone(), "bench:1")
        })
        .await?;
        report(
            &format!("limiter allow, {concurrency} callers, pool_size={pool}"),
            par,
        );
    }

    if args.multi_window {
        let _: () = admin.del(&bench_keys).await?;
        return Ok(());
    }

    // The same script by hand, to see what the limiter adds.
    let script = Arc::new(redis::Script::new(scripts::SLIDING_WINDOW));
    let window_us = Window::per_second(LIMIT).duration().as_micros().to_string();
    let multiplexed = client.get_multiplexed_async_connection().await?;
    let raw = run(concurrency, requests, {
        let (script, window_us) = (script.clone(), window_us.clone());
        move |i| {
            let (script, window_us, mut con) =
                (script.clone(), window_us.clone(), multiplexed.clone());
            async move {
                allow_by_hand(
                    &script,
                    "raw:{bench:1}:sw",
                    format!("raw.{i}"),
                    &window_us,
                    &mut con,
                )
                .await
            }
        }
    })
    .await?;
    report(
        &format!("bare EVALSHA, multiplexed, {concurrency} callers"),
        raw,
    );

    let pool = bb8::Pool::builder()
        .max_size(args.concurrency)
        .build(client.clone())
        .await?;
    let pooled = run(concurrency, requests, {
        let (script, window_us) = (script.clone(), window_us.clone());
        move |i| {
            let (script, window_us, pool) = (script.clone(), window_us.clone(), pool.clone());
            async move {
                let mut con = pool.get().await.map_err(|e| e.to_string())?;
                allow_by_hand(
                    &script,
                    "bb8:{bench:1}:sw",
                    format!("bb8.{i}"),
                    &window_us,
                    &mut *con,
                )
                .await
            }
        }
    })
    .await?;
    report(
        &format!("bare EVALSHA, bb8 pool of {concurrency}, {concurrency} callers"),
        pooled,
    );

    let mut con = client.get_multiplexed_async_connection().await?;
    let _: () = con
        .del(&[
            "ratelimit:{default:bench:1}:sw",
            "ratelimit:{default:bench:0}:sw",
            "raw:{bench:1}:sw",
            "bb8:{bench:1}:sw",
        ])
        .await?;
    Ok(())
}

struct Measured {
    requests: usize,
    elapsed: Duration,
}

/// One `limiter.allow(key)`, as [`run`] calls it.
async fn allow_once(limiter: RateLimiter, key: &'static str) -> Result<(), String> {
    limiter
        .allow(key)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One allowed-path call of the sliding-window script by hand on `con`: what the limiter sends
/// for a request of cost 1 under `LIMIT` a second, with `nonce` as its member.
async fn allow_by_hand(
    script: &redis::Script,
    key: &str,
    nonce: String,
    window_us: &str,
    con: &mut impl redis::aio::ConnectionLike,
) -> Result<(), String> {
    script
        .key(key)
        .arg("allow")
        .arg(1)
        .arg(nonce)
        .arg(LIMIT)
        .arg(window_us)
        .invoke_async::<Vec<i64>>(con)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn report(label: &str, m: Measured) {
    let secs = m.elapsed.as_secs_f64();
    println!(
        "{label:<50} {:>10.0} req/s {:>8.1} us/req",
        m.requests as f64 / secs,
        secs * 1e6 / m.requests as f64
    );
}

/// Runs `requests` calls of `call` on `callers` concurrent tasks.
async fn run<F, Fut>(callers: usize, requests: usize, call: F) -> Result<Measured, String>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    // Warm up connections and script caches.
    for i in 0..callers.min(64) {
        call(i).await?;
    }
    let started = Instant::now();
    let per_caller = requests / callers;
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let call = call.clone();
            tokio::spawn(async move {
                for i in 0..per_caller {
                    call(c * per_caller + i).await?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(Measured {
        requests: per_caller * callers,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Args::command().debug_assert();
    }
}
