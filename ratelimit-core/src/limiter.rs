//! [`RateLimiter`]: the public entry point.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::Instrument;

use crate::backend::{MemoryBackend, RedisBackend};
use crate::breaker::{Admission, BreakerState, BreakerStats, CircuitBreaker};
use crate::cache::{CacheStats, DecisionCache, Reservation};
use crate::clock::{Clock, SystemClock};
use crate::config::CacheConfig;
use crate::config::Config;
use crate::decision::{Decision, Source};
use crate::error::Error;
use crate::fallback::Fallback;
use crate::hot_keys::{HotKey, HotKeys};
use crate::invariants::{self, Invariant, Invariants};
use crate::key::{Identity, KeyBuilder, MAX_KEY, store_key};
use crate::metrics::{Metrics, Operation, error_kind};
use crate::policy::Policy;
use crate::policy_state::{PolicyState, PolicyTable};

/// The bound on the memory of the hot-key shield (denials of hot keys, when the cache is off):
/// it holds at most `hot_keys.capacity` keys at a time in practice.
const SHIELD_BYTES: u64 = 256 * 1024;

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

/// Redis, with what protects the service from it: the cache, the breaker, the fallback.
#[derive(Debug)]
struct Guarded {
    redis: RedisBackend,
    clock: Arc<dyn Clock>,
    cache: Option<DecisionCache>,
    /// Whether every denial is cached (the cache is on), or only hot keys' (the shield).
    cache_every_denial: bool,
    hot_keys: Arc<HotKeys>,
    breaker: CircuitBreaker,
    fallback: Fallback,
    metrics: Metrics,
    /// `evicted_keys` of each primary when this limiter first read it: evictions since then
    /// are counts lost while it ran.
    evictions_seen: std::sync::Mutex<std::collections::HashMap<String, u64>>,
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
}

