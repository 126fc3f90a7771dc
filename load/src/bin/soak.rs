//! Soak: the limiter's memory stays bounded by its configuration under millions of distinct keys.
//!
//! Two modes, each made of phases; every phase runs in a child process of its own, so its
//! resident memory (`VmRSS`, and the peak `VmHWM`, from `/proc/self/status`: Linux only) is its
//! own and starts from a fresh heap:
//!
//! - `memory`: a `RateLimiter` with the in-memory backend, bounded by `memory.max_keys`. A
//!   `RateLimiter` does not say how many keys it tracks, so this phase has RSS only.
//! - `backend`: the same backend driven directly (`backend::MemoryBackend`, public), with the
//!   same policy and bound, whose `len()` is the tracked-key count.
//! - `exact`: a Redis-backed limiter with the cache on in exact mode (denials cached), bounded by
//!   `cache.max_size`.
//! - `lease`: the same in lease mode (leases and denials cached, half the budget each).
//!
//! **`keys`** pushes N distinct keys through each phase (default 10,000,000; at most 2,000,000
//! for the Redis phases unless `--redis-keys` says otherwise: see [`DEFAULT_REDIS_KEYS`]), each
//! key visited once with requests enough to end denied: the memory phases and `exact` make two
//! requests under 1 a minute (allowed, then denied: the denial is cached); `lease` makes three
//! under 2 a minute (a lease of 2 from Redis, the second request answered from it, the third
//! denied by Redis and cached). Memory is sampled every N/20 keys.
//!
//! **`steady`** runs the phases side by side, each at a fixed rate of decisions (default 20,000
//! a second) for a duration (default 10 minutes), over a rotating population of keys (default
//! 4,000,000, four times `max_keys`): visit `v` goes to key `v % population`, with the same
//! requests as above under windows of 2 minutes, so live keys (and live denials) outnumber what
//! the bounds hold and both expiry and eviction are at work. Memory is sampled every 10 s; the
//! verdict is the RSS growth from minute 2 to the end and whether the peak stayed under a bound
//! computed from the configuration:
//!
//! ```text
//! bound = RSS before any traffic + SLACK
//!       + max_keys * BYTES_PER_KEY          (memory, backend)
//!       + max_size * CACHE_OVERHEAD_FACTOR  (exact, lease)
//! ```
//!
//! Both modes print Markdown tables. The Redis phases run on a throwaway `redis-server` (the
//! test harness's: a free loopback port, no persistence), stopped at the end, unless
//! `--redis-url` names one. The phases' child processes go through the harness's reaper, so
//! they die with the parent.
//!
//! ```text
//! cargo run --release -p ratelimit-load --bin soak -- keys [--keys 10000000] [--redis-keys N]
//! cargo run --release -p ratelimit-load --bin soak -- steady [--duration 10m] [--rate 20000]
//! ```
//!
//! Options (both modes): `--max-keys 1000000`, `--max-size 64MB`, `--phases
//! memory,backend,exact,lease`, `--concurrency 64` (tasks driving each Redis phase),
//! `--redis-url`. `keys`: `--keys`, `--redis-keys`. `steady`: `--duration`, `--rate`,
//! `--population`, `--every 10s`. Durations and sizes are read as the configuration reads them.
//! `scripts/soak.sh` builds and runs both modes.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use ratelimit_core::test_util::MemoryBackend;
use ratelimit_core::{
    CacheConfig, Config, Identity, Policy, RateLimiter, RedisConfig, Source, SystemClock,
};
use ratelimit_core::{MemoryConfig, parse_duration, parse_size};
use ratelimit_load::{MeasuredRedis, Resident};
use ratelimit_tests::reaper;

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes of resident memory allowed per tracked key of the in-memory backend (measured at about
/// 210 on x86_64 with glibc once full, 250 after ten minutes of churn: the table slot, the key,
/// a one-entry sliding log, the table's spare room, the allocator's): the claim the verdicts
/// check.
const BYTES_PER_KEY: u64 = 320;
/// Resident memory allowed per byte of `cache.max_size`: the cache weighs an entry as its key
/// plus 96 bytes, less than it really occupies (measured at about 2.3 times `max_size` in exact
/// mode and 2.6 times in lease mode, whose leases are allocations of their own).
const CACHE_OVERHEAD_FACTOR: u64 = 3;
/// Resident memory allowed beside the bounded structures: runtime, connections, allocator
/// arenas.
const SLACK: u64 = 64 << 20;
/// Distinct keys pushed through each Redis phase of `keys` unless `--redis-keys` says otherwise:
/// every key costs two script calls, and at 15,000 to 45,000 calls a second on two cores, 10
/// million keys would take 8 to 25 minutes a phase. Two million fill a 64 MB cache several times.
const DEFAULT_REDIS_KEYS: u64 = 2_000_000;
/// The cache's ttl for leases (allowed decisions); denials are cached until their retry_after.
const CACHE_TTL: Duration = Duration::from_millis(500);
/// The most permits one lease reserves.
const LEASE_SIZE: u64 = 10;

/// Soak: the limiter's memory stays bounded by its configuration under millions of distinct
/// keys. Each phase runs in a child process of its own; Markdown tables on stdout, progress on
/// stderr; exits non-zero if a bound did not hold.
#[derive(Debug, Clone, Parser)]
#[command(name = "soak")]
struct Options {
    #[command(subcommand)]
    mode: Mode,
    /// The in-memory backend's bound (memory, backend)
    #[arg(long, global = true, value_name = "N", default_value_t = 1_000_000)]
    max_keys: usize,
    /// The cache's bound (exact, lease), e.g. 64MB, 1MiB
    #[arg(long, global = true, value_name = "SIZE", default_value = "64MB", value_parser = parse_size)]
    max_size: u64,
    /// The phases to run
    #[arg(
        long,
        global = true,
        value_enum,
        value_delimiter = ',',
        default_value = "memory,backend,exact,lease"
    )]
    phases: Vec<Phase>,
    /// Tasks driving each Redis phase
    #[arg(long, global = true, value_name = "N", default_value_t = 64)]
    concurrency: usize,
    /// An existing Redis for the Redis phases [default: a throwaway redis-server]
    #[arg(long, global = true, value_name = "URL")]
    redis_url: Option<String>,
    /// The phase a child process runs (given by the parent to its children).
    #[arg(long, global = true, hide = true)]
    phase: Option<Phase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum Mode {
    /// Every phase in turn, N distinct keys each, each key visited once
    Keys {
        /// Distinct keys a phase
        #[arg(long, value_name = "N", default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        keys: u64,
        /// Distinct keys a Redis phase [default: the least of --keys and 2000000]
        #[arg(long, value_name = "N")]
        redis_keys: Option<u64>,
    },
    /// Every phase side by side, at a fixed rate of decisions for a duration
    Steady(Steady),
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Keys { .. } => "keys",
            Self::Steady(_) => "steady",
        }
    }
}

