//! Exact, Redis-backed rate limiting.
//!
//! A [`RateLimiter`] answers `allow`, `allow_n`, `peek` and `reset` for a key with a
//! [`Decision`]. The same four algorithms run as atomic Lua scripts in Redis (standalone or
//! Cluster, time taken from Redis) and as pure Rust in an in-memory backend, with the same
//! semantics, so a single instance can start in memory and move to Redis by configuration.
//!
//! # Quick start
//!
//! ```
//! # async fn demo() -> Result<(), ratelimit_core::Error> {
//! use std::time::Duration;
//! use ratelimit_core::{Config, RateLimiter};
//!
//! // 100 requests a minute per key, in memory; add `.with_redis("redis://127.0.0.1:6379")`
//! // to share the limit between instances.
//! let limiter = RateLimiter::new(Config::new(100, Duration::from_secs(60))).await?;
//! let decision = limiter.allow("user:12345").await?;
//! assert!(decision.allowed());
//! assert_eq!(decision.remaining(), 99);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! # Layout
//!
//! - [`policy`]: [`Window`], [`Algorithm`], [`Policy`]: what is limited and how.
//! - [`decision`]: [`Decision`] and its [`Source`].
//! - [`config`]: [`Config`], the YAML format, and errors that name file, line and field.
//! - [`key`]: the Redis key format and the hashing of hostile identities.
//! - [`algorithm`]: the algorithms as pure functions over small states (the in-memory twins of
//!   the Lua scripts).
//! - [`backend`]: where state lives: Redis standalone, Redis Cluster, memory.
//! - [`clock`]: real and fake time for the in-memory backend.
//! - [`breaker`]: the circuit breaker in front of Redis.
//! - `cache` and `fallback` (private): decisions answered locally, and what answers while Redis
//!   cannot.
//! - `guard` (private): the pipeline around each Redis call: cache, turn, breaker, fallback.
//! - [`hot_keys`]: which keys take a disproportionate share of decisions.
//! - [`limiter`]: [`RateLimiter`], which ties them together; `policy_state` (private) keeps
//!   what it derives from each policy (sub-policies, metric counters).
//! - [`metrics`]: the Prometheus families.
//! - [`scripts`]: the Lua scripts, embedded.

pub mod algorithm;
pub mod backend;
pub mod breaker;
mod cache;
pub mod clock;
pub mod config;
pub mod decision;
mod error;
mod fallback;
mod guard;
pub mod hot_keys;
pub mod invariants;
pub mod key;
pub mod limiter;
pub mod metrics;
pub mod policy;
mod policy_state;
pub mod scripts;

pub use cache::CacheStats;
pub use clock::{Clock, FakeClock, SystemClock};
pub use config::{
    CacheConfig, Config, ConfigError, FallbackConfig, HotKeyConfig, RedisConfig, RedisMode,
};
pub use decision::{Decision, FallbackMode, Source};
pub use error::{Error, ErrorKind};
pub use hot_keys::HotKey;
pub use invariants::{Invariant, Invariants};
pub use key::{Identity, KeyBuilder};
pub use limiter::{LimiterStats, RateLimiter};
pub use metrics::Metrics;
pub use policy::{Algorithm, Policy, PolicyError, Window};
