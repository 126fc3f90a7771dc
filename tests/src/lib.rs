//! Test harness for the ratelimit workspace: real, throwaway Redis servers.
//!
//! Integration tests get a [`RedisServer`] (standalone) or a [`RedisCluster`]
//! running on free loopback ports, either private to the test (killed on
//! drop, free to kill/restart) or shared by the whole test binary
//! ([`shared_standalone`], [`shared_cluster`]). The API is synchronous
//! (`std::process`), so it works from plain `#[test]`s and `#[tokio::test]`s
//! alike. [`keys_without_ttl`], [`all_keys`] and [`key_slot`] inspect what a
//! test left behind; [`command_calls`] and [`evalsha_calls`] count what Redis was asked.
//!
//! The suites' shared steps live here too, written once: [`concurrent_allows`] (a burst on one
//! key), [`tokio_test_cases!`] (one test per case of a shared body), [`hello_rule_config`] and
//! [`http_get`] (the example server's suites), [`two_decisions_traced`] (span tests),
//! [`seed_from_env`] (randomized tests), and [`CountingAllocator`] (allocation counts, also for
//! the benches of `load/`).
//!
//! Redis processes never outlive the test binary: they are forked by one
//! long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`, and an atexit handler
//! kills any that are still registered ([`reaper`], which the measuring tools
//! of `load/` use for their own child processes too). `redis-server` and `redis-cli` must
//! be on `PATH`; if not, the harness panics and asks you to run
//! `scripts/test.sh`, which installs them. Tests are never skipped.
//!
//! ```no_run
//! use ratelimit_tests::{RedisServer, keys_without_ttl};
//!
//! let server = RedisServer::start();
//! let mut conn = server.client().get_connection().expect("connect");
//! redis::cmd("SET").arg("k").arg("v").arg("PX").arg(1000).exec(&mut conn).expect("SET");
//! assert!(keys_without_ttl(&[server.url()]).is_empty());
//! ```

mod alloc;
mod app;
mod backends;
mod busy;
mod cases;
mod cluster;
mod concurrent;
mod http;
mod inspect;
mod phase;
pub mod ports;
pub mod proxy;
pub mod reaper;
mod seed;
mod server;
mod shared;
mod tools;
mod traced;

pub use alloc::{CountingAllocator, allocations_during, allocations_everywhere_during};
pub use app::serve;
pub use backends::Backend;
pub use busy::BusyLoops;
pub use cluster::RedisCluster;
pub use concurrent::{concurrent_allows, spawn_allows};
pub use http::{hello_rule_config, http_get, http_json, http_text};
pub use inspect::{
    all_keys, command_calls, evalsha_calls, key_slot, key_slot_bytes, keys_without_ttl,
};
pub use phase::{window_started, window_starting_now};
pub use seed::seed_from_env;
pub use server::RedisServer;
pub use shared::{shared_cluster, shared_standalone};
pub use traced::{two_decisions_traced, two_decisions_traced_now};
