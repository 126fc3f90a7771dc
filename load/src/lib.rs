//! Measuring kit for the rate limiter.
//!
//! The load tool, `ratelimit-load` (`cargo run --release -p ratelimit-load -- --help`), starts
//! the Redis it needs, several api-server instances sharing it, drives HTTP load over them, and
//! reports what a deployment would want to know: requests a second, 200 / 429 / other answers,
//! latency percentiles, Redis commands a second per node, and each instance's resident memory.
//! [`run`] is the same thing as a library call, which the smoke test uses.
//!
//! Beside it, programs that measure the limiter itself (`src/bin/`, each with `--help`; the
//! scripts named build and run them):
//!
//! - `algorithms`: the algorithms side by side: accuracy, Redis commands a decision, memory a
//!   key (`scripts/compare-algorithms.sh`);
//! - `cache-accuracy`: what the local cache costs in accuracy and saves in Redis calls
//!   (`scripts/cache-accuracy.sh`);
//! - `redis-throughput`: `allow` on Redis, against bare `EVALSHA` of the same script
//!   (`scripts/bench-redis.sh`);
//! - `soak`: the limiter's memory stays bounded under millions of keys (`scripts/soak.sh`);
//! - `with-redis`: runs a command beside a throwaway `redis-server`, for the shell scripts that
//!   need one (`scripts/bench-redis.sh`, `load/http-compare.sh`).
//!
//! Unless given `--redis-url`, they run on a throwaway `redis-server` of the `ratelimit-tests`
//! harness ([`MeasuredRedis`]), and every child process they start goes through the harness's
//! reaper, so nothing outlives them.
//!
//! # Layout
//!
//! - `options`: [`Options`] (what a run does) and [`Args`] (the command line, with clap).
//! - `redis_setup`: [`RedisChoice`]; starting a throwaway server or cluster with the
//!   `ratelimit-tests` harness; [`MeasuredRedis`]; `INFO commandstats` ([`commandstats`],
//!   [`CommandCounts`]).
//! - `resident`: [`Resident`], a process's `VmRSS` and `VmHWM`.
//! - `instances`: starting api-server processes, readiness, their `/metrics` counters.
//! - `server_bin`: building the api-server when no binary is given.
//! - `http`: one keep-alive HTTP/1.1 client connection on hyper.
//! - `driver`: the load loop, closed or at a fixed rate, into an HDR histogram.
//! - `report`: [`Report`], as JSON or Markdown tables.
//! - `run`: [`run`], which wires the rest together.
//! - `error`: [`LoadError`].

mod driver;
mod error;
mod http;
mod instances;
mod options;
mod redis_setup;
mod report;
mod resident;
mod run;
mod server_bin;

pub use error::LoadError;
pub use instances::LimiterCounters;
pub use options::{Args, Options};
pub use redis_setup::{CommandCounts, CommandStat, MeasuredRedis, RedisChoice, commandstats};
pub use report::{InstanceMemory, Latency, NodeCommands, Report, Setup, Statuses};
pub use resident::Resident;
pub use run::run;
pub use server_bin::build_api_server;
