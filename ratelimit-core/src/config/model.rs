//! The configuration as the limiter uses it, with builders and validation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::HotKeyConfig;
use super::error::ConfigError;
use super::http::HttpConfig;
use super::validate::validate_policy;
use crate::clock::Clock;
use crate::decision::FallbackMode;
use crate::key::{KeyBuilder, is_valid_prefix};
use crate::policy::{Algorithm, Policy, Window};

/// How to reach Redis (`mode`: `auto`, `standalone` or `cluster`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// Cluster when more than one address is given, standalone otherwise.
    #[default]
    Auto,
    /// One server (or one endpoint in front of several).
    Standalone,
    /// A Redis Cluster; the addresses are seed nodes.
    Cluster,
}

/// A secret: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Redis ACL credentials (`AUTH username password`, or `AUTH password` without a user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub(crate) username: Option<String>,
    pub(crate) password: Secret,
}

impl Credentials {
    /// `password`, for the default user or `username`.
    pub fn new(username: Option<String>, password: Secret) -> Self {
        Self { username, password }
    }
}

/// The `redis` section: where Redis is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub(crate) addrs: Vec<String>,
    pub(crate) mode: RedisMode,
    pub(crate) pool_size: usize,
    pub(crate) timeout: Duration,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) tls_ca: Option<TlsCa>,
}

/// PEM certificates of the authorities trusted for `rediss://` addresses.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TlsCa(pub(crate) Vec<u8>);

impl std::fmt::Debug for TlsCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsCa({} bytes of PEM)", self.0.len())
    }
}

impl RedisConfig {
    /// Default number of connections a standalone backend spreads calls over.
    pub const DEFAULT_POOL_SIZE: usize = 4;
    /// Default bound on every Redis call.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

    /// Redis at `addrs`: `host:port` or `redis://` URLs.
    pub fn new(addrs: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            addrs: addrs.into_iter().map(Into::into).collect(),
            mode: RedisMode::Auto,
            pool_size: Self::DEFAULT_POOL_SIZE,
            timeout: Self::DEFAULT_TIMEOUT,
            credentials: None,
            tls_ca: None,
        }
    }

    setters! {
        /// Trusts the certificate authorities in `pem` (PEM certificates) for `rediss://`
        /// addresses, instead of the system's roots. Plain `redis://` addresses are unaffected.
        pub fn with_tls_ca_pem(pem: impl Into<Vec<u8>>) sets tls_ca = Some(TlsCa(pem.into()));

        /// Authenticates every connection with `credentials` (they override any in the URLs).
        pub fn with_credentials(credentials: Credentials) sets credentials = Some(credentials);

        /// Standalone or cluster.
        pub fn with_mode(mode: RedisMode);

        /// The number of connections to a standalone server. Each pipelines any number of
        /// concurrent calls, one pipeline in flight at a time, so a few suffice: one alone
        /// waits for each pipeline's replies before sending the next. Ignored for a cluster
        /// (one multiplexed connection a node).
        pub fn with_pool_size(pool_size: usize);

        /// The bound on every Redis call.
        pub fn with_timeout(timeout: Duration);
    }

    /// The addresses as given.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The addresses as `redis://` URLs.
    pub fn urls(&self) -> Vec<String> {
        self.addrs
            .iter()
            .map(|a| {
                if a.contains("://") {
                    a.clone()
                } else {
                    format!("redis://{a}")
                }
            })
            .collect()
    }

    /// Whether the addresses are a cluster's.
    pub fn is_cluster(&self) -> bool {
        match self.mode {
            RedisMode::Auto => self.addrs.len() > 1,
            RedisMode::Standalone => false,
            RedisMode::Cluster => true,
        }
    }

    /// The connections of a standalone backend.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// The bound on every Redis call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn validate(&self) -> Result<(), ConfigError> {
        ensure(
            !self.addrs.is_empty(),
            "rate_limiter.redis.addrs",
            "at least one address is needed (host:port or redis://host:port)",
        )?;
        ensure(
            self.mode != RedisMode::Standalone || self.addrs.len() <= 1,
            "rate_limiter.redis.mode",
            "standalone mode takes exactly one address; use `cluster` for several",
        )?;
        for (i, url) in self.urls().iter().enumerate() {
            if let Err(e) = redis::Client::open(url.as_str()) {
                return Err(ConfigError::invalid(
                    format!("rate_limiter.redis.addrs[{i}]"),
                    format!("not a Redis address: {}", e.detail().unwrap_or("malformed")),
                ));
            }
        }
        if let Some(TlsCa(pem)) = &self.tls_ca {
            ensure(
                String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----"),
                "rate_limiter.redis.tls_ca_file",
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            )?;
            ensure(
                self.urls().iter().any(|url| url.starts_with("rediss://")),
                "rate_limiter.redis.tls_ca_file",
                "a CA applies to TLS connections, but no address is a rediss:// URL",
            )?;
        }
        ensure(
            (1..=1024).contains(&self.pool_size),
            "rate_limiter.redis.pool_size",
            "must be between 1 and 1024",
        )?;
        ensure(
            within(self.timeout, Duration::ZERO, Duration::from_secs(60)),
            "rate_limiter.redis.timeout",
            "must be above 0 and at most 60s: a limiter that waits longer is an outage",
        )?;
        Ok(())
    }
}

