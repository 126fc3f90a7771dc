//! Measures what the local cache costs in accuracy and saves in Redis calls.
//!
//! Four limiters (four `RateLimiter`s, each with its own connections, one key prefix), as four
//! service instances would be, share one Redis and one hot key under a sliding window of 100 per
//! second. Three loads: **steady** (2.5x the limit, spread evenly over the instances),
//! **bursty** (idle until the window is empty, then 3x the limit within 100 ms, repeated) and,
//! for contrast, steady **under** the limit (0.8x), where leases are meant to pay off. Every
//! request is its own task, as in a server, so one instance may have several in flight.
//! Modes: no cache, the exact cache (denials only), and leases of 5 and of 20 permits, with a
//! cache ttl of 200 ms.
//!
//! Every request's local send time (monotonic) and answer are recorded; the exact sliding-log
//! definition is then applied to the *allowed* requests:
//!
//! - **over-limit**: allowed requests that are the 101st or later in some trailing window of
//!   one second (of allowed requests), as a share of the allowed;
//! - **false denials**: denied requests at whose send time the trailing second held fewer than
//!   `limit - cost + 1` allowed requests (an exact limiter would have admitted them), as a share
//!   of the denied and of all requests;
//! - **script calls per decision**: successful `EVALSHA` calls in `INFO commandstats`, before
//!   and after, over the decisions made.
//!
//! Timestamps are the client's: Redis decides by its own clock (`TIME`, same machine here) at
//! some point between send and reply, so a request racing another across a window edge can be
//! counted on the wrong side. The no-cache row measures that noise: an exact limiter, seen
//! through these timestamps.
//!
//! Last, an abusive client hammering one key it has spent: 10,000 `allow`s with and without the
//! exact cache, back to back and paced at 2,000 a second, counting the script calls they cost.
//!
//! ```text
//! cargo run --release -p ratelimit-load --bin cache-accuracy -- --duration 10s [--redis-url URL]
//! ```
//! Without `--redis-url` it runs on a throwaway `redis-server` (the test harness's), stopped at
//! the end; `scripts/cache-accuracy.sh` builds and runs it so.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use ratelimit_core::parse_duration;
use ratelimit_core::{CacheConfig, Config, RateLimiter, RedisConfig, Source};
use ratelimit_load::{CommandCounts, MeasuredRedis};

/// The policy: `LIMIT` per `WINDOW`, sliding window, cost 1.
const LIMIT: u64 = 100;
const WINDOW: Duration = Duration::from_secs(1);
const COST: u64 = 1;
const INSTANCES: usize = 4;
const CACHE_TTL: Duration = Duration::from_millis(200);
/// Steady load: 2.5x the limit; and, for comparison, a steady load under it (0.8x).
const STEADY_RATE: f64 = 2.5 * LIMIT as f64;
const UNDER_RATE: f64 = 0.8 * LIMIT as f64;
/// Bursty load: `BURST` requests within `BURST_SPAN`, one every `BURST_EVERY` (the window
/// has emptied in between).
const BURST: u64 = 3 * LIMIT;
const BURST_SPAN: Duration = Duration::from_millis(100);
const BURST_EVERY: Duration = Duration::from_millis(1300);
/// The abusive client's requests.
const ABUSE: u64 = 10_000;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy)]
enum Mode {
    NoCache,
    Exact,
    Lease(u64),
}

impl Mode {
    fn name(&self) -> String {
        match self {
            Self::NoCache => "no cache".into(),
            Self::Exact => "exact cache".into(),
            Self::Lease(size) => format!("lease {size}"),
        }
    }

