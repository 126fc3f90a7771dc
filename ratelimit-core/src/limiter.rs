//! [`RateLimiter`]: the public entry point.
//!
//! It wires a backend (in memory, or Redis behind the guard pipeline of `guard.rs`) with the
//! per-policy state, the hot-key detector and the metrics, and handles what is common to both
//! backends: validation of the cost, spread policies, tracing and counting decisions.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::Instrument;

use crate::backend::MemoryBackend;
use crate::breaker::{BreakerState, BreakerStats};
use crate::cache::CacheStats;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::decision::{Decision, Source};
use crate::error::Error;
use crate::guard::Guarded;
use crate::hot_keys::{HotKey, HotKeys};
use crate::invariants::{self, Invariant, Invariants};
use crate::key::Identity;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::policy_state::{PolicyState, PolicyTable};

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
    backend: Arc<Backend>,
    metrics: Metrics,
    hot_keys: Arc<HotKeys>,
    /// The sub-policies and counters of each policy, built with the limiter.
    policies: PolicyTable,
    /// Whose turn it is among the sub-counters of spread policies.
    turn: AtomicU64,
}

#[derive(Debug)]
enum Backend {
    Memory(MemoryBackend),
    Redis(Box<Guarded>),
}

/// What the limiter has done so far, for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// The circuit breaker's state (always closed for the in-memory backend).
    pub breaker: Option<BreakerState>,
    /// Breaker transitions.
    pub breaker_transitions: BreakerStats,
    /// Decisions made by the fallback.
    pub fallback_decisions: u64,
    /// What the cache answered.
    pub cache: CacheStats,
    /// Bytes the cache holds, by its own weighing.
    pub cache_bytes: u64,
    /// Keys held in this process's memory: by the in-memory backend, or by the `local`
    /// fallback of a Redis-backed limiter (expired ones included until swept). Bounded by
    /// `memory.max_keys`, rounded up to a multiple of 64. Counting visits every shard: for
    /// operators and tests, not for every request.
    pub memory_keys: usize,
    /// Pipelines of two or more script calls sent together on one standalone connection
    /// (calls that arrived while the connection's previous pipeline was in flight).
    pub pipelines: u64,
    /// Script calls those pipelines carried: `pipelined_calls / pipelines` is their average size.
    pub pipelined_calls: u64,
    /// Batches: calls of one pipeline on one key (the same operation and windows; any algorithm
    /// with one window, the sliding log with several) decided by one script call.
    pub batches: u64,
    /// Calls those batches decided: `coalesced_calls / batches` is their average size.
    pub coalesced_calls: u64,
}

impl RateLimiter {
    /// Validates `config`, builds the limiter and, with Redis, connects and loads the scripts:
    /// an unreachable Redis is an error here.
    pub async fn new(config: Config) -> Result<Self, Error> {
        let limiter = Self::new_lazy(config)?;
        if let Backend::Redis(guarded) = limiter.inner.backend.as_ref() {
            guarded.connect().await?;
            // Loud at start: a Redis that may evict our keys silently hands quotas back.
            let check = guarded.keeps_counts().await;
            if !check.ok {
                tracing::warn!(detail = %check.detail, "Redis may lose rate-limit counts");
            }
            limiter
                .inner
                .metrics
                .invariants(&Invariants::new(vec![check]));
        }
        Ok(limiter)
    }

    /// Validates `config` and builds the limiter without any I/O: Redis connections open on
    /// first use. For building inside synchronous code, such as a tower layer.
    pub fn new_lazy(config: Config) -> Result<Self, Error> {
        Self::build(config, Metrics::new())
    }