/// Which decisions the cache may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Only denials, until their `retry_after`: exact (the default).
    #[default]
    Exact,
    /// Denials, and allowed decisions from leases of up to `size` permits reserved in Redis and
    /// spent locally for at most the cache's `ttl`. Fewer Redis calls, measured inaccuracy.
    Lease {
        /// The most permits one lease reserves.
        size: u64,
    },
}

impl CacheMode {
    /// Permits a lease reserves when the file names the `lease` mode without a `lease_size`.
    pub const DEFAULT_LEASE_SIZE: u64 = 20;
}

/// Read from the mode's name, `exact` or `lease`; a lease's size is a field of its own
/// (`lease_size`), so `lease` alone has [`CacheMode::DEFAULT_LEASE_SIZE`].
impl<'de> Deserialize<'de> for CacheMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["exact", "lease"];
        let name = String::deserialize(d)?;
        match name.as_str() {
            "exact" => Ok(Self::Exact),
            "lease" => Ok(Self::Lease {
                size: Self::DEFAULT_LEASE_SIZE,
            }),
            other => Err(serde::de::Error::unknown_variant(other, NAMES)),
        }
    }
}

/// The `cache` section: decisions answered locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub(crate) enabled: bool,
    pub(crate) ttl: Duration,
    pub(crate) max_size: u64,
    pub(crate) mode: CacheMode,
}

impl CacheConfig {
    /// A cache bounded by `max_size` bytes, holding allowed decisions for at most `ttl`.
    pub fn new(ttl: Duration, max_size: u64) -> Self {
        Self {
            enabled: true,
            ttl,
            max_size,
            mode: CacheMode::Exact,
        }
    }

    setters! {
        /// Lets the cache answer allowed decisions too, from leases of up to `size` permits.
        pub fn with_leases(size: u64) sets mode = CacheMode::Lease { size };
    }

    /// Which decisions the cache may answer.
    pub fn mode(&self) -> CacheMode {
        self.mode
    }

    /// Whether decisions are cached.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How long an allowed decision may be reused.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The bound on the cache's memory, in bytes.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl: Duration::from_millis(500),
            max_size: 100_000_000,
            mode: CacheMode::Exact,
        }
    }
}

/// The `fallback` section: what to do while Redis cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackConfig {
    pub(crate) mode: FallbackMode,
    pub(crate) circuit_breaker_threshold: u32,
    #[serde(with = "super::human_duration")]
    pub(crate) cool_down: Duration,
}

impl FallbackConfig {
    /// Fall back to `mode` after `threshold` consecutive failures.
    pub fn new(mode: FallbackMode, threshold: u32) -> Self {
        Self {
            mode,
            circuit_breaker_threshold: threshold,
            ..Self::default()
        }
    }

    setters! {
        /// How long the breaker stays open before a probe.
        pub fn with_cool_down(cool_down: Duration);
    }

    /// The fallback mode.
    pub fn mode(&self) -> FallbackMode {
        self.mode
    }

    /// Consecutive failures that open the circuit breaker.
    pub fn circuit_breaker_threshold(&self) -> u32 {
        self.circuit_breaker_threshold
    }

    /// How long the breaker stays open before a probe.
    pub fn cool_down(&self) -> Duration {
        self.cool_down
    }
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            mode: FallbackMode::Local,
            circuit_breaker_threshold: 10,
            cool_down: Duration::from_secs(1),
        }
    }
}

/// The `memory` section: bounds of the in-memory backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    pub(crate) max_keys: usize,
}

