//! The algorithms side by side: accuracy, Redis commands a decision, memory a key.
//!
//! **Accuracy** runs in the in-memory backend with a fake clock (the same arithmetic as the Lua
//! scripts: the twin tests hold them to it), for a policy of 100 a second:
//!
//! - *boundary burst*: 200 requests 1 ms before a second boundary and 200 just after it; the
//!   most admitted within one second;
//! - *steady overload*: random arrivals at 3x the limit for 60 s; the long-run admitted rate
//!   (ideal: the limit), the most admitted in any trailing second (ideal: the limit), and the
//!   fewest the trailing second held when a request was denied, after two seconds of warm-up
//!   (below the limit, an exact sliding window would have admitted it);
//! - *bursty clients*: 150 requests in 100 ms every 2 s; the same three figures.
//!
//! **Redis commands** count what the script runs per decision (`INFO commandstats` after
//! `CONFIG RESETSTAT`, every command but `EVALSHA` itself), over decisions of which about half
//! are denied; every decision is one round trip (`EVALSHA`).
//!
//! **Memory a key** is `MEMORY USAGE` (exact, `SAMPLES 0`) of keys whose quota is fully spent,
//! for limits of 100 and 1000.
//!
//! ```text
//! cargo run --release -p ratelimit-load --bin algorithms [-- --redis-url redis://127.0.0.1:6379]
//! ```
//! Without `--redis-url` it runs on a throwaway `redis-server` (the test harness's), stopped at
//! the end; `scripts/compare-algorithms.sh` builds and runs it so.

use std::collections::VecDeque;
use std::time::Duration;

use clap::Parser;
use ratelimit_core::{Algorithm, Config, FakeClock, Policy, RateLimiter, RedisConfig, Window};
use ratelimit_load::{MeasuredRedis, commandstats};

type AnyError = Box<dyn std::error::Error + Send + Sync>;

const LIMIT: u64 = 100;
const WINDOW_US: u64 = 1_000_000;

/// Every algorithm, and the sliding log with two windows (the multi-window script).
fn subjects() -> Vec<(&'static str, Algorithm, bool)> {
    vec![
        ("sliding log", Algorithm::SlidingWindow, false),
        ("sliding log, 2 windows", Algorithm::SlidingWindow, true),
        ("sliding counter", Algorithm::SlidingCounter, false),
        ("token bucket (GCRA)", Algorithm::TokenBucket, false),
        ("fixed window", Algorithm::FixedWindow, false),
    ]
}

fn policy(algorithm: Algorithm, multi: bool, limit: u64) -> Policy {
    let mut windows = vec![Window::new(limit, Duration::from_micros(WINDOW_US))];
    if multi {
        // A minute allowing twice the second's rate: it never binds here, it only costs.
        windows.push(Window::new(limit * 120, Duration::from_secs(60)));
    }
    Policy::new("compare", windows).with_algorithm(algorithm)
}

/// A small deterministic generator, so every algorithm sees the same arrivals.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Exponential inter-arrival time (µs) for `rate` a second.
    fn gap(&mut self, rate: f64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (-(1.0 - u).ln() / rate * 1e6) as u64
    }
}

#[derive(Default)]
struct Accuracy {
    offered: u64,
    admitted: u64,
    /// Most admitted in any trailing window.
    peak: u64,
    /// The fewest admitted in the trailing window at a denial, after the first two seconds.
    least_at_denial: Option<u64>,
    span_us: u64,
}

