//! Load-testing kit for the rate limiter: starts the Redis it needs, several api-server
//! instances sharing it, drives HTTP load over them, and reports what a deployment would
//! want to know: requests a second, 200 / 429 / other answers, latency percentiles, Redis
//! commands a second per node, and each instance's resident memory.
//!
//! The command-line tool is `ratelimit-load` (`cargo run --release -p ratelimit-load --
//! --help`); [`run`] is the same thing as a library call, which the smoke test uses.
//!
//! # Layout
//!
//! - `options`: [`Options`] (what a run does) and [`Args`] (the command line, with clap).
//! - `redis_setup`: [`RedisChoice`]; starting a throwaway server or cluster with the
//!   `ratelimit-tests` harness; `INFO commandstats` counts.
//! - `instances`: starting api-server processes, readiness, `VmRSS`, their `/metrics` counters.
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
mod run;
mod server_bin;

pub use error::LoadError;
pub use instances::LimiterCounters;
pub use options::{Args, Options};
pub use redis_setup::{CommandCounts, RedisChoice};
pub use report::{InstanceMemory, Latency, NodeCommands, Report, Setup, Statuses};
pub use run::run;
pub use server_bin::build_api_server;
