//! Memory a key: resident memory of the in-memory backend holding N distinct keys.
//!
//! Builds a `RateLimiter` with the default configuration but for the algorithm (in memory,
//! `memory.max_keys` 1,000,000, 10 a minute so no key expires during the run), reads `VmRSS`
//! from `/proc/self/status` (Linux only), makes one `allow` for each of N distinct keys, reads
//! it again, and prints the difference, the bytes a key it comes to, and how many keys the
//! backend tracks (the bound may have evicted some). Keys look like client addresses
//! (`10.a.b.c`, 8 to 15 bytes) unless `--identity user` asks for `user:<n>` ones.
//!
//! ```text
//! cargo run --release -p ratelimit-load --bin memory-per-key [-- --keys 1000000 --algorithm token_bucket]
//! ```

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use ratelimit_core::{Algorithm, Config, RateLimiter};
use ratelimit_load::Resident;

#[derive(Debug, Parser)]
#[command(about = "Resident memory a key of the in-memory backend")]
struct Args {
    /// Distinct keys to fill the backend with.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u32,
    /// The default policy's algorithm (the configuration's default: sliding_window).
    #[arg(long, value_enum, default_value_t = AlgorithmArg::SlidingWindow)]
    algorithm: AlgorithmArg,
    /// What the keys look like.
    #[arg(long, value_enum, default_value_t = IdentityArg::Ip)]
    identity: IdentityArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AlgorithmArg {
    SlidingWindow,
    TokenBucket,
    FixedWindow,
    SlidingCounter,
}

impl AlgorithmArg {
    fn algorithm(self) -> Algorithm {
        match self {
            Self::SlidingWindow => Algorithm::SlidingWindow,
            Self::TokenBucket => Algorithm::TokenBucket,
            Self::FixedWindow => Algorithm::FixedWindow,
            Self::SlidingCounter => Algorithm::SlidingCounter,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum IdentityArg {
    /// `10.a.b.c`
    Ip,
    /// `user:<n>`
    User,
}

/// Writes key `i` into `buffer`, returning its length.
fn key(identity: IdentityArg, i: u32, buffer: &mut String) {
    use std::fmt::Write as _;
    buffer.clear();
    let _ = match identity {
        IdentityArg::Ip => write!(
            buffer,
            "10.{}.{}.{}",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        ),
        IdentityArg::User => write!(buffer, "user:{i}"),
    };
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config =
        Config::new(10, Duration::from_secs(60)).with_algorithm(args.algorithm.algorithm());
    let max_keys = config.memory().max_keys();
    let limiter = RateLimiter::new_lazy(config)?;
    // The first key builds what the limiter builds lazily; the baseline is read after it.
    let mut buffer = String::new();
    key(args.identity, 0, &mut buffer);
    runtime.block_on(limiter.allow(&buffer))?;
    let before = Resident::own().ok_or("no /proc/self/status")?;
    let started = Instant::now();
    runtime.block_on(async {
        for i in 1..args.keys {
            key(args.identity, i, &mut buffer);
            limiter.allow(&buffer).await?;
        }
        Ok::<_, ratelimit_core::Error>(())
    })?;
    let elapsed = started.elapsed();
    let after = Resident::own().ok_or("no /proc/self/status")?;
    let tracked = limiter.stats().memory_keys;
    let grown = after.rss_kib.saturating_sub(before.rss_kib) * 1024;
    println!(
        "algorithm {:?}, identities {:?}, max_keys {max_keys}",
        args.algorithm, args.identity
    );
    println!(
        "keys {} in {:.2} s; tracked {tracked}",
        args.keys,
        elapsed.as_secs_f64()
    );
    println!(
        "VmRSS {:.1} MiB -> {:.1} MiB (peak {:.1} MiB): {:.1} MiB for the keys, {:.0} bytes a tracked key",
        before.rss_kib as f64 / 1024.0,
        after.rss_kib as f64 / 1024.0,
        after.hwm_kib as f64 / 1024.0,
        grown as f64 / (1024.0 * 1024.0),
        grown as f64 / tracked.max(1) as f64,
    );
    Ok(())
}