    fn config(&self, url: &str) -> Config {
        let config = Config::new(LIMIT, WINDOW)
            .with_prefix("accuracy:")
            .with_redis_config(
                RedisConfig::new([url.to_owned()]).with_timeout(Duration::from_secs(2)),
            );
        let cache = CacheConfig::new(CACHE_TTL, 1 << 20);
        match self {
            Self::NoCache => config,
            Self::Exact => config.with_cache(cache),
            Self::Lease(size) => config.with_cache(cache.with_leases(*size)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Load {
    Steady { rate: f64, length: Duration },
    Bursty(u32),
}

impl Load {
    fn name(&self) -> String {
        match self {
            Self::Steady { rate, .. } => format!("steady {:.1}x", rate / LIMIT as f64),
            Self::Bursty(_) => "bursty 3x".into(),
        }
    }

    /// When each request is sent, from the start of the run; request `k` goes to instance
    /// `k % INSTANCES`, so every instance gets an even share at an even pace.
    fn schedule(&self) -> Vec<Duration> {
        match *self {
            Self::Steady { rate, length } => {
                let every = Duration::from_secs_f64(1.0 / rate);
                let n = (length.as_secs_f64() * rate) as u32;
                (0..n).map(|k| every * k).collect()
            }
            Self::Bursty(bursts) => {
                let every = BURST_SPAN / BURST as u32;
                (0..bursts)
                    .flat_map(|b| (0..BURST as u32).map(move |k| BURST_EVERY * b + every * k))
                    .collect()
            }
        }
    }
}

/// One request as the client saw it.
#[derive(Debug, Clone, Copy)]
struct Record {
    sent_us: u64,
    allowed: bool,
    source: Source,
}

/// One mode under one load.
#[derive(Debug)]
struct Row {
    load: String,
    mode: String,
    requests: usize,
    allowed: usize,
    exact_would_allow: usize,
    peak: usize,
    over_limit: usize,
    denied: usize,
    false_denials: usize,
    script_calls: u64,
    from_cache: usize,
    leases_taken: u64,
    stranded: u64,
    fallback: u64,
}

/// What the local cache costs in accuracy and saves in Redis calls: four limiters sharing one
/// Redis and one hot key, steady and bursty loads, no cache / exact cache / leases of 5 and 20,
/// then an abusive client.
#[derive(Debug, Parser)]
#[command(name = "cache-accuracy")]
struct Args {
    /// How long each steady run lasts (the bursty runs as many bursts as fit in it), e.g. 10s
    #[arg(long, value_name = "D", default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// An existing Redis to measure on [default: a throwaway redis-server]
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), AnyError> {
    let args = Args::parse();
    let redis = MeasuredRedis::start(args.redis_url).await?;
    let url = redis.url();

    let length = args.duration;
    let every = BURST_EVERY.as_micros();
    let bursts = u32::try_from(length.as_micros().div_ceil(every))?.max(1);
    let for_length = humantime::format_duration(length);
    let loads = [
        Load::Steady {
            rate: STEADY_RATE,
            length,
        },
        Load::Bursty(bursts),
        Load::Steady {
            rate: UNDER_RATE,
            length,
        },
    ];
    let modes = [Mode::NoCache, Mode::Exact, Mode::Lease(5), Mode::Lease(20)];
    println!(
        "# {INSTANCES} limiters, one hot key, sliding_window {LIMIT}/{WINDOW:?}, cache ttl {CACHE_TTL:?}"
    );
    println!(
        "# steady: {STEADY_RATE}/s for {for_length}; bursty: {BURST} within {BURST_SPAN:?} every \
         {BURST_EVERY:?}, {bursts} times; under the limit: {UNDER_RATE}/s for {for_length}"
    );
    println!("# every request is its own task; request k goes to limiter k % {INSTANCES}");
    println!();
    println!(
        "| load | mode | requests | allowed (exact would) | peak in 1 s | over-limit (of allowed) \
         | false denials (of denied / of all) | script calls / decision | answered locally \
         | leases (stranded permits) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut run_index = 0;
    for load in loads {
        for mode in modes {
            run_index += 1;
            let row = run(url, mode, load, run_index).await?;
            print_row(&row);
        }
    }

    println!();
    println!(
        "# abusive client: {ABUSE} allows on one spent key ({LIMIT}/{WINDOW:?}), script calls"
    );
    println!();
    println!("| pace | without cache | exact cache | allowed (without / with) |");
    println!("| --- | --- | --- | --- |");
    for pace in [None, Some(Duration::from_micros(500))] {
        run_index += 1;
        let (bare, bare_allowed) = abuse(url, Mode::NoCache, pace, run_index).await?;
        run_index += 1;
        let (cached, cached_allowed) = abuse(url, Mode::Exact, pace, run_index).await?;
        println!(
            "| {} | {bare} | {cached} ({:.2}% of them) | {bare_allowed} / {cached_allowed} |",
            match pace {
                None => "back to back".to_owned(),
                Some(every) => format!("{:.0}/s", 1.0 / every.as_secs_f64()),
            },
            100.0 * cached as f64 / bare.max(1) as f64
        );
    }
    Ok(())
}

async fn run(url: &str, mode: Mode, load: Load, run_index: u32) -> Result<Row, AnyError> {
    let mut limiters = Vec::with_capacity(INSTANCES);
    for _ in 0..INSTANCES {
        limiters.push(RateLimiter::new(mode.config(url)).await?);
    }
    let key: Arc<str> = format!("hot:{run_index}").into();
    // Open every connection (calls go round the pool) before counting.
    for limiter in &limiters {
        for _ in 0..RedisConfig::DEFAULT_POOL_SIZE {
            limiter.peek(&*format!("warm:{run_index}")).await?;
        }
    }
    let before = script_calls(url).await?;
    let started = Instant::now();
    let mut requests = Vec::new();
    for (k, at) in load.schedule().into_iter().enumerate() {
        tokio::time::sleep_until((started + at).into()).await;
        let limiter = limiters[k % INSTANCES].clone();
        let key = key.clone();
        requests.push(tokio::spawn(async move {
            let sent_us = micros(started.elapsed());
            limiter.allow(&*key).await.map(|d| Record {
                sent_us,
                allowed: d.allowed(),
                source: d.source(),
            })
        }));
    }
    let mut records = Vec::with_capacity(requests.len());
    for request in requests {
        records.push(request.await??);
    }
    let script_calls = script_calls(url).await? - before;
    let (leases_taken, stranded, fallback) =
        limiters.iter().fold((0, 0, 0), |(l, s, f), limiter| {
            let stats = limiter.stats();
            (
                l + stats.cache.leases_taken,
                s + stats.cache.stranded_permits,
                f + stats.fallback_decisions,
            )
        });
    records.sort_by_key(|r| r.sent_us);
    let accuracy = judge(&records);
    Ok(Row {
        load: load.name(),
        mode: mode.name(),
        requests: records.len(),
        allowed: records.iter().filter(|r| r.allowed).count(),
        exact_would_allow: exact_admissions(&records),
        peak: accuracy.peak,
        over_limit: accuracy.over_limit,
        denied: records.iter().filter(|r| !r.allowed).count(),
        false_denials: accuracy.false_denials,
        script_calls,
        from_cache: records.iter().filter(|r| r.source == Source::Cache).count(),
        leases_taken,
        stranded,
        fallback,
    })
}

struct Accuracy {
    over_limit: usize,
    false_denials: usize,
    peak: usize,
}

/// The exact sliding log applied to what was allowed, in send order: an entry sent at `s`
/// counts at `t` while `t < s + WINDOW`.
fn judge(records: &[Record]) -> Accuracy {
    let window = micros(WINDOW);
    let mut trailing: VecDeque<u64> = VecDeque::new();
    let mut accuracy = Accuracy {
        over_limit: 0,
        false_denials: 0,
        peak: 0,
    };
    for record in records {
        while trailing
            .front()
            .is_some_and(|&s| s + window <= record.sent_us)
        {
            trailing.pop_front();
        }
        if record.allowed {
            trailing.push_back(record.sent_us);
            if trailing.len() as u64 > LIMIT {
                accuracy.over_limit += 1;
            }
            accuracy.peak = accuracy.peak.max(trailing.len());
        } else if (trailing.len() as u64) < LIMIT - COST + 1 {
            accuracy.false_denials += 1;
        }
    }
    accuracy
}

/// How many of the same requests, at the same send times, an exact limiter would admit.
fn exact_admissions(records: &[Record]) -> usize {
    let window = micros(WINDOW);
    let mut trailing: VecDeque<u64> = VecDeque::new();
    let mut admitted = 0;
    for record in records {
        while trailing
            .front()
            .is_some_and(|&s| s + window <= record.sent_us)
        {
            trailing.pop_front();
        }
        if trailing.len() as u64 + COST <= LIMIT {
            trailing.push_back(record.sent_us);
            admitted += 1;
        }
    }
    admitted
}

/// An abusive client: the key is spent, then `ABUSE` more `allow`s, back to back or paced;
/// returns the script calls those made and how many were allowed.
async fn abuse(
    url: &str,
    mode: Mode,
    pace: Option<Duration>,
    run_index: u32,
) -> Result<(u64, u64), AnyError> {
    let limiter = RateLimiter::new(mode.config(url)).await?;
    let key = format!("abuser:{run_index}");
    for _ in 0..LIMIT {
        limiter.allow(&*key).await?;
    }
    let before = script_calls(url).await?;
    let started = Instant::now();
    let mut allowed = 0;
    for k in 0..ABUSE {
        if let Some(every) = pace {
            tokio::time::sleep_until((started + every * u32::try_from(k)?).into()).await;
        }
        if limiter.allow(&*key).await?.allowed() {
            allowed += 1;
        }
    }
    Ok((script_calls(url).await? - before, allowed))
}

/// Successful `EVALSHA` calls so far: decisions made in Redis.
async fn script_calls(url: &str) -> Result<u64, AnyError> {
    Ok(CommandCounts::read(url).await?.evalsha)
}

fn print_row(row: &Row) {
    let pct = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
    println!(
        "| {} | {} | {} | {} ({}) | {} | {:.2}% ({}) | {:.2}% / {:.2}% ({}) | {:.3} | {:.1}% | {} ({}) |{}",
        row.load,
        row.mode,
        row.requests,
        row.allowed,
        row.exact_would_allow,
        row.peak,
        pct(row.over_limit, row.allowed),
        row.over_limit,
        pct(row.false_denials, row.denied),
        pct(row.false_denials, row.requests),
        row.false_denials,
        row.script_calls as f64 / row.requests.max(1) as f64,
        pct(row.from_cache, row.requests),
        row.leases_taken,
        row.stranded,
        if row.fallback > 0 {
            format!(" (fallback answered {}: Redis was too slow)", row.fallback)
        } else {
            String::new()
        }
    );
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Args::command().debug_assert();
    }
}