    /// A limiter for `config` that carries on from this one: the same metric families, and,
    /// when the backend's sections (`redis`, `prefix`, `cache`, `fallback`, `memory`) are
    /// unchanged, the same backend and its state (in-memory counts, connections, breaker).
    /// The local cache is emptied: its denials and leases were decided under the old limits.
    /// New policies, rules and HTTP settings take effect for new requests; requests in flight
    /// finish under the old ones. For hot reloads.
    pub fn reconfigure(&self, config: Config) -> Result<Self, Error> {
        config.validate()?;
        let old = &self.inner.config;
        let same_backend = old.redis == config.redis
            && old.prefix == config.prefix
            && old.cache == config.cache
            && old.fallback == config.fallback
            && old.memory == config.memory
            && old.hot_keys == config.hot_keys;
        if same_backend {
            // Cached denials, the hot-key shield and leases were decided under the old
            // limits: a client denied under 5/1m must not stay denied under 100000/1m.
            if let Backend::Redis(guarded) = self.inner.backend.as_ref() {
                guarded.clear_cache();
            }
            return Ok(Self {
                inner: Arc::new(Inner {
                    policies: PolicyTable::new(&config, &self.inner.metrics),
                    config,
                    backend: self.inner.backend.clone(),
                    metrics: self.inner.metrics.clone(),
                    hot_keys: self.inner.hot_keys.clone(),
                    turn: AtomicU64::new(0),
                }),
            });
        }
        Self::build(config, self.inner.metrics.clone())
    }

