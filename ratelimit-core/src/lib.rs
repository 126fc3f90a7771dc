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
//! Every module is private; what a user needs is re-exported here, so each item has one path
//! (`ratelimit_core::Config`, never `ratelimit_core::Config`).
//!
//! - What is limited: [`Policy`], [`Window`], [`Algorithm`] (`policy.rs`).
//! - The answer: [`Decision`], [`Source`], [`FallbackMode`] (`decision.rs`).
//! - The entry point: [`RateLimiter`] and its [`LimiterStats`] (`limiter.rs`), which ties
//!   together the backends (`backend/`: Redis standalone and Cluster, memory), the Lua scripts
//!   (`scripts.rs`, `lua/`), the decision cache (`cache.rs`), the guard around each Redis call
//!   (`guard.rs`: turn, [`BreakerState`] of the circuit breaker in `breaker.rs`, fallback in
//!   `fallback.rs`) and what it derives from each policy (`policy_state.rs`).
//! - Configuration: [`Config`] and its sections, the YAML format, and [`ConfigError`]s that name
//!   file, line and field (`config/`).
//! - Keys: [`KeyBuilder`] and [`Identity`], the Redis key format and the hashing of hostile
//!   identities (`key.rs`).
//! - Time: [`Clock`], [`SystemClock`], [`FakeClock`] (`clock.rs`).
//! - Operations: [`Metrics`] (Prometheus, `metrics.rs`), [`HotKey`]s (`hot_keys.rs`),
//!   [`Invariants`] (`invariants.rs`), [`Error`] and its [`ErrorKind`] (`error.rs`).
//! - The algorithms as pure functions over small states, the in-memory twins of the Lua
//!   scripts, live in `algorithm/`.
//!
//! # Features
//!
//! - `test-util`: exposes a `test_util` module: the internals this workspace's own
//!   test harness and measuring programs drive directly (the in-memory backend, the scripts,
//!   the algorithms, the circuit breaker). It is not part of the stable API.

#![warn(missing_debug_implementations)]

// First: the macro is visible to the modules declared after it.
#[macro_use]
mod setters;

mod algorithm;
mod backend;
mod breaker;
mod cache;
mod clock;
mod config;
mod decision;
mod error;
mod fallback;
mod guard;
mod hot_keys;
mod invariants;
mod key;
mod limiter;
mod metrics;
mod namespace;
mod policy;
mod policy_state;
mod scripts;

pub use breaker::BreakerState;
pub use breaker::BreakerStats;
pub use cache::CacheStats;
pub use clock::{Clock, FakeClock, SystemClock};
pub use config::{
    AllowList, CacheConfig, CacheMode, ClientIpHeader, Config, ConfigError, Credentials,
    FallbackConfig, HeaderFamilies, HotKeyConfig, HttpConfig, HttpParseError, IpBlock, KeySource,
    LegacyReset, Location, MemoryConfig, MissingKey, Overrides, PathPattern, PatternError,
    PatternSegment, PatternTail, RedisConfig, RedisMode, Rule, RuleMatch, Secret, UnitError,
    parse_duration, parse_size,
};
pub use decision::{Decision, FallbackMode, Source};
pub use error::{Error, ErrorKind};
pub use hot_keys::HotKey;
pub use invariants::{Invariant, Invariants};
pub use key::{Digest, Identity, KeyBuilder, MAX_PLAIN_IDENTITY};
pub use limiter::{LimiterStats, RateLimiter};
pub use metrics::Metrics;
pub use policy::{
    Algorithm, MAX_COUNTER_LIMIT, MAX_SLIDING_LOG_LIMIT, MAX_SPREAD, Policy, PolicyError, Window,
};

/// Internals for this workspace's test harness, benches and measuring programs: the in-memory
/// backend on its own, the Lua scripts, the algorithms as pure functions, the circuit breaker.
///
/// Behind the `test-util` feature and outside the stable API: names and signatures here may
/// change in any release.
#[cfg(feature = "test-util")]
pub mod test_util {
    pub use crate::backend::{
        Command, Exchange, IN_FLIGHT_PER_CONNECTION, Lane, MemoryBackend, NodeEviction,
        RedisBackend, Reply,
    };
    pub use crate::breaker::{Admission, CircuitBreaker};

    /// The Lua scripts, embedded, and ways to run them (see `scripts.rs`).
    pub mod scripts {
        pub use crate::scripts::*;
    }

    /// The batch scripts: several calls on one key decided by one script call (see
    /// `backend/coalesce.rs`).
    pub mod batches {
        pub use crate::backend::coalesce::{
            FIXED_WINDOW_BATCH, SLIDING_WINDOW_BATCH, TOKEN_BUCKET_BATCH, all, evaluate_batch_at,
            evaluate_batch_sent_again_at,
        };
    }

    /// The algorithms as pure functions over small states (see `algorithm/`).
    pub mod algorithm {
        pub use crate::algorithm::*;
    }
}