/// Replays `arrivals` (µs, increasing) through `algorithm` for one key.
async fn replay(algorithm: Algorithm, multi: bool, arrivals: &[u64]) -> Result<Accuracy, AnyError> {
    let start = arrivals.first().copied().unwrap_or(0);
    let clock = FakeClock::new(start);
    let limiter = RateLimiter::new_lazy(
        Config::with_policy(policy(algorithm, multi, LIMIT)).with_clock(clock.clone()),
    )?;
    let mut trailing: VecDeque<u64> = VecDeque::new();
    let mut result = Accuracy::default();
    for &t in arrivals {
        clock.set(t);
        while trailing.front().is_some_and(|&s| s + WINDOW_US <= t) {
            trailing.pop_front();
        }
        let decision = limiter.allow("client").await?;
        result.offered += 1;
        if decision.allowed() {
            result.admitted += 1;
            trailing.push_back(t);
            result.peak = result.peak.max(trailing.len() as u64);
        } else if t >= start + 2 * WINDOW_US {
            let held = trailing.len() as u64;
            result.least_at_denial = Some(result.least_at_denial.map_or(held, |l| l.min(held)));
        }
    }
    result.span_us = arrivals.last().copied().unwrap_or(start) - start;
    Ok(result)
}

fn boundary_burst() -> Vec<u64> {
    let boundary = 1_000 * WINDOW_US;
    let mut arrivals = vec![boundary - 1_000; 2 * LIMIT as usize];
    arrivals.extend(std::iter::repeat_n(boundary + 1, 2 * LIMIT as usize));
    arrivals
}

fn steady_overload() -> Vec<u64> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut t = 1_000 * WINDOW_US + 123_457;
    let end = t + 60 * WINDOW_US;
    let mut arrivals = Vec::new();
    while t < end {
        arrivals.push(t);
        t += rng.gap(3.0 * LIMIT as f64);
    }
    arrivals
}

fn bursty_clients() -> Vec<u64> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut arrivals = Vec::new();
    for burst in 0..30u64 {
        let base = 1_000 * WINDOW_US + 345_678 + burst * 2 * WINDOW_US;
        let mut times: Vec<u64> = (0..150).map(|_| base + rng.next() % 100_000).collect();
        times.sort_unstable();
        arrivals.extend(times);
    }
    arrivals
}

async fn accuracy() -> Result<(), AnyError> {
    println!("## Accuracy: {LIMIT} a second, one key (in-memory twin, fake clock)\n");
    println!(
        "| algorithm | boundary burst: most in 1 s | overload 3x: admitted/s | overload: most in any 1 s | overload: fewest in 1 s at a denial | bursts: admitted/s | bursts: most in any 1 s | bursts: fewest in 1 s at a denial |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let (burst, steady, bursty) = (boundary_burst(), steady_overload(), bursty_clients());
    for (name, algorithm, multi) in subjects() {
        let b = replay(algorithm, multi, &burst).await?;
        let s = replay(algorithm, multi, &steady).await?;
        let c = replay(algorithm, multi, &bursty).await?;
        let per_second = |a: &Accuracy| a.admitted as f64 / (a.span_us as f64 / 1e6);
        let share = |a: &Accuracy| a.least_at_denial.map_or("-".to_owned(), |l| l.to_string());
        println!(
            "| {name} | {} | {:.1} | {} | {} | {:.1} | {} | {} |",
            b.peak,
            per_second(&s),
            s.peak,
            share(&s),
            per_second(&c),
            c.peak,
            share(&c),
        );
    }
    println!();
    Ok(())
}

async fn redis_costs(url: &str) -> Result<(), AnyError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    println!("## Redis: commands a decision and memory a key\n");
    println!(
        "| algorithm | round trips a decision | commands run by the script a decision (allowed / denied) | memory a spent key, limit 100 | limit 1000 |"
    );
    println!("| --- | ---: | --- | ---: | ---: |");
    for (name, algorithm, multi) in subjects() {
        let mut cells = Vec::new();
        for deny in [false, true] {
            let prefix = format!("cmp:{}:{multi}:{deny}:", algorithm.name());
            let config = Config::with_policy(policy(algorithm, multi, LIMIT))
                .with_redis_config(RedisConfig::new([url.to_owned()]))
                .with_prefix(prefix)
                .with_hot_keys(ratelimit_core::HotKeyConfig::disabled());
            let limiter = RateLimiter::new(config).await?;
            let key = "client";
            if deny {
                limiter.allow_n(key, LIMIT).await?;
            }
            redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .exec_async(&mut conn)
                .await?;
            const DECISIONS: u64 = 50;
            let mut denied = 0;
            for i in 0..DECISIONS {
                let decision = if deny {
                    limiter.allow(key).await?
                } else {
                    limiter.allow(format!("fresh:{i}")).await?
                };
                denied += u64::from(!decision.allowed());
            }
            assert_eq!(denied, if deny { DECISIONS } else { 0 }, "{name}");
            let calls: Vec<(String, u64)> = commandstats(url)
                .await?
                .into_iter()
                .filter(|(c, _)| !is_ours(c))
                .map(|(c, stat)| (c, stat.calls))
                .collect();
            let inner: Vec<String> = calls
                .iter()
                .map(|(c, n)| format!("{} {}", c.to_uppercase(), fmt(*n as f64 / DECISIONS as f64)))
                .collect();
            let total: u64 = calls.iter().map(|(_, n)| n).sum();
            cells.push(format!(
                "{} ({})",
                fmt(total as f64 / DECISIONS as f64),
                inner.join(", ")
            ));
        }
        let mut memory = Vec::new();
        for limit in [100u64, 1000] {
            memory.push(spent_key_bytes(url, &mut conn, algorithm, multi, limit).await?);
        }
        println!(
            "| {name} | 1 | {} / {} | {} B | {} B |",
            cells[0], cells[1], memory[0], memory[1]
        );
    }
    println!();
    Ok(())
}