    fn build(config: Config, metrics: Metrics) -> Result<Self, Error> {
        config.validate()?;
        let policies = PolicyTable::new(&config, &metrics);
        let clock: Arc<dyn Clock> = config
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(SystemClock::new()));
        let hot_keys = Arc::new(HotKeys::new(
            config.hot_keys().clone(),
            clock.clone(),
            metrics.clone(),
        ));
        let backend = match config.redis() {
            Some(redis) => Backend::Redis(Box::new(Guarded::new(
                redis,
                &config,
                clock.clone(),
                hot_keys.clone(),
                metrics.clone(),
            )?)),
            None => Backend::Memory(MemoryBackend::new(clock, config.memory().max_keys())),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                backend: Arc::new(backend),
                metrics,
                hot_keys,
                policies,
                turn: AtomicU64::new(0),
            }),
        })
    }

    /// The keys with the largest shares of recent decisions, heaviest first, as the hot-key
    /// detector sees them (at most `hot_keys.capacity`; empty when detection is off). For an
    /// admin endpoint: it names keys, which metrics never do. Also refreshes the
    /// `ratelimiter_hot_key*` metrics.
    ///
    /// ```
    /// # async fn demo() -> Result<(), ratelimit_core::Error> {
    /// use std::time::Duration;
    /// use ratelimit_core::{Config, HotKeyConfig, RateLimiter};
    /// let config = Config::new(5, Duration::from_secs(60))
    ///     .with_hot_keys(HotKeyConfig::default().with_sample_every(1));
    /// let limiter = RateLimiter::new(config).await?;
    /// for _ in 0..50 {
    ///     limiter.allow("abuser").await?;
    /// }
    /// limiter.allow("someone").await?;
    /// let hot = limiter.hot_keys();
    /// assert_eq!(hot[0].key, "abuser");
    /// assert!(hot[0].hot && hot[0].denied_share > 0.8);
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn hot_keys(&self) -> Vec<HotKey> {
        self.inner.hot_keys.report()
    }

    /// The limiter's Prometheus families: register them in your `Registry` with
    /// [`Metrics::register`].
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Checks the invariants now (one bounded `SCAN` a node for keys without TTL), records them
    /// in `ratelimiter_invariant_ok`, and returns them.
    pub async fn check_invariants(&self) -> Invariants {
        let config_loaded = Invariant {
            name: "config_loaded",
            ok: true,
            detail: self.inner.config.source().map_or_else(
                || "not read from a file (built in code or from a string)".to_owned(),
                |path| path.display().to_string(),
            ),
        };
        let (redis_healthy, no_stuck_keys, breaker, keeps_counts) =
            match self.inner.backend.as_ref() {
                Backend::Memory(_) => (
                    Invariant {
                        name: "redis_healthy",
                        ok: true,
                        detail: "in-memory backend".to_owned(),
                    },
                    Invariant {
                        name: "no_stuck_keys",
                        ok: true,
                        detail: "in-memory backend: state expires in process".to_owned(),
                    },
                    invariants::breaker(None),
                    Invariant {
                        name: "redis_keeps_counts",
                        ok: true,
                        detail: "in-memory backend".to_owned(),
                    },
                ),
                Backend::Redis(guarded) => guarded.health().await,
            };
        let report = Invariants::new(vec![
            config_loaded,
            redis_healthy,
            breaker,
            no_stuck_keys,
            keeps_counts,
        ]);
        self.inner.metrics.invariants(&report);
        report
    }

    /// What the limiter has done so far: breaker, fallback, cache.
    pub fn stats(&self) -> LimiterStats {
        match self.inner.backend.as_ref() {
            Backend::Memory(memory) => LimiterStats {
                memory_keys: memory.len(),
                ..LimiterStats::default()
            },
            Backend::Redis(guarded) => {
                let (pipelines, pipelined_calls) = guarded.pipelines();
                let (batches, coalesced_calls) = guarded.batches();
                LimiterStats {
                    breaker: Some(guarded.breaker_state()),
                    breaker_transitions: guarded.breaker_stats(),
                    fallback_decisions: guarded.fallback_decisions(),
                    cache: guarded.cache_stats(),
                    cache_bytes: guarded.cache_bytes(),
                    memory_keys: guarded.local_keys(),
                    pipelines,
                    pipelined_calls,
                    batches,
                    coalesced_calls,
                }
            }
        }
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
        matches!(self.inner.backend.as_ref(), Backend::Redis(_))
    }

    /// Takes the default cost (1 unless configured) from `key`'s quota, if it fits.
    pub async fn allow(&self, key: impl AsRef<[u8]>) -> Result<Decision, Error> {
        let state = self.inner.policies.default_policy();
        self.evaluate(
            state,
            key.as_ref(),
            state.policy().cost(),
            true,
            Ask::CacheFirst,
        )
        .await
    }

    /// [`allow`](Self::allow), answered without waiting when no round trip is needed: always
    /// with the in-memory backend, and with Redis when the local cache knows the answer (a key
    /// it holds a denial or a lease for). `None`, with nothing taken or counted, when the
    /// decision is not made locally: `allow` makes it (on Redis, or by the fallback when Redis
    /// is unavailable). For callers that cannot wait, or that would rather not build a future
    /// for a decision that has none to wait for.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use ratelimit_core::{Config, RateLimiter};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let limiter = RateLimiter::new(Config::new(2, Duration::from_secs(60))).await?;
    /// // In memory, every decision is made now.
    /// let first = limiter.allow_now("client-1").expect("in memory")?;
    /// assert!(first.allowed() && first.remaining() == 1);
    /// assert!(limiter.allow_now("client-1").expect("in memory")?.allowed());
    /// assert!(!limiter.allow_now("client-1").expect("in memory")?.allowed());
    /// # Ok::<_, ratelimit_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn allow_now(&self, key: impl AsRef<[u8]>) -> Option<Result<Decision, Error>> {
        let state = self.inner.policies.default_policy();
        self.evaluate_now(state, key.as_ref(), state.policy().cost(), true)
    }

    /// [`allow_with`](Self::allow_with), answered without waiting when no round trip is
    /// needed, as [`allow_now`](Self::allow_now) is; `None`, with nothing taken, when Redis
    /// must be asked.
    pub fn allow_with_now(
        &self,
        policy: &Policy,
        key: impl AsRef<[u8]>,
        n: u64,
    ) -> Option<Result<Decision, Error>> {
        match self.inner.policies.get_valid(policy) {
            Ok(state) => self.evaluate_now(&state, key.as_ref(), n, true),
            Err(error) => Some(Err(error.into())),
        }
    }

    /// [`allow_with`](Self::allow_with) for a caller that
    /// [`allow_with_now`](Self::allow_with_now) has just answered `None`: the decision is made
    /// on Redis (or by the fallback when Redis is unavailable) without asking the local cache
    /// again. Called without that, it is still a right decision, made without the cache's help.
    /// With the in-memory backend it is `allow_with`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use ratelimit_core::{Config, RateLimiter};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let limiter = RateLimiter::new(Config::new(100, Duration::from_secs(60))).await?;
    /// let policy = limiter.policy().clone();
    /// let decision = match limiter.allow_with_now(&policy, "k", 1) {
    ///     Some(decided) => decided?,
    ///     None => limiter.allow_with_remote(&policy, "k", 1).await?,
    /// };
    /// assert!(decision.allowed());
    /// # Ok::<_, ratelimit_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn allow_with_remote(
        &self,
        policy: &Policy,
        key: impl AsRef<[u8]>,
        n: u64,
    ) -> Result<Decision, Error> {
        let state = self.inner.policies.get_valid(policy)?;
        let ask = if self.uses_redis() {
            Ask::Redis
        } else {
            Ask::CacheFirst
        };
        self.evaluate(&state, key.as_ref(), n, true, ask).await
    }

    /// Takes `n` permits from `key`'s quota if all of them fit, none otherwise.
    ///
    /// `n` above the smallest window's limit could never fit and is an error.
    pub async fn allow_n(&self, key: impl AsRef<[u8]>, n: u64) -> Result<Decision, Error> {
        let state = self.inner.policies.default_policy();
        self.evaluate(state, key.as_ref(), n, true, Ask::CacheFirst)
            .await
    }

    /// What `allow` would answer, without taking anything; `remaining` is what is left now.
    pub async fn peek(&self, key: impl AsRef<[u8]>) -> Result<Decision, Error> {
        let state = self.inner.policies.default_policy();
        self.evaluate(
            state,
            key.as_ref(),
            state.policy().cost(),
            false,
            Ask::CacheFirst,
        )
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
        let state = self.inner.policies.get_valid(policy)?;
        self.evaluate(&state, key.as_ref(), n, true, Ask::CacheFirst)
            .await
    }

    /// `peek` under another policy.
    pub async fn peek_with(
        &self,
        policy: &Policy,
        key: impl AsRef<[u8]>,
    ) -> Result<Decision, Error> {
        let state = self.inner.policies.get_valid(policy)?;
        self.evaluate(&state, key.as_ref(), policy.cost(), false, Ask::CacheFirst)
            .await
    }

    /// `reset` under another policy.
    pub async fn reset_with(
        &self,
        policy: &Policy,
        key: impl AsRef<[u8]>,
    ) -> Result<Decision, Error> {
        let identity = Identity::new(key.as_ref());
        let source = if policy.spread() > 1 {
            let mut source = Source::Memory;
            for (index, part) in self.inner.policies.parts(policy).iter().enumerate() {
                let mut buffer = [0u8; PART_IDENTITY];
                source = self
                    .reset_one(part, part_identity(&mut buffer, identity, index))
                    .await?;
            }
            source
        } else {
            self.reset_one(policy, identity).await?
        };
        Ok(Decision::stateless(true, policy.windows(), source))
    }

    async fn reset_one(&self, policy: &Policy, identity: Identity<'_>) -> Result<Source, Error> {
        Ok(match self.inner.backend.as_ref() {
            Backend::Memory(memory) => {
                memory.reset(policy, identity);
                Source::Memory
            }
            Backend::Redis(guarded) => {
                guarded.reset(policy, identity).await?;
                Source::Redis
            }
        })
    }

    async fn evaluate(
        &self,
        state: &PolicyState,
        key: &[u8],
        cost: u64,
        consume: bool,
        ask: Ask,
    ) -> Result<Decision, Error> {
        check_cost(state, cost)?;
        let identity = Identity::new(key);
        let span = decision_span(state.policy(), identity, cost).map(|span| (span, Instant::now()));
        // The in-memory backend and the cache answer here, synchronously: no future is built
        // for them. Only a decision that has to wait for Redis builds one, boxed, so that the
        // future of `allow` stays a few words whichever way it is answered. (The same steps as
        // `evaluate_now`, written out: through it, this future's path is 40 instructions longer.)
        let here = match ask {
            Ask::CacheFirst => self.decide_locally(state, identity, cost, consume),
            Ask::Redis => None,
        };
        let decision = match here {
            Some(decided) => decided?,
            None => {
                let remote = self.decide_remotely(state, identity, cost, consume);
                match &span {
                    Some((span, _)) => remote.instrument(span.clone()).await?,
                    None => remote.await?,
                }
            }
        };
        if let Some((span, started)) = &span {
            finish_span(span, &decision, *started);
        }
        Ok(self.counted(state, identity, consume, decision))
    }

    /// [`Self::evaluate`] when no round trip is needed (the in-memory backend, or the cache
    /// answers); `None`, with nothing counted, when Redis must be asked.
    fn evaluate_now(
        &self,
        state: &PolicyState,
        key: &[u8],
        cost: u64,
        consume: bool,
    ) -> Option<Result<Decision, Error>> {
        if let Err(error) = check_cost(state, cost) {
            return Some(Err(error));
        }
        let identity = Identity::new(key);
        // One atomic read when no subscriber wants debug spans; the span is built once the
        // decision is known to be made here.
        let started = tracing::level_enabled!(tracing::Level::DEBUG).then(Instant::now);
        let decided = self.decide_locally(state, identity, cost, consume)?;
        if let Some(started) = started
            && let Some(span) = decision_span(state.policy(), identity, cost)
            && let Ok(decision) = &decided
        {
            finish_span(&span, decision, started);
        }
        Some(decided.map(|decision| self.counted(state, identity, consume, decision)))
    }

    /// `decision`, counted in the metrics and by the hot-key detector when it took permits.
    #[inline]
    fn counted(
        &self,
        state: &PolicyState,
        identity: Identity<'_>,
        consume: bool,
        decision: Decision,
    ) -> Decision {
        if consume {
            state.counters().count(&decision);
            self.inner
                .hot_keys
                .record(state.policy(), identity, decision.allowed());
        }
        decision
    }
}