/// The options of mode `steady`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
struct Steady {
    /// How long, e.g. 10m
    #[arg(long, value_name = "D", default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Decisions a second, each phase
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// Keys the visits rotate over
    #[arg(long, value_name = "N", default_value_t = 4_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    population: u64,
    /// How often memory is sampled, e.g. 10s
    #[arg(long, value_name = "D", default_value = "10s", value_parser = positive_duration)]
    every: Duration,
}

/// A duration read as the configuration reads it, longer than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be longer than zero".to_owned()),
        duration => Ok(duration),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// A `RateLimiter` with the in-memory backend
    Memory,
    /// The in-memory backend driven directly
    Backend,
    /// A Redis-backed limiter, the cache in exact mode
    Exact,
    /// A Redis-backed limiter, the cache in lease mode
    Lease,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Backend => "backend",
            Self::Exact => "exact",
            Self::Lease => "lease",
        }
    }

    fn uses_redis(self) -> bool {
        matches!(self, Self::Exact | Self::Lease)
    }

    /// The limit a window, and the requests of one visit: enough that a visit ends denied.
    fn limit_and_requests(self) -> (u64, u32) {
        match self {
            Self::Lease => (2, 3),
            _ => (1, 2),
        }
    }

    fn describe(self, options: &Options) -> String {
        let (limit, requests) = self.limit_and_requests();
        let window = humantime::format_duration(options.window());
        let policy = format!("sliding_window {limit} per {window}, {requests} requests a key");
        match self {
            Self::Memory => format!(
                "RateLimiter, in-memory backend, max_keys {}; {policy}",
                group(options.max_keys as u64)
            ),
            Self::Backend => format!(
                "MemoryBackend driven directly, max_keys {}; {policy}",
                group(options.max_keys as u64)
            ),
            Self::Exact => format!(
                "RateLimiter on Redis, cache exact, max_size {}; {policy}",
                group(options.max_size)
            ),
            Self::Lease => format!(
                "RateLimiter on Redis, cache lease (lease_size {LEASE_SIZE}), max_size {}; {policy}",
                group(options.max_size)
            ),
        }
    }

    /// The resident memory this phase may add to its baseline, from the configuration.
    fn allowance(self, options: &Options) -> u64 {
        SLACK
            + match self {
                Self::Memory | Self::Backend => options.max_keys as u64 * BYTES_PER_KEY,
                Self::Exact | Self::Lease => options.max_size * CACHE_OVERHEAD_FACTOR,
            }
    }

    fn allowance_formula(self, options: &Options) -> String {
        match self {
            Self::Memory | Self::Backend => format!(
                "baseline + {} MiB + max_keys {} x {BYTES_PER_KEY} B",
                SLACK >> 20,
                group(options.max_keys as u64)
            ),
            Self::Exact | Self::Lease => format!(
                "baseline + {} MiB + max_size {} x {CACHE_OVERHEAD_FACTOR}",
                SLACK >> 20,
                group(options.max_size)
            ),
        }
    }
}

