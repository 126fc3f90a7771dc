//! The Redis guard pipeline: what stands between a decision and Redis.
//!
//! `Guarded` wraps the Redis backend with what protects the service from it. A decision is
//! answered by the local cache when it can be (a denial or a leased permit); otherwise it
//! waits for its turn behind this process's own burst, asks the circuit breaker, and calls
//! Redis under the backend's timeout. When Redis cannot answer (breaker open, timeout,
//! connection lost) the fallback answers, and the failure is counted. A `ProbeGuard` ends
//! the breaker's half-open state even when the caller of the probe gives up. The limiter
//! (`limiter.rs`) only chooses between this and the in-memory backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::backend::RedisBackend;
use crate::breaker::{Admission, BreakerState, BreakerStats, CircuitBreaker};
use crate::cache::{CacheStats, DecisionCache, Reservation};
use crate::clock::Clock;
use crate::config::{CacheConfig, Config, RedisConfig};
use crate::decision::{Decision, Source};
use crate::error::Error;
use crate::fallback::Fallback;
use crate::hot_keys::HotKeys;
use crate::invariants::{self, Invariant};
use crate::key::{Identity, KeyBuilder};
use crate::metrics::{Metrics, Operation, error_kind};
use crate::policy::Policy;

/// The bound on the memory of the hot-key shield (denials of hot keys, when the cache is off):
/// it holds at most `hot_keys.capacity` keys at a time in practice.
const SHIELD_BYTES: u64 = 256 * 1024;

/// Redis, with what protects the service from it: the cache, the breaker, the fallback.
#[derive(Debug)]
pub(crate) struct Guarded {
    redis: RedisBackend,
    clock: Arc<dyn Clock>,
    cache: Option<DecisionCache>,
    /// Whether every denial is cached (the cache is on), or only hot keys' (the shield).
    cache_every_denial: bool,
    hot_keys: Arc<HotKeys>,
    breaker: CircuitBreaker,
    fallback: Fallback,
    metrics: Metrics,
    /// Times Redis calls for the latency metric: two reads of the CPU's time-stamp counter a
    /// call (where it is invariant), not two `clock_gettime` calls. Calibrated here, not by
    /// the first call.
    stopwatch: quanta::Clock,
    /// `evicted_keys` of each primary when this limiter first read it: evictions since then
    /// are counts lost while it ran.
    evictions_seen: Mutex<HashMap<String, u64>>,
}

impl Guarded {
    /// Redis at `redis`, guarded as `config`'s `cache`, `fallback`, `memory` and `hot_keys`
    /// sections say. Opens no connection yet.
    pub(crate) fn new(
        redis: &RedisConfig,
        config: &Config,
        clock: Arc<dyn Clock>,
        hot_keys: Arc<HotKeys>,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        let fallback = config.fallback();
        let cache_every_denial = config.cache().enabled();
        let cache = if cache_every_denial {
            Some(DecisionCache::new(config.cache()))
        } else {
            hot_keys.shields().then(|| {
                DecisionCache::new(&CacheConfig::new(Duration::from_millis(500), SHIELD_BYTES))
            })
        };
        Ok(Self {
            redis: RedisBackend::new(redis, KeyBuilder::new(config.prefix()))?,
            cache,
            cache_every_denial,
            hot_keys,
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
            stopwatch: quanta::Clock::new(),
            metrics,
            evictions_seen: Mutex::default(),
        })
    }

    /// Connects and loads the scripts: an unreachable Redis is an error here.
    pub(crate) async fn connect(&self) -> Result<(), Error> {
        self.redis.connect().await
    }

    /// Empties the local cache (its denials and leases were decided under limits that changed).
    pub(crate) fn clear_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    /// The breaker's state.
    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The breaker's transitions so far.
    pub(crate) fn breaker_stats(&self) -> BreakerStats {
        self.breaker.stats()
    }

    /// Decisions the fallback made so far.
    pub(crate) fn fallback_decisions(&self) -> u64 {
        self.fallback.events()
    }

    /// What the cache answered (zero without a cache).
    pub(crate) fn cache_stats(&self) -> CacheStats {
        self.cache
            .as_ref()
            .map(DecisionCache::stats)
            .unwrap_or_default()
    }

    /// Bytes the cache holds, by its own weighing.
    pub(crate) fn cache_bytes(&self) -> u64 {
        self.cache.as_ref().map_or(0, DecisionCache::weight)
    }

    /// Pipelines of several calls sent so far, and the calls they carried.
    pub(crate) fn pipelines(&self) -> (u64, u64) {
        self.redis.pipelines()
    }

    /// Batches of calls on one key decided by one script call, and the calls they decided.
    pub(crate) fn batches(&self) -> (u64, u64) {
        self.redis.batches()
    }

    /// Keys the `local` fallback tracks.
    pub(crate) fn local_keys(&self) -> usize {
        self.fallback.local_keys()
    }

    /// The invariants that ask Redis: `redis_healthy`, `no_stuck_keys`, the breaker's, and
    /// `redis_keeps_counts`.
    pub(crate) async fn health(&self) -> (Invariant, Invariant, Invariant, Invariant) {
        let ping = self.redis.ping().await;
        let stuck = self.redis.stuck_keys().await;
        let keeps_counts = self.keeps_counts().await;
        (
            Invariant {
                name: "redis_healthy",
                ok: ping.is_ok(),
                detail: ping.map_or_else(|e| e.to_string(), |()| "PING answered".into()),
            },
            Invariant {
                name: "no_stuck_keys",
                ok: matches!(&stuck, Ok(keys) if keys.is_empty()),
                detail: match stuck {
                    Ok(keys) => format!("{} keys without a TTL", keys.len()),
                    Err(e) => format!("scan failed: {e}"),
                },
            },
            invariants::breaker(Some(self.breaker.state())),
            keeps_counts,
        )
    }