/// Where a decision is looked for first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// The in-memory backend, or the cache of a Redis-backed limiter; then Redis.
    CacheFirst,
    /// Redis (a caller that just found the cache without an answer).
    Redis,
}

/// An error when `cost` could never fit `state`'s policy.
#[inline]
fn check_cost(state: &PolicyState, cost: u64) -> Result<(), Error> {
    let limit = state.largest_cost();
    if cost > limit {
        return Err(Error::CostAboveLimit { cost, limit });
    }
    Ok(())
}

/// The span of one decision, built only when a subscriber wants debug spans (the macro alone
/// fills in its fields, about 150 instructions, even when nobody listens).
#[inline]
fn decision_span(policy: &Policy, identity: Identity<'_>, cost: u64) -> Option<tracing::Span> {
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return None;
    }
    debug_span(policy, identity, cost)
}

/// [`decision_span`] once a subscriber wants it.
#[cold]
#[inline(never)]
fn debug_span(policy: &Policy, identity: Identity<'_>, cost: u64) -> Option<tracing::Span> {
    let span = tracing::debug_span!(
        "ratelimit.decision",
        policy = policy.name(),
        rule = policy.name(),
        key_hash = tracing::field::Empty,
        cost,
        result = tracing::field::Empty,
        source = tracing::field::Empty,
        latency_us = tracing::field::Empty,
    );
    if span.is_disabled() {
        return None;
    }
    span.record("key_hash", identity.digest().as_str());
    Some(span)
}