impl MemoryConfig {
    /// At most `max_keys` keys are tracked.
    pub fn new(max_keys: usize) -> Self {
        Self { max_keys }
    }

    /// The bound on tracked keys.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            max_keys: 1_000_000,
        }
    }
}

/// Settings taken from the environment rather than the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `RATELIMIT_REDIS_URL`: replaces the Redis addresses (comma-separated for a cluster), and
    /// turns Redis on when the file has no `redis` section.
    pub redis_url: Option<String>,
}

impl Overrides {
    /// Reads the overrides from the process environment.
    pub fn from_env() -> Self {
        Self {
            redis_url: std::env::var("RATELIMIT_REDIS_URL")
                .ok()
                .filter(|v| !v.trim().is_empty()),
        }
    }

    pub(crate) fn apply(&self, config: &mut Config) {
        if let Some(url) = &self.redis_url {
            let addrs: Vec<String> = url
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect();
            config.redis = Some(match config.redis.take() {
                Some(mut redis) => {
                    redis.addrs = addrs;
                    redis
                }
                None => RedisConfig::new(addrs),
            });
        }
    }
}

/// Everything a [`RateLimiter`](crate::RateLimiter) needs.
///
/// Without Redis, the in-memory backend is used.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::{Algorithm, Config, Window};
/// let config = Config::new(100, Duration::from_secs(60))
///     .with_window(Window::per_hour(1000))
///     .with_algorithm(Algorithm::SlidingWindow)
///     .with_redis("redis://127.0.0.1:6379")
///     .with_prefix("myapp:");
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) redis: Option<RedisConfig>,
    pub(crate) policy: Policy,
    pub(crate) prefix: String,
    pub(crate) cache: CacheConfig,
    pub(crate) fallback: FallbackConfig,
    pub(crate) memory: MemoryConfig,
    pub(crate) hot_keys: HotKeyConfig,
    pub(crate) http: HttpConfig,
    pub(crate) clock: Option<Arc<dyn Clock>>,
    pub(crate) source: Option<PathBuf>,
}

impl Config {
    /// `max_requests` per `duration` for every key, sliding window, in memory.
    pub fn new(max_requests: u64, duration: Duration) -> Self {
        Self::with_policy(Policy::new(
            Policy::DEFAULT_NAME,
            [Window::new(max_requests, duration)],
        ))
    }

    /// A configuration whose default policy is `policy`.
    pub fn with_policy(policy: Policy) -> Self {
        Self {
            redis: None,
            policy,
            prefix: KeyBuilder::DEFAULT_PREFIX.to_owned(),
            cache: CacheConfig::default(),
            fallback: FallbackConfig::default(),
            memory: MemoryConfig::default(),
            hot_keys: HotKeyConfig::default(),
            http: HttpConfig::default(),
            clock: None,
            source: None,
        }
    }

    /// Adds a window: the policy becomes multi-window.
    pub fn with_window(mut self, window: Window) -> Self {
        let windows: Vec<Window> = self
            .policy
            .windows()
            .iter()
            .copied()
            .chain([window])
            .collect();
        self.policy = Policy::new(self.policy.name().to_owned(), windows)
            .with_algorithm(self.policy.algorithm())
            .with_cost(self.policy.cost())
            .with_spread(self.policy.spread());
        self
    }

    /// Sets the algorithm.
    pub fn with_algorithm(mut self, algorithm: Algorithm) -> Self {
        self.policy = self.policy.with_algorithm(algorithm);
        self
    }

    /// Uses one Redis server at `url` (`redis://host:port` or `host:port`).
    pub fn with_redis(self, url: impl Into<String>) -> Self {
        self.with_redis_config(RedisConfig::new([url.into()]))
    }

    /// Uses a Redis Cluster, given some of its nodes.
    pub fn with_redis_cluster(self, addrs: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.with_redis_config(RedisConfig::new(addrs).with_mode(RedisMode::Cluster))
    }

    setters! {
        /// Uses Redis as described.
        pub fn with_redis_config(redis: RedisConfig) sets redis = Some(redis);

        /// The prefix of every Redis key (default `ratelimit:`).
        pub fn with_prefix(prefix: impl Into<String>) sets prefix = prefix.into();

        /// Enables the local cache.
        pub fn with_cache(cache: CacheConfig);

        /// Sets the fallback.
        pub fn with_fallback(fallback: FallbackConfig);

        /// Bounds the in-memory backend.
        pub fn with_memory(memory: MemoryConfig);

        /// Sets hot-key detection (on by default).
        pub fn with_hot_keys(hot_keys: HotKeyConfig);

        /// Sets the HTTP settings (key source, proxies, headers, rules).
        pub fn with_http(http: HttpConfig);

        /// The clock of the in-memory backend and cache (Redis decisions use Redis's clock).
        pub fn with_clock(clock: impl Clock) sets clock = Some(Arc::new(clock));
    }