/// Commands this program or the client sends itself, not the script.
fn is_ours(command: &str) -> bool {
    [
        "evalsha", "eval", "config", "info", "script", "client", "hello",
    ]
    .iter()
    .any(|ours| command == *ours || command.starts_with(&format!("{ours}|")))
}

fn fmt(x: f64) -> String {
    if (x - x.round()).abs() < 0.005 {
        format!("{}", x.round() as u64)
    } else {
        format!("{x:.2}")
    }
}

/// `MEMORY USAGE` of every key of a spent identity, summed, averaged over 20 identities.
async fn spent_key_bytes(
    url: &str,
    conn: &mut redis::aio::MultiplexedConnection,
    algorithm: Algorithm,
    multi: bool,
    limit: u64,
) -> Result<u64, AnyError> {
    let prefix = format!("mem:{}:{multi}:{limit}:", algorithm.name());
    let policy = policy(algorithm, multi, limit);
    let config = Config::with_policy(policy.clone())
        .with_redis_config(RedisConfig::new([url.to_owned()]))
        .with_prefix(prefix.clone());
    let limiter = RateLimiter::new(config).await?;
    let keys = ratelimit_core::KeyBuilder::new(prefix);
    let mut total = 0u64;
    const IDENTITIES: u64 = 20;
    for i in 0..IDENTITIES {
        let id = format!("user:{i:06}");
        limiter.allow_n(&id, limit).await?;
        for key in keys.keys(&policy, ratelimit_core::Identity::new(id.as_bytes())) {
            let bytes: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&key)
                .arg("SAMPLES")
                .arg(0)
                .query_async(conn)
                .await?;
            total += bytes.unwrap_or(0);
        }
    }
    Ok(total / IDENTITIES)
}

/// The algorithms side by side: accuracy (in-memory twin, fake clock), Redis commands a
/// decision and memory a key.
#[derive(Debug, Parser)]
#[command(name = "algorithms")]
struct Args {
    /// An existing Redis to measure on (the keys written are left there) [default: a throwaway
    /// redis-server]
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), AnyError> {
    let args = Args::parse();
    accuracy().await?;
    let redis = MeasuredRedis::start(args.redis_url).await?;
    redis_costs(redis.url()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Args::command().debug_assert();
    }
}