/// Records `decision`, made since `started`, on its span.
fn finish_span(span: &tracing::Span, decision: &Decision, started: Instant) {
    let result = if decision.allowed() {
        "allowed"
    } else {
        "denied"
    };
    span.record("result", result);
    span.record("source", decision.source().name());
    span.record("latency_us", started.elapsed().as_micros() as u64);
}

/// The future of a decision that waits for Redis.
type Remote<'a> = Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send + 'a>>;

impl RateLimiter {
    /// The decision when it needs no waiting: always for the in-memory backend, and for a
    /// Redis-backed limiter when the cache answers. `None`: ask Redis
    /// ([`Self::decide_remotely`]).
    fn decide_locally(
        &self,
        state: &PolicyState,
        identity: Identity<'_>,
        cost: u64,
        consume: bool,
    ) -> Option<Result<Decision, Error>> {
        let policy = state.policy();
        match self.inner.backend.as_ref() {
            Backend::Memory(memory) if policy.spread() > 1 => {
                Some(self.memory_spread(memory, state, identity, cost, consume))
            }
            Backend::Memory(memory) => {
                let verdict = memory.evaluate(policy, identity, cost, consume);
                Some(Ok(Decision::from_outcome(
                    verdict.outcome(),
                    policy.windows(),
                    Source::Memory,
                )))
            }
            Backend::Redis(_) if policy.spread() > 1 => None,
            Backend::Redis(guarded) => guarded.cached_now(policy, identity, cost, consume).map(Ok),
        }
    }