impl RateLimiter {
    /// Validates `config`, builds the limiter and, with Redis, connects and loads the scripts:
    /// an unreachable Redis is an error here.
    pub async fn new(config: Config) -> Result<Self, Error> {
        let limiter = Self::new_lazy(config)?;
        if let Backend::Redis(guarded) = limiter.inner.backend.as_ref() {
            guarded.redis.connect().await?;
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
            if let Backend::Redis(guarded) = self.inner.backend.as_ref()
                && let Some(cache) = &guarded.cache
            {
                cache.clear();
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
            Some(redis) => {
                let fallback = config.fallback();
                let cache_every_denial = config.cache().enabled();
                let cache = if cache_every_denial {
                    Some(DecisionCache::new(config.cache()))
                } else {
                    hot_keys.shields().then(|| {
                        DecisionCache::new(&CacheConfig::new(
                            std::time::Duration::from_millis(500),
                            SHIELD_BYTES,
                        ))
                    })
                };
                Backend::Redis(Box::new(Guarded {
                    redis: RedisBackend::new(redis, KeyBuilder::new(config.prefix()))?,
                    cache,
                    cache_every_denial,
                    hot_keys: hot_keys.clone(),
                    breaker: CircuitBreaker::new(
                        fallback.circuit_breaker_threshold(),
                        fallback.cool_down(),
                    ),
                    fallback: Fallback::new(
                        fallback.mode(),
                        clock.clone(),
                        config.memory().max_keys(),
                        fallback.cool_down(),
                    ),
                    clock,
                    metrics: metrics.clone(),
                    evictions_seen: Default::default(),
                }))
            }
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
                Backend::Redis(guarded) => {
                    let ping = guarded.redis.ping().await;
                    let stuck = guarded.redis.stuck_keys().await;
                    let keeps_counts = guarded.keeps_counts().await;
                    (
                        Invariant {
                            name: "redis_healthy",
                            ok: ping.is_ok(),
                            detail: ping
                                .map_or_else(|e| e.to_string(), |()| "PING answered".into()),
                        },
                        Invariant {
                            name: "no_stuck_keys",
                            ok: matches!(&stuck, Ok(keys) if keys.is_empty()),
                            detail: match stuck {
                                Ok(keys) => format!("{} keys without a TTL", keys.len()),
                                Err(e) => format!("scan failed: {e}"),
                            },
                        },
                        invariants::breaker(Some(guarded.breaker.state())),
                        keeps_counts,
                    )
                }
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
            Backend::Redis(guarded) => LimiterStats {
                breaker: Some(guarded.breaker.state()),
                breaker_transitions: guarded.breaker.stats(),
                fallback_decisions: guarded.fallback.events(),
                cache: guarded
                    .cache
                    .as_ref()
                    .map(DecisionCache::stats)
                    .unwrap_or_default(),
                cache_bytes: guarded.cache.as_ref().map_or(0, DecisionCache::weight),
                memory_keys: guarded.fallback.local_keys(),
            },
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
        self.evaluate(state, key.as_ref(), state.policy().cost(), true)
            .await
    }

    /// Takes `n` permits from `key`'s quota if all of them fit, none otherwise.
    ///
    /// `n` above the smallest window's limit could never fit and is an error.
    pub async fn allow_n(&self, key: impl AsRef<[u8]>, n: u64) -> Result<Decision, Error> {
        let state = self.inner.policies.default_policy();
        self.evaluate(state, key.as_ref(), n, true).await
    }

    /// What `allow` would answer, without taking anything; `remaining` is what is left now.
    pub async fn peek(&self, key: impl AsRef<[u8]>) -> Result<Decision, Error> {
        let state = self.inner.policies.default_policy();
        self.evaluate(state, key.as_ref(), state.policy().cost(), false)
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
        let state = self.inner.policies.get(policy);
        self.evaluate(&state, key.as_ref(), n, true).await
    }

    /// `peek` under another policy.
    pub async fn peek_with(
        &self,
        policy: &Policy,
        key: impl AsRef<[u8]>,
    ) -> Result<Decision, Error> {
        policy.validate()?;
        let state = self.inner.policies.get(policy);
        self.evaluate(&state, key.as_ref(), policy.cost(), false)
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
                guarded.fallback.reset(policy, identity);
                if let Some(cache) = &guarded.cache {
                    let mut buffer = [0u8; MAX_KEY];
                    cache.forget(store_key(&mut buffer, policy, identity));
                }
                let started = std::time::Instant::now();
                let result = guarded.redis.reset(policy, identity).await;
                guarded
                    .metrics
                    .redis_latency(Operation::reset, started.elapsed());
                if let Err(error) = &result {
                    guarded.metrics.redis_error(error_kind(error));
                }
                result?;
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
    ) -> Result<Decision, Error> {
        let policy = state.policy();
        let limit = state.largest_cost();
        if cost > limit {
            return Err(Error::CostAboveLimit { cost, limit });
        }
        let identity = Identity::new(key);
        // One span a decision; building it costs nothing when no subscriber wants it.
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
        let started = (!span.is_disabled()).then(|| {
            span.record("key_hash", identity.digest().as_str());
            std::time::Instant::now()
        });
        // The backend match is written out here and in `decide_spread` on purpose: one shared
        // `async fn` for it makes the in-memory path's future nest and be moved, measured at
        // +80 ns a decision (143 -> 225 ns in the token-bucket bench).
        let decision = if policy.spread() > 1 {
            let decide = self.decide_spread(state, identity, cost, consume);
            if started.is_some() {
                decide.instrument(span.clone()).await?
            } else {
                decide.await?
            }
        } else {
            match self.inner.backend.as_ref() {
                Backend::Memory(memory) => {
                    let verdict = memory.evaluate(policy, identity, cost, consume);
                    Decision::from_outcome(verdict.outcome(), policy.windows(), Source::Memory)
                }
                Backend::Redis(guarded) => {
                    let decide = guarded.evaluate(policy, identity, cost, consume);
                    // Wrapping the future copies it: only when someone listens.
                    if started.is_some() {
                        decide.instrument(span.clone()).await?
                    } else {
                        decide.await?
                    }
                }
            }
        };
        if let Some(started) = started {
            span.record(
                "result",
                if decision.allowed() {
                    "allowed"
                } else {
                    "denied"
                },
            );
            span.record("source", decision.source().name());
            span.record("latency_us", started.elapsed().as_micros() as u64);
        }
        if consume {
            state.counters().count(&decision);
            self.inner
                .hot_keys
                .record(policy, identity, decision.allowed());
        }
        Ok(decision)
    }
}

impl RateLimiter {
    /// A decision on one sub-counter of a spread policy (see [`Policy::with_spread`]): the
    /// next in turn, then the one after it if the first denies.
    async fn decide_spread(
        &self,
        state: &PolicyState,
        identity: Identity<'_>,
        cost: u64,
        consume: bool,
    ) -> Result<Decision, Error> {
        let policy = state.policy();
        let parts = state.parts();
        let n = parts.len().max(1);
        let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        let first = usize::try_from(turn % n as u64).unwrap_or(0);
        let mut denied: Option<Decision> = None;
        for index in [first, (first + 1) % n] {
            let Some(part) = parts.get(index) else {
                continue;
            };
            let mut buffer = [0u8; PART_IDENTITY];
            let part_identity = part_identity(&mut buffer, identity, index);
            let decision = match self.inner.backend.as_ref() {
                Backend::Memory(memory) => {
                    let verdict = memory.evaluate(part, part_identity, cost, consume);
                    Decision::from_outcome(verdict.outcome(), part.windows(), Source::Memory)
                }
                Backend::Redis(guarded) => {
                    guarded.evaluate(part, part_identity, cost, consume).await?
                }
            }
            .of_whole(policy.windows(), n as u64);
            if decision.allowed() {
                return Ok(decision);
            }
            // Both denied: the one that frees up first.
            denied = Some(match denied {
                Some(earlier) if earlier.retry_after() <= decision.retry_after() => earlier,
                _ => decision,
            });
        }
        denied.ok_or(Error::CostAboveLimit {
            cost,
            limit: policy.smallest_limit(),
        })
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
    let id = identity.as_str().as_bytes();
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

impl Guarded {
    /// The `redis_keeps_counts` invariant: every primary's eviction policy cannot pick our
    /// keys, and none evicted a key since this limiter first looked. Also publishes the
    /// evictions seen as `ratelimiter_redis_evicted_keys`.
    async fn keeps_counts(&self) -> Invariant {
        let name = "redis_keeps_counts";
        let nodes = match self.redis.evictions().await {
            Ok(nodes) => nodes,
            Err(error) => {
                return Invariant {
                    name,
                    ok: false,
                    detail: format!("unknown: {error}"),
                };
            }
        };
        let mut problems = Vec::new();
        let mut evicted_since_start = 0;
        {
            let mut seen = self
                .evictions_seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for node in &nodes {
                let at = if node.node.is_empty() {
                    "redis".to_owned()
                } else {
                    node.node.clone()
                };
                match node.may_evict() {
                    Some(false) => {}
                    Some(true) => problems.push(format!(
                        "{at}: maxmemory-policy {} with maxmemory {} can evict the limiter's keys (set noeviction)",
                        node.policy.as_deref().unwrap_or("?"),
                        node.maxmemory.unwrap_or(0),
                    )),
                    None => problems.push(format!(
                        "{at}: eviction policy unknown (CONFIG GET refused): check that it is noeviction"
                    )),
                }
                if let Some(evicted) = node.evicted_keys {
                    let baseline = *seen.entry(node.node.clone()).or_insert(evicted);
                    let since = evicted.saturating_sub(baseline);
                    evicted_since_start += since;
                    if since > 0 {
                        problems.push(format!(
                            "{at}: {since} keys evicted since the limiter started"
                        ));
                    }
                }
            }
        }
        self.metrics.redis_evicted_keys(evicted_since_start);
        Invariant {
            name,
            ok: problems.is_empty(),
            detail: if problems.is_empty() {
                format!(
                    "{} primar{} keep every key (noeviction or no maxmemory), none evicted",
                    nodes.len(),
                    if nodes.len() == 1 { "y" } else { "ies" }
                )
            } else {
                problems.join("; ")
            },
        }
    }

    /// Cache, then breaker, then Redis; the fallback when Redis cannot answer.
    async fn evaluate(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        cost: u64,
        consume: bool,
    ) -> Result<Decision, Error> {
        let mut buffer = [0u8; MAX_KEY];
        let key = store_key(&mut buffer, policy, identity);
        if let Some(decision) = self.cached(key, cost, consume, self.clock.now_micros()) {
            return Ok(decision);
        }
        // Wait behind this process's own burst first: that queue is not Redis failing, so it
        // neither counts against the timeout nor reaches the breaker. The breaker is asked
        // once the call can really be sent, so a breaker that opened meanwhile still spares
        // Redis the queued calls.
        let _turn = self.redis.turn().await;
        // When the call is sent: a cached answer is anchored here, not when the reply came
        // back, so it never outlives what Redis said by the round trip.
        let sent = self.clock.now_micros();
        // The calls ahead in the queue may have left a denial for this key: Redis need not
        // hear the rest of a burst on a spent key.
        if let Some(decision) = self.cached(key, cost, consume, sent) {
            return Ok(decision);
        }
        let admission = self.breaker.admit(sent);
        if admission == Admission::Reject {
            return Ok(self.fall_back(policy, identity, cost, consume));
        }
        // A probe whose caller gives up (the future is dropped) must still end the half-open
        // state, or the breaker never lets another call through.
        let probe = ProbeGuard {
            guarded: (admission == Admission::Probe).then_some(self),
        };
        let operation = if consume {
            Operation::allow
        } else {
            Operation::peek
        };
        let started = std::time::Instant::now();
        let reserve = match &self.cache {
            Some(cache) => cache.reservation(key, cost, consume, policy),
            None => Reservation::Exact,
        };
        let asked = match reserve {
            Reservation::Exact => cost,
            Reservation::Lease(size) => size,
        };
        let in_flight = consume.then(|| self.fallback.sent(policy, identity, asked));
        let mut granted = asked;
        let mut result = self.redis.evaluate(policy, identity, asked, consume).await;
        if asked > cost && matches!(&result, Ok(outcome) if !outcome.allowed) {
            // The lease did not fit; the request itself may.
            granted = cost;
            result = self.redis.evaluate(policy, identity, cost, consume).await;
        }
        self.metrics.redis_latency(operation, started.elapsed());
        probe.disarm();
        match result {
            Ok(outcome) => {
                self.breaker.on_success();
                self.metrics.set_circuit_state(self.breaker.state());
                let granted = if outcome.allowed { granted } else { cost };
                if let Some(in_flight) = in_flight
                    && !in_flight.answered(if outcome.allowed { granted } else { 0 })
                    && outcome.allowed
                {
                    // Back from an outage: this instance's fallback admitted the rest of the
                    // limit, which Redis never heard of. One instance never passes the limit
                    // across the switch, in either direction; the local count answers.
                    return Ok(self.fall_back(policy, identity, cost, false));
                }
                let mut decision = Decision::from_outcome(outcome, policy.windows(), Source::Redis);
                if granted > cost {
                    // Permits reserved for this instance are still the client's to spend.
                    decision = decision.with_remaining(decision.remaining() + granted - cost);
                }
                if let Some(cache) = &self.cache
                    && (self.cache_every_denial
                        || decision.allowed()
                        || self.hot_keys.is_hot(policy, identity))
                {
                    cache.record(key, cost, granted, &decision, sent);
                }
                Ok(decision)
            }
            Err(error) if error.is_backend_failure() => {
                // No answer: whatever Redis did, this caller's answer comes from the fallback.
                drop(in_flight);
                tracing::debug!(%error, "redis failed; fallback answers");
                self.metrics.redis_error(error_kind(&error));
                self.breaker.on_failure(self.clock.now_micros());
                self.metrics.set_circuit_state(self.breaker.state());
                Ok(self.fall_back(policy, identity, cost, consume))
            }
            Err(error) => Err(error),
        }
    }

    /// The cache's answer for `key` at `now_us`, counted, when it has one.
    fn cached(&self, key: &[u8], cost: u64, consume: bool, now_us: u64) -> Option<Decision> {
        let decision = self.cache.as_ref()?.lookup(key, cost, consume, now_us)?;
        self.metrics.cache_hit();
        Some(decision)
    }

    fn fall_back(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        cost: u64,
        consume: bool,
    ) -> Decision {
        self.metrics.fallback(self.fallback.mode());
        self.fallback.decide(policy, identity, cost, consume)
    }
}

/// Records a failed probe if dropped before [`ProbeGuard::disarm`].
struct ProbeGuard<'a> {
    guarded: Option<&'a Guarded>,
}

impl ProbeGuard<'_> {
    fn disarm(mut self) {
        self.guarded = None;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(guarded) = self.guarded {
            guarded.breaker.on_failure(guarded.clock.now_micros());
        }
    }
}
