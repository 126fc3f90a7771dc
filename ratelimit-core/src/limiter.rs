//! [`RateLimiter`]: the public entry point.

use std::sync::Arc;

use crate::backend::{MemoryBackend, RedisBackend};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::decision::{Decision, Source};
use crate::error::Error;
use crate::key::{Identity, KeyBuilder};
use crate::policy::Policy;

/// Answers whether a key may proceed, for a default policy or any other.
///
/// Cheap to clone (an `Arc`), `Send + Sync`: build one and share it.
///
/// ```
/// # async fn demo() -> Result<(), ratelimit_core::Error> {
/// use std::time::Duration;
/// use ratelimit_core::{Config, RateLimiter};
/// let limiter = RateLimiter::new(Config::new(10, Duration::from_secs(1))).await?;
/// let decision = limiter.allow_n("tenant:7", 4).await?;
/// assert_eq!(decision.remaining(), 6);
/// assert_eq!(limiter.peek("tenant:7").await?.remaining(), 6);
/// limiter.reset("tenant:7").await?;
/// assert_eq!(limiter.peek("tenant:7").await?.remaining(), 10);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Memory(MemoryBackend),
    Redis(Box<RedisBackend>),
}

impl RateLimiter {
    /// Validates `config`, builds the limiter and, with Redis, connects and loads the scripts:
    /// an unreachable Redis is an error here.
    pub async fn new(config: Config) -> Result<Self, Error> {
        let limiter = Self::new_lazy(config)?;
        if let Backend::Redis(redis) = &limiter.inner.backend {
            redis.connect().await?;
        }
        Ok(limiter)
    }

    /// Validates `config` and builds the limiter without any I/O: Redis connections open on
    /// first use. For building inside synchronous code, such as a tower layer.
    pub fn new_lazy(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let backend = match config.redis() {
            Some(redis) => Backend::Redis(Box::new(RedisBackend::new(
                redis,
                KeyBuilder::new(config.prefix()),
            )?)),
            None => {
                let clock: Arc<dyn Clock> = config
                    .clock
                    .clone()
                    .unwrap_or_else(|| Arc::new(SystemClock::new()));
                Backend::Memory(MemoryBackend::new(clock, config.memory().max_keys()))
            }
        };
        Ok(Self {
            inner: Arc::new(Inner { config, backend }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The default policy (the configuration's top-level windows).
    pub fn policy(&self) -> &Policy {
        self.inner.config.policy()
    }

    /// Whether decisions are made by Redis (rather than in memory).
    pub fn uses_redis(&self) -> bool {
        matches!(self.inner.backend, Backend::Redis(_))
    }

    /// Takes the default cost (1 unless configured) from `key`'s quota, if it fits.
    pub async fn allow(&self, key: impl AsRef<[u8]>) -> Result<Decision, Error> {
        let policy = self.policy();
        self.evaluate(policy, key.as_ref(), policy.cost(), true)
            .await
    }

    /// Takes `n` permits from `key`'s quota if all of them fit, none otherwise.
    ///
    /// `n` above the smallest window's limit could never fit and is an error.
    pub async fn allow_n(&self, key: impl AsRef<[u8]>, n: u64) -> Result<Decision, Error> {
        self.evaluate(self.policy(), key.as_ref(), n, true).await
    }

    /// What `allow` would answer, without taking anything; `remaining` is what is left now.
    pub async fn peek(&self, key: impl AsRef<[u8]>) -> Result<Decision, Error> {
        let policy = self.policy();
        self.evaluate(policy, key.as_ref(), policy.cost(), false)
            .await
    }

    /// Forgets `key`'s usage: its full quota is back.
    pub async fn reset(&self, key: impl AsRef<[u8]>) -> Result<Decision, Error> {
        self.reset_with(self.policy(), key).await
    }

    /// `allow_n` under another policy (a route's, a tier's): its name keeps its state apart.
    pub async fn allow_with(
        &self,
        policy: &Policy,
        key: impl AsRef<[u8]>,
        n: u64,
    ) -> Result<Decision, Error> {
        policy.validate()?;
        self.evaluate(policy, key.as_ref(), n, true).await
    }

    /// `peek` under another policy.
    pub async fn peek_with(
        &self,
        policy: &Policy,
        key: impl AsRef<[u8]>,
    ) -> Result<Decision, Error> {
        policy.validate()?;
        self.evaluate(policy, key.as_ref(), policy.cost(), false)
            .await
    }

    /// `reset` under another policy.
    pub async fn reset_with(
        &self,
        policy: &Policy,
        key: impl AsRef<[u8]>,
    ) -> Result<Decision, Error> {
        let identity = Identity::new(key.as_ref());
        let source = match &self.inner.backend {
            Backend::Memory(memory) => {
                memory.reset(policy, identity);
                Source::Memory
            }
            Backend::Redis(redis) => {
                redis.reset(policy, identity).await?;
                Source::Redis
            }
        };
        Ok(Decision::stateless(true, policy.windows(), source))
    }

    async fn evaluate(
        &self,
        policy: &Policy,
        key: &[u8],
        cost: u64,
        consume: bool,
    ) -> Result<Decision, Error> {
        let limit = policy.smallest_limit();
        if cost > limit {
            return Err(Error::CostAboveLimit { cost, limit });
        }
        let identity = Identity::new(key);
        match &self.inner.backend {
            Backend::Memory(memory) => {
                let verdict = memory.evaluate(policy, identity, cost, consume);
                Ok(Decision::from_outcome(
                    verdict.outcome(),
                    policy.windows(),
                    Source::Memory,
                ))
            }
            Backend::Redis(redis) => {
                let outcome = redis.evaluate(policy, identity, cost, consume).await?;
                Ok(Decision::from_outcome(
                    outcome,
                    policy.windows(),
                    Source::Redis,
                ))
            }
        }
    }
}