    /// A decision that goes to Redis (through the guard: cache, breaker, fallback), boxed: a
    /// round trip allocates anyway, and the future of `allow` stays small.
    fn decide_remotely<'a>(
        &'a self,
        state: &'a PolicyState,
        identity: Identity<'a>,
        cost: u64,
        consume: bool,
    ) -> Remote<'a> {
        let policy = state.policy();
        let Backend::Redis(guarded) = self.inner.backend.as_ref() else {
            return Box::pin(std::future::ready(
                self.decide_locally(state, identity, cost, consume)
                    .unwrap_or(Err(Error::CostAboveLimit {
                        cost,
                        limit: state.largest_cost(),
                    })),
            ));
        };
        if policy.spread() <= 1 {
            // `decide_locally` asked the cache already. The guard's future boxed as it is,
            // with no future around it to hold room for the spread path's too.
            return Box::pin(guarded.evaluate_missed(policy, identity, cost, consume));
        }
        Box::pin(async move {
            let parts = state.parts();
            let mut denied: Option<Decision> = None;
            for index in self.turns(parts.len()) {
                let Some(part) = parts.get(index) else {
                    continue;
                };
                let mut buffer = [0u8; PART_IDENTITY];
                let part_identity = part_identity(&mut buffer, identity, index);
                let decision = match guarded.cached_now(part, part_identity, cost, consume) {
                    Some(decision) => decision,
                    // Boxed apart: with the loop's state around it, the part's future would be
                    // too large for the allocator's per-thread cache (`Guarded::evaluate_missed`).
                    None => {
                        Box::pin(guarded.evaluate_missed(part, part_identity, cost, consume))
                            .await?
                    }
                }
                .of_whole(policy.windows(), parts.len().max(1) as u64);
                if decision.allowed() {
                    return Ok(decision);
                }
                denied = Some(earliest(denied, decision));
            }
            denied.ok_or(Error::CostAboveLimit {
                cost,
                limit: policy.smallest_limit(),
            })
        })
    }

    /// A decision on one sub-counter of a spread policy (see [`Policy::with_spread`]), in
    /// memory: the next in turn, then the one after it if the first denies.
    fn memory_spread(
        &self,
        memory: &MemoryBackend,
        state: &PolicyState,
        identity: Identity<'_>,
        cost: u64,
        consume: bool,
    ) -> Result<Decision, Error> {
        let policy = state.policy();
        let parts = state.parts();
        let mut denied: Option<Decision> = None;
        for index in self.turns(parts.len()) {
            let Some(part) = parts.get(index) else {
                continue;
            };
            let mut buffer = [0u8; PART_IDENTITY];
            let part_identity = part_identity(&mut buffer, identity, index);
            let verdict = memory.evaluate(part, part_identity, cost, consume);
            let decision =
                Decision::from_outcome(verdict.outcome(), part.windows(), Source::Memory)
                    .of_whole(policy.windows(), parts.len().max(1) as u64);
            if decision.allowed() {
                return Ok(decision);
            }
            denied = Some(earliest(denied, decision));
        }
        denied.ok_or(Error::CostAboveLimit {
            cost,
            limit: policy.smallest_limit(),
        })
    }

    /// The sub-counters a spread decision tries, of `n`: the next in turn, then the one after.
    fn turns(&self, n: usize) -> [usize; 2] {
        let n = n.max(1);
        let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        let first = usize::try_from(turn % n as u64).unwrap_or(0);
        [first, (first + 1) % n]
    }
}