impl Options {
    /// The window of every phase's policy: a minute for `keys`; two for `steady`, so that live
    /// keys outnumber `max_keys` at the default rate.
    fn window(&self) -> Duration {
        match self.mode {
            Mode::Keys { .. } => Duration::from_secs(60),
            Mode::Steady(_) => Duration::from_secs(120),
        }
    }

    /// The distinct keys of `phase` in mode `keys`.
    fn keys_for(&self, phase: Phase) -> u64 {
        let Mode::Keys { keys, redis_keys } = self.mode else {
            return 0;
        };
        match redis_keys {
            _ if !phase.uses_redis() => keys,
            Some(n) => n,
            None => keys.min(DEFAULT_REDIS_KEYS),
        }
    }
}

fn main() -> ExitCode {
    let options = Options::parse();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match options.phase {
        Some(phase) => run_child(&options, phase),
        None => run_parent(&args, &options),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("soak: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the Redis server if a phase needs it, runs each phase in a child process (one after
/// the other for `keys`, side by side for `steady`), and prints their tables in order.
fn run_parent(args: &[String], options: &Options) -> Result<bool, AnyError> {
    let redis = if options.phases.iter().any(|p| p.uses_redis()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Some(runtime.block_on(MeasuredRedis::start(options.redis_url.clone()))?)
    } else {
        None
    };
    let exe = std::env::current_exe()?;
    let spawn = |phase: Phase| -> Result<Child, AnyError> {
        let mut command = Command::new(&exe);
        command
            .args(args)
            .args(["--phase", phase.name()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // The children are given the server the parent started (a URL given is in `args`).
        if let (Some(redis), None) = (&redis, &options.redis_url) {
            command.args(["--redis-url", redis.url()]);
        }
        Ok(reaper::spawn(command)?)
    };
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!("# soak, mode {}: {cores} cores", options.mode.name());
    match options.mode {
        Mode::Keys { .. } => println!(
            "# {} distinct keys for the memory phases, {} for the Redis phases; samples every 1/20",
            group(options.keys_for(Phase::Memory)),
            group(options.keys_for(Phase::Exact))
        ),
        Mode::Steady(steady) => println!(
            "# each phase: {} decisions/s for {}, keys rotating over {}; samples every {}",
            group(steady.rate),
            humantime::format_duration(steady.duration),
            group(steady.population),
            humantime::format_duration(steady.every)
        ),
    }
    let mut ok = true;
    let mut finish = |phase: Phase, mut child: Child| -> Result<(), AnyError> {
        let mut out = String::new();
        if let Some(stdout) = child.stdout.as_mut() {
            stdout.read_to_string(&mut out)?;
        }
        let status = child.wait()?;
        reaper::forget(child.id());
        println!();
        print!("{out}");
        if !status.success() {
            println!("phase {} failed: {status}", phase.name());
            ok = false;
        }
        std::io::stdout().flush()?;
        Ok(())
    };
    match options.mode {
        Mode::Keys { .. } => {
            for &phase in &options.phases {
                let child = spawn(phase)?;
                finish(phase, child)?;
            }
        }
        Mode::Steady(_) => {
            let children = options
                .phases
                .iter()
                .map(|&phase| spawn(phase).map(|child| (phase, child)))
                .collect::<Result<Vec<_>, _>>()?;
            for (phase, child) in children {
                finish(phase, child)?;
            }
        }
    }
    drop(redis);
    Ok(ok)
}

/// What a phase decides with.
enum Target {
    Limiter(RateLimiter),
    Backend {
        backend: MemoryBackend,
        policy: Policy,
    },
}

impl Target {
    async fn build(options: &Options, phase: Phase) -> Result<Self, AnyError> {
        let (limit, _) = phase.limit_and_requests();
        let config = Config::new(limit, options.window())
            .with_prefix(format!("soak-{}:", phase.name()))
            .with_memory(MemoryConfig::new(options.max_keys));
        let cache = CacheConfig::new(CACHE_TTL, options.max_size);
        let redis = || -> Result<RedisConfig, AnyError> {
            let url = options
                .redis_url
                .clone()
                .ok_or("no --redis-url for a Redis phase")?;
            Ok(RedisConfig::new([url]).with_timeout(Duration::from_secs(5)))
        };
        Ok(match phase {
            Phase::Memory => Self::Limiter(RateLimiter::new(config).await?),
            Phase::Backend => Self::Backend {
                backend: MemoryBackend::new(Arc::new(SystemClock::new()), options.max_keys),
                policy: config.policy().clone(),
            },
            Phase::Exact => Self::Limiter(
                RateLimiter::new(config.with_redis_config(redis()?).with_cache(cache)).await?,
            ),
            Phase::Lease => Self::Limiter(
                RateLimiter::new(
                    config
                        .with_redis_config(redis()?)
                        .with_cache(cache.with_leases(LEASE_SIZE)),
                )
                .await?,
            ),
        })
    }

    async fn allow(&self, key: &str) -> Result<(bool, Source), AnyError> {
        Ok(match self {
            Self::Limiter(limiter) => {
                let decision = limiter.allow(key).await?;
                (decision.allowed(), decision.source())
            }
            Self::Backend { backend, policy } => {
                let verdict = backend.evaluate(policy, Identity::new(key.as_bytes()), 1, true);
                (verdict.allowed, Source::Memory)
            }
        })
    }

    fn tracked(&self) -> Option<usize> {
        match self {
            Self::Limiter(_) => None,
            Self::Backend { backend, .. } => Some(backend.len()),
        }
    }

    fn cache_bytes(&self) -> Option<u64> {
        match self {
            Self::Limiter(limiter) if limiter.uses_redis() => Some(limiter.stats().cache_bytes),
            _ => None,
        }
    }
}

/// Decisions so far, by outcome.
#[derive(Default)]
struct Counts {
    keys: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    cached: AtomicU64,
    fallback: AtomicU64,
}

impl Counts {
    fn decisions(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed) + self.denied.load(Ordering::Relaxed)
    }
}

/// One visit: the phase's requests on one key, back to back. The visits completed so far.
async fn visit(
    target: &Target,
    counts: &Counts,
    key: &str,
    requests: u32,
) -> Result<u64, AnyError> {
    for _ in 0..requests {
        let (allowed, source) = target.allow(key).await?;
        let outcome = if allowed {
            &counts.allowed
        } else {
            &counts.denied
        };
        outcome.fetch_add(1, Ordering::Relaxed);
        match source {
            Source::Cache => {
                counts.cached.fetch_add(1, Ordering::Relaxed);
            }
            Source::Fallback(_) => {
                counts.fallback.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    Ok(counts.keys.fetch_add(1, Ordering::Relaxed) + 1)
}

/// Resident memory of this process (zero where `/proc` cannot be read).
fn resident() -> Resident {
    Resident::own().unwrap_or_default()
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    keys: u64,
    decisions: u64,
    elapsed: Duration,
    memory: Resident,
    tracked: Option<usize>,
    cache_bytes: Option<u64>,
}

fn sample(target: &Target, counts: &Counts, started: Instant) -> Sample {
    Sample {
        keys: counts.keys.load(Ordering::Relaxed),
        decisions: counts.decisions(),
        elapsed: started.elapsed(),
        memory: resident(),
        tracked: target.tracked(),
        cache_bytes: target.cache_bytes(),
    }
}

/// One phase, in this (child) process: its table on stdout, progress on stderr. Whether its
/// bounds held.
fn run_child(options: &Options, phase: Phase) -> Result<bool, AnyError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let target = Arc::new(Target::build(options, phase).await?);
        // Open the connections (calls go round the pool) before taking the baseline.
        for _ in 0..RedisConfig::DEFAULT_POOL_SIZE {
            target.allow("soak:warm-up").await?;
        }
        let baseline = resident();
        let counts = Arc::new(Counts::default());
        let started = Instant::now();
        let progress = Progress {
            target,
            counts: Arc::clone(&counts),
            started,
        };
        let samples = match options.mode {
            Mode::Keys { .. } => keys(options, phase, &progress).await?,
            Mode::Steady(steady) => run_steady(options, &steady, phase, &progress).await?,
        };
        Ok(report(options, phase, baseline, &samples, &counts, started))
    })
}

/// Tasks driving a phase: the in-memory paths never wait, so one a core; Redis needs many
/// requests in flight.
fn tasks_for(options: &Options, phase: Phase) -> usize {
    if phase.uses_redis() {
        options.concurrency.max(1)
    } else {
        std::thread::available_parallelism().map_or(2, usize::from)
    }
}

/// What a phase's driver works with: the limiter under test, the counts of its decisions, and
/// when the phase started.
struct Progress {
    target: Arc<Target>,
    counts: Arc<Counts>,
    started: Instant,
}

/// `keys`: every key once, sampled every N/20 keys by whichever task completes that key.
async fn keys(
    options: &Options,
    phase: Phase,
    progress: &Progress,
) -> Result<Vec<Sample>, AnyError> {
    let (target, counts, started) = (&progress.target, &progress.counts, progress.started);
    let n = options.keys_for(phase);
    let step = (n / 20).max(1);
    let (_, requests) = phase.limit_and_requests();
    let next = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(vec![sample(target, counts, started)]));
    let name = phase.name();
    let tasks: Vec<_> = (0..tasks_for(options, phase))
        .map(|_| {
            let (target, counts, next, samples) = (
                target.clone(),
                counts.clone(),
                next.clone(),
                samples.clone(),
            );
            tokio::spawn(async move {
                let mut key = String::with_capacity(32);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<(), AnyError>(());
                    }
                    key.clear();
                    write!(key, "soak:{i}")?;
                    // The task completing a multiple of the step takes the sample.
                    let done = visit(&target, &counts, &key, requests).await?;
                    if done.is_multiple_of(step) {
                        let s = sample(&target, &counts, started);
                        eprintln!(
                            "[{name}] {} keys, {:.0} s, VmRSS {:.1} MiB",
                            group(s.keys),
                            s.elapsed.as_secs_f64(),
                            mib(s.memory.rss_kib)
                        );
                        samples
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(s);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let mut samples = std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
    let last = sample(target, counts, started);
    if samples.last().is_none_or(|s| s.keys != last.keys) {
        samples.push(last);
    }
    samples.sort_by_key(|s| s.keys);
    samples.dedup_by_key(|s| s.keys);
    Ok(samples)
}

/// `steady`: visits paced to the rate of decisions, for the duration; a sample every `every`.
async fn run_steady(
    options: &Options,
    steady: &Steady,
    phase: Phase,
    progress: &Progress,
) -> Result<Vec<Sample>, AnyError> {
    let (target, counts, started) = (&progress.target, &progress.counts, progress.started);
    let (_, requests) = phase.limit_and_requests();
    let visits_per_second = steady.rate as f64 / f64::from(requests);
    // In-memory visits are paced in batches (a timer a visit would be most of their cost).
    let batch: u64 = if phase.uses_redis() { 1 } else { 64 };
    let duration = steady.duration;
    let population = steady.population;
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..tasks_for(options, phase))
        .map(|_| {
            let (target, counts, next) = (target.clone(), counts.clone(), next.clone());
            tokio::spawn(async move {
                let mut key = String::with_capacity(32);
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    let due = started + Duration::from_secs_f64(first as f64 / visits_per_second);
                    // Visits left behind when the machine cannot keep up are dropped, not
                    // made up after the end: the achieved rate shows it.
                    if due >= started + duration || started.elapsed() >= duration {
                        return Ok::<(), AnyError>(());
                    }
                    tokio::time::sleep_until(due.into()).await;
                    for v in first..first + batch {
                        key.clear();
                        write!(key, "soak:{}", v % population)?;
                        visit(&target, &counts, &key, requests).await?;
                    }
                }
            })
        })
        .collect();
    let mut samples = vec![sample(target, counts, started)];
    let mut tick = 1u32;
    let name = phase.name();
    loop {
        let at = started + steady.every * tick;
        if at > started + duration {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let s = sample(target, counts, started);
        eprintln!(
            "[{name}] {:.0} s, {} decisions, VmRSS {:.1} MiB",
            s.elapsed.as_secs_f64(),
            group(s.decisions),
            mib(s.memory.rss_kib)
        );
        samples.push(s);
        tick += 1;
    }
    for task in tasks {
        task.await??;
    }
    // The end, once the last visits are answered: in place of the last sample when it was
    // taken moments before.
    let last = sample(target, counts, started);
    if let Some(previous) = samples.last_mut()
        && last.elapsed - previous.elapsed < Duration::from_secs(1).min(steady.every / 2)
    {
        *previous = last;
    } else {
        samples.push(last);
    }
    Ok(samples)
}

/// Prints the phase's table and verdict; whether its bounds held.
fn report(
    options: &Options,
    phase: Phase,
    baseline: Resident,
    samples: &[Sample],
    counts: &Counts,
    started: Instant,
) -> bool {
    let mut out = String::new();
    let elapsed = started.elapsed();
    let _ = writeln!(out, "## {}: {}", phase.name(), phase.describe(options));
    let _ = writeln!(out);
    match options.mode {
        Mode::Keys { .. } => {
            let _ = writeln!(
                out,
                "| keys | decisions | elapsed | VmRSS | VmHWM | tracked keys | cache_bytes |"
            );
        }
        Mode::Steady(_) => {
            let _ = writeln!(
                out,
                "| time | decisions (a second since last) | VmRSS | VmHWM | tracked keys | cache_bytes |"
            );
        }
    }
    let columns = match options.mode {
        Mode::Keys { .. } => 7,
        Mode::Steady(_) => 6,
    };
    let _ = writeln!(out, "|{}", " ---: |".repeat(columns));
    let mut previous: Option<&Sample> = None;
    for s in samples {
        let tracked = s.tracked.map_or("n/a".to_owned(), |t| group(t as u64));
        let cache = s.cache_bytes.map_or("n/a".to_owned(), |b| {
            format!(
                "{} ({:.1}%)",
                group(b),
                100.0 * b as f64 / options.max_size as f64
            )
        });
        let memory = format!(
            "{:.1} MiB | {:.1} MiB",
            mib(s.memory.rss_kib),
            mib(s.memory.hwm_kib)
        );
        match options.mode {
            Mode::Keys { .. } => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} s | {memory} | {tracked} | {cache} |",
                    group(s.keys),
                    group(s.decisions),
                    s.elapsed.as_secs_f64()
                );
            }
            Mode::Steady(_) => {
                let rate = previous.map_or(0.0, |p| {
                    (s.decisions - p.decisions) as f64
                        / (s.elapsed - p.elapsed).as_secs_f64().max(1e-9)
                });
                let _ = writeln!(
                    out,
                    "| {:.0} s | {} ({}/s) | {memory} | {tracked} | {cache} |",
                    s.elapsed.as_secs_f64(),
                    group(s.decisions),
                    group(rate as u64)
                );
            }
        }
        previous = Some(s);
    }

    let decisions = counts.decisions();
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "- {} keys, {} decisions in {:.1} s ({}/s): {} allowed, {} denied, {} from the cache, {} by the fallback",
        group(counts.keys.load(Ordering::Relaxed)),
        group(decisions),
        elapsed.as_secs_f64(),
        group((decisions as f64 / elapsed.as_secs_f64().max(1e-9)) as u64),
        group(counts.allowed.load(Ordering::Relaxed)),
        group(counts.denied.load(Ordering::Relaxed)),
        group(counts.cached.load(Ordering::Relaxed)),
        group(counts.fallback.load(Ordering::Relaxed)),
    );
    let mut ok = true;
    let peak_kb = samples
        .iter()
        .map(|s| s.memory.hwm_kib)
        .max()
        .unwrap_or(0)
        .max(resident().hwm_kib);
    let bound_kb = baseline.rss_kib + phase.allowance(options) / 1024;
    let under = peak_kb <= bound_kb;
    ok &= under;
    let _ = writeln!(
        out,
        "- VmRSS before traffic {:.1} MiB; peak (VmHWM) {:.1} MiB; bound {:.1} MiB ({}): {}",
        mib(baseline.rss_kib),
        mib(peak_kb),
        mib(bound_kb),
        phase.allowance_formula(options),
        if under { "under" } else { "EXCEEDED" }
    );
    if let Some(max) = samples.iter().filter_map(|s| s.tracked).max() {
        let bound = options.max_keys.div_ceil(64) * 64;
        let held = max <= bound;
        ok &= held;
        let _ = writeln!(
            out,
            "- tracked keys at most {} (max_keys {}; the backend's own bound, 64 shards of \
             ceil(max_keys / 64), is {}): {}",
            group(max as u64),
            group(options.max_keys as u64),
            group(bound as u64),
            if held { "held" } else { "EXCEEDED" }
        );
    }
    if let Some(max) = samples.iter().filter_map(|s| s.cache_bytes).max() {
        let held = max <= options.max_size;
        ok &= held;
        let _ = writeln!(
            out,
            "- cache_bytes at most {} of max_size {}: {}",
            group(max),
            group(options.max_size),
            if held { "held" } else { "EXCEEDED" }
        );
    }
    if let Mode::Steady(steady) = options.mode {
        // Growth once the bounded structures are full: from minute 2 (or mid-run for a run
        // shorter than 4 minutes) to the end.
        let from = if steady.duration >= Duration::from_secs(240) {
            Duration::from_secs(120)
        } else {
            steady.duration / 2
        };
        let start = samples.iter().find(|s| s.elapsed >= from);
        if let (Some(start), Some(end)) = (start, samples.last()) {
            let growth_kb = end.memory.rss_kib as i64 - start.memory.rss_kib as i64;
            let _ = writeln!(
                out,
                "- VmRSS growth from {:.0} s to {:.0} s: {:+.1} MiB ({:+.1}% of {:.1} MiB)",
                start.elapsed.as_secs_f64(),
                end.elapsed.as_secs_f64(),
                growth_kb as f64 / 1024.0,
                100.0 * growth_kb as f64 / start.memory.rss_kib.max(1) as f64,
                mib(start.memory.rss_kib)
            );
        }
        let achieved = decisions as f64 / elapsed.as_secs_f64().max(1e-9);
        if achieved < 0.95 * steady.rate as f64 {
            let _ = writeln!(
                out,
                "- the rate fell short of {}/s: the machine could not keep up",
                group(steady.rate)
            );
        }
    }
    let _ = writeln!(
        out,
        "- verdict: {}",
        if ok { "bounded" } else { "NOT BOUNDED" }
    );
    print!("{out}");
    ok
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// `1234567` as `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Options::command().debug_assert();
    }

    #[test]
    fn a_child_reads_the_parents_arguments_with_the_phase_and_the_server_appended() {
        let parsed = Options::try_parse_from([
            "soak",
            "steady",
            "--duration",
            "90s",
            "--max-size",
            "1MiB",
            "--phases",
            "exact,lease",
            "--phase",
            "lease",
            "--redis-url",
            "redis://127.0.0.1:1",
        ]);
        let options = parsed.expect("the arguments are valid");
        assert_eq!(options.phase, Some(Phase::Lease));
        assert_eq!(options.phases, [Phase::Exact, Phase::Lease]);
        assert_eq!(options.max_size, 1 << 20);
        assert_eq!(options.redis_url.as_deref(), Some("redis://127.0.0.1:1"));
        assert!(matches!(options.mode, Mode::Steady(s) if s.duration == Duration::from_secs(90)));
        // As the configuration reads durations: a bare number is refused.
        assert!(Options::try_parse_from(["soak", "steady", "--duration", "90"]).is_err());
    }
}