    /// The time since `started`, a reading of [`Self::stopwatch`].
    fn elapsed(&self, started: u64) -> Duration {
        self.stopwatch.delta(started, self.stopwatch.raw())
    }

    /// Forgets `identity`'s usage under `policy`: in Redis, in the fallback and in the cache.
    pub(crate) async fn reset(&self, policy: &Policy, identity: Identity<'_>) -> Result<(), Error> {
        self.fallback.reset(policy, identity);
        if let Some(cache) = &self.cache {
            cache.with_key(policy, identity, |key| cache.forget(key));
        }
        let started = self.stopwatch.raw();
        let result = self.redis.reset(policy, identity).await;
        self.metrics
            .redis_latency(Operation::reset, self.elapsed(started));
        if let Err(error) = &result {
            self.metrics.redis_error(error_kind(error));
        }
        result
    }

    /// The `redis_keeps_counts` invariant: every primary's eviction policy cannot pick our
    /// keys, and none evicted a key since this limiter first looked. Also publishes the
    /// evictions seen as `ratelimiter_redis_evicted_keys`.
    pub(crate) async fn keeps_counts(&self) -> Invariant {
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
                .unwrap_or_else(PoisonError::into_inner);
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

    /// A decision once the cache had no answer ([`Self::cached_now`] returned `None`): a turn,
    /// the cache again (the calls ahead may have left a denial), the breaker, Redis; the
    /// fallback when Redis cannot answer.
    ///
    /// Not an `async fn`, which would keep a copy of every argument for its whole life; and no
    /// key is kept across the round trip (the cache finds its entries by the policy's number).
    /// A decision's future is boxed (`RateLimiter::decide_remotely`), and this keeps it small
    /// enough for the allocator's per-thread cache (`docs/Performance.md`).
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps a copy of every argument in its future"
    )]
    pub(crate) fn evaluate_missed<'a>(
        &'a self,
        policy: &'a Policy,
        identity: Identity<'a>,
        cost: u64,
        consume: bool,
    ) -> impl Future<Output = Result<Decision, Error>> + Send + 'a {
        async move {
            // Wait behind this process's own burst first: that queue is not Redis failing, so it
            // neither counts against the timeout nor reaches the breaker. The breaker is asked
            // once the call can really be sent, so a breaker that opened meanwhile still spares
            // Redis the queued calls.
            let (_turn, waited) = match self.redis.try_turn() {
                Some(turn) => (Some(turn), false),
                None => (self.redis.turn().await, true),
            };
            // When the call is sent: a cached answer is anchored here, not when the reply came
            // back, so it never outlives what Redis said by the round trip.
            let sent = self.clock.now_micros();
            // The calls ahead in the queue may have left a denial for this key: Redis need not
            // hear the rest of a burst on a spent key. Without a wait, nothing ran since the
            // caller asked the cache (`cached_now`), and the cache is not asked twice.
            if waited && let Some(decision) = self.cached(policy, identity, cost, consume, sent) {
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
            let started = self.stopwatch.raw();
            let reserve = match &self.cache {
                Some(cache) => cache.with_key(policy, identity, |key| {
                    cache.reservation(key, cost, consume, policy)
                }),
                None => Reservation::Exact,
            };
            let asked = match reserve {
                Reservation::Exact => cost,
                Reservation::Lease(size) => size,
            };
            let in_flight = consume.then(|| self.fallback.sent(policy, identity, asked));
            let mut granted = asked;
            // One place awaits Redis, so that the future holds room for one call, not two.
            let result = loop {
                let result = self
                    .redis
                    .evaluate(policy, identity, granted, consume)
                    .await;
                if granted > cost && matches!(&result, Ok(outcome) if !outcome.allowed) {
                    // The lease did not fit; the request itself may.
                    granted = cost;
                    continue;
                }
                break result;
            };
            self.metrics.redis_latency(operation, self.elapsed(started));
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
                    let mut decision =
                        Decision::from_outcome(outcome, policy.windows(), Source::Redis);
                    if granted > cost {
                        // Permits reserved for this instance are still the client's to spend.
                        decision = decision.with_remaining(decision.remaining() + granted - cost);
                    }
                    if let Some(cache) = &self.cache
                        && (self.cache_every_denial
                            || decision.allowed()
                            || self.hot_keys.is_hot(policy, identity))
                    {
                        cache.with_key(policy, identity, |key| {
                            cache.record(key, cost, granted, &decision, sent);
                        });
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
    }

    /// The cache's answer now, counted, when it has one: asked before the future of
    /// [`Self::evaluate_missed`] is built. Allocation-free.
    pub(crate) fn cached_now(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        cost: u64,
        consume: bool,
    ) -> Option<Decision> {
        self.cache.as_ref()?;
        self.cached(policy, identity, cost, consume, self.clock.now_micros())
    }

    /// The cache's answer for `identity` under `policy` at `now_us`, counted, when it has one.
    fn cached(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        cost: u64,
        consume: bool,
        now_us: u64,
    ) -> Option<Decision> {
        let cache = self.cache.as_ref()?;
        let decision = cache.with_key(policy, identity, |key| {
            cache.lookup(key, cost, consume, now_us)
        })?;
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