/// Of two denials, the one that frees up first.
fn earliest(earlier: Option<Decision>, decision: Decision) -> Decision {
    match earlier {
        Some(earlier) if earlier.retry_after() <= decision.retry_after() => earlier,
        _ => decision,
    }
}

/// Room for an identity (at most 64 bytes as stored) and `#<index>`.
const PART_IDENTITY: usize = crate::key::MAX_PLAIN_IDENTITY + 4;

/// The identity of sub-counter `index` of `identity`: `<identity>#<index>`. Inside the key's
/// hash tag, so each sub-counter lands in a slot of its own. No client identity holds `#`
/// unhashed, so none can name a sub-counter.
fn part_identity<'b>(
    buffer: &'b mut [u8; PART_IDENTITY],
    identity: Identity<'_>,
    index: usize,
) -> Identity<'b> {
    // A plain identity is at most 64 bytes, a hashed one 33.
    let id = identity.as_bytes();
    let mut len = id.len().min(crate::key::MAX_PLAIN_IDENTITY);
    buffer[..len].copy_from_slice(&id[..len]);
    buffer[len] = b'#';
    len += 1;
    // MAX_SPREAD is 64: at most two digits.
    let index = index % 100;
    if index >= 10 {
        buffer[len] = b'0' + (index / 10) as u8;
        len += 1;
    }
    buffer[len] = b'0' + (index % 10) as u8;
    len += 1;
    // Only ASCII was written.
    Identity::internal(std::str::from_utf8(&buffer[..len]).unwrap_or("#"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::RedisConfig;
    use crate::policy::Window;

    /// glibc's per-thread cache serves blocks of up to this many bytes; a larger one goes
    /// through the arena (`_int_malloc`, `_int_free`: hundreds of instructions more a
    /// decision, `docs/Performance.md`).
    const PER_THREAD_CACHE: usize = 1032;

    /// A decision that goes to Redis is boxed (`decide_remotely`), a spread policy's too: each
    /// box stays small enough for the allocator's per-thread cache. An `async fn` that keeps
    /// its arguments, or a buffer kept across the round trip, grows it past that.
    #[test]
    fn a_redis_decisions_box_fits_the_allocators_per_thread_cache() {
        for spread in [1, 4] {
            let policy = Policy::new("sized", [Window::new(100, Duration::from_secs(60))])
                .with_algorithm(crate::policy::Algorithm::TokenBucket)
                .with_spread(spread);
            let config = Config::with_policy(policy)
                .with_redis_config(RedisConfig::new(["redis://127.0.0.1:1"]));
            let limiter = RateLimiter::new_lazy(config).expect("a limiter, not connected yet");
            let state = limiter.inner.policies.default_policy();
            let remote = limiter.decide_remotely(state, Identity::new(b"client"), 1, true);
            let size = std::mem::size_of_val(&*remote);
            assert!(
                size <= PER_THREAD_CACHE,
                "spread {spread}: a Redis decision's box holds {size} bytes, more than the \
                 {PER_THREAD_CACHE} the allocator's per-thread cache serves"
            );
        }
    }
}