    /// Applies environment overrides, such as [`Overrides::from_env`].
    pub fn with_overrides(mut self, overrides: &Overrides) -> Self {
        overrides.apply(&mut self);
        self
    }

    /// Redis, if configured.
    pub fn redis(&self) -> Option<&RedisConfig> {
        self.redis.as_ref()
    }

    /// The default policy, built from the top-level windows.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cache section.
    pub fn cache(&self) -> &CacheConfig {
        &self.cache
    }

    /// The fallback section.
    pub fn fallback(&self) -> &FallbackConfig {
        &self.fallback
    }

    /// The memory section.
    pub fn memory(&self) -> &MemoryConfig {
        &self.memory
    }

    /// The hot-key section.
    pub fn hot_keys(&self) -> &HotKeyConfig {
        &self.hot_keys
    }

    /// The HTTP settings.
    pub fn http(&self) -> &HttpConfig {
        &self.http
    }

    /// The file this configuration was read from.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Checks every section; the error names the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_policy(&self.policy, "rate_limiter")?;
        ensure(
            is_valid_prefix(&self.prefix),
            "rate_limiter.prefix",
            "must be at most 64 printable ASCII characters without `{` or `}`",
        )?;
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        if self.cache.enabled {
            let shortest = self
                .policy
                .windows()
                .iter()
                .map(Window::duration)
                .min()
                .unwrap_or(Duration::ZERO);
            if self.cache.ttl.is_zero() || self.cache.ttl >= shortest {
                return Err(ConfigError::invalid(
                    "rate_limiter.cache.ttl",
                    format!(
                        "must be above 0 and shorter than the shortest window ({shortest:?}): a decision cached longer than its window is stale"
                    ),
                ));
            }
            if let CacheMode::Lease { size } = self.cache.mode
                && !(2..=10_000).contains(&size)
            {
                return Err(ConfigError::invalid(
                    "rate_limiter.cache.lease_size",
                    "must be between 2 and 10000",
                ));
            }
            ensure(
                self.cache.max_size >= 1024,
                "rate_limiter.cache.max_size",
                "must be at least 1KB",
            )?;
        }
        ensure(
            self.fallback.circuit_breaker_threshold >= 1,
            "rate_limiter.fallback.circuit_breaker_threshold",
            "must be at least 1",
        )?;
        ensure(
            within(
                self.fallback.cool_down,
                Duration::ZERO,
                Duration::from_secs(300),
            ),
            "rate_limiter.fallback.cool_down",
            "must be above 0 and at most 5m",
        )?;
        self.http.validate()?;
        let hot = &self.hot_keys;
        if hot.enabled {
            ensure(
                (1..=1024).contains(&hot.capacity),
                "rate_limiter.hot_keys.capacity",
                "must be between 1 and 1024",
            )?;
            ensure(
                (1..=1_000_000).contains(&hot.min_share_ppm),
                "rate_limiter.hot_keys.min_share",
                "must be above 0 and at most 1 (a share of decisions, such as 0.05)",
            )?;
            ensure(
                (1..=65_536).contains(&hot.sample_every),
                "rate_limiter.hot_keys.sample_every",
                "must be between 1 and 65536",
            )?;
            ensure(
                (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&hot.window),
                "rate_limiter.hot_keys.window",
                "must be between 100ms and 1h",
            )?;
        }
        ensure(
            self.memory.max_keys >= 1,
            "rate_limiter.memory.max_keys",
            "must be at least 1",
        )?;
        Ok(())
    }
}

/// `Ok` when `holds`, otherwise the refusal of `field` with `message`.
fn ensure(holds: bool, field: &str, message: &str) -> Result<(), ConfigError> {
    if holds {
        Ok(())
    } else {
        Err(ConfigError::invalid(field, message))
    }
}

/// Whether `value` is above `floor` and at most `ceiling`.
fn within(value: Duration, floor: Duration, ceiling: Duration) -> bool {
    value > floor && value <= ceiling
}
