//! Prometheus metrics of a limiter, with `prometheus-client`.
//!
//! | family | labels | meaning |
//! | --- | --- | --- |
//! | `ratelimiter_requests_total` | `result` (allowed, denied), `window` (`1m`), `rule` | decisions, by the binding window; `rule` is the policy's name (the rule's name under rules, `default` otherwise) |
//! | `ratelimiter_redis_latency_seconds` | `operation` (allow, peek, reset) | Redis round trips, histogram |
//! | `ratelimiter_cache_hits_total` | | decisions answered by the local cache |
//! | `ratelimiter_fallback_events_total` | `mode` (open, closed, local) | decisions made by the fallback |
//! | `ratelimiter_circuit_state` | `state` (closed, open, half_open) | 1 for the current state, 0 otherwise |
//! | `ratelimiter_redis_errors_total` | `kind` (timeout, connection, server, other) | failed Redis calls |
//! | `ratelimiter_config_reloads_total` | `result` (ok, failed) | configuration reloads (counted by the application that reloads) |
//! | `ratelimiter_invariant_ok` | `invariant` | 1 when the invariant held at its last check |
//! | `ratelimiter_redis_evicted_keys` | | keys the Redis primaries evicted since the limiter started: each a lost count |
//! | `ratelimiter_hot_keys` | | keys over the hot-key threshold (see [`hot_keys`](crate::hot_keys)) |
//! | `ratelimiter_hot_key_share` | `rank` (1 to 5) | share of recent decisions of the n-th heaviest key |
//!
//! Every label value comes from configuration or a fixed set, never from a request. Recording
//! a decision allocates nothing: label sets are small `Copy` values and a shared policy name.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::breaker::BreakerState;
use crate::decision::{Decision, FallbackMode};
use crate::policy::{Policy, duration_label};

/// `allowed` or `denied`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Outcome {
    allowed,
    denied,
}

/// A window's length, written like configuration writes it (`1m`) when encoded.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct WindowLabel(Duration);

impl EncodeLabelValue for WindowLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&duration_label(self.0))
    }
}

/// A policy or rule name from configuration.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct NameLabel(Arc<str>);

impl EncodeLabelValue for NameLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    result: Outcome,
    window: WindowLabel,
    rule: NameLabel,
}

/// The Redis operation timed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Operation {
    allow,
    peek,
    reset,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: Operation,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum ModeValue {
    open,
    closed,
    local,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: ModeValue,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum StateValue {
    closed,
    open,
    half_open,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: StateValue,
}

/// Why a Redis call failed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum ErrorKind {
    timeout,
    connection,
    server,
    other,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: ErrorKind,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum ReloadValue {
    ok,
    failed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadValue,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvariantLabels {
    invariant: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RankLabels {
    rank: &'static str,
}

/// The ranks `ratelimiter_hot_key_share` reports.
const RANKS: [&str; 5] = ["1", "2", "3", "4", "5"];

type ShareGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

type LatencyFamily = Family<OperationLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// The metric families of one limiter. Cheap to clone: clones share the same series.
///
/// ```
/// # async fn demo() -> Result<(), ratelimit_core::Error> {
/// use std::time::Duration;
/// use prometheus_client::registry::Registry;
/// use ratelimit_core::{Config, RateLimiter};
///
/// let limiter = RateLimiter::new(Config::new(10, Duration::from_secs(60))).await?;
/// let mut registry = Registry::default();
/// limiter.metrics().register(&mut registry);
/// limiter.allow("user:1").await?;
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains(r#"ratelimiter_requests_total{result="allowed",window="1m",rule="default"} 1"#));
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    redis_latency: LatencyFamily,
    /// The series of `redis_latency` for allow, peek and reset, looked up once: a decision
    /// observes its round trip without a look-up in the family.
    latency_of: [Histogram; 3],
    cache_hits: Counter,
    fallback_events: Family<ModeLabels, Counter>,
    circuit_state: Family<StateLabels, Gauge>,
    /// The series of `circuit_state` for closed, open and half-open, looked up once.
    state_of: [Gauge; 3],
    redis_errors: Family<ErrorLabels, Counter>,
    config_reloads: Family<ReloadLabels, Counter>,
    invariants: Family<InvariantLabels, Gauge>,
    hot_keys: Gauge,
    hot_key_share: Family<RankLabels, ShareGauge>,
    redis_evicted_keys: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh families, registered nowhere yet.
    pub fn new() -> Self {
        let redis_latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let latency_of = [Operation::allow, Operation::peek, Operation::reset].map(|operation| {
            redis_latency
                .get_or_create(&OperationLabels { operation })
                .clone()
        });
        let circuit_state = Family::<StateLabels, Gauge>::default();
        let state_of = [StateValue::closed, StateValue::open, StateValue::half_open]
            .map(|state| circuit_state.get_or_create(&StateLabels { state }).clone());
        let metrics = Self {
            requests: Family::default(),
            redis_latency,
            latency_of,
            cache_hits: Counter::default(),
            fallback_events: Family::default(),
            circuit_state,
            state_of,
            redis_errors: Family::default(),
            config_reloads: Family::default(),
            invariants: Family::default(),
            hot_keys: Gauge::default(),
            hot_key_share: Family::default(),
            redis_evicted_keys: Gauge::default(),
        };
        metrics.set_circuit_state(BreakerState::Closed);
        metrics.hot_keys(0, std::iter::empty());
        // Every series whose labels are known in advance exists from the start, at zero:
        // `rate()` and dashboards need a series before its first event (the latencies' and
        // the circuit states' were made above).
        for mode in [ModeValue::open, ModeValue::closed, ModeValue::local] {
            drop(metrics.fallback_events.get_or_create(&ModeLabels { mode }));
        }
        for kind in [
            ErrorKind::timeout,
            ErrorKind::connection,
            ErrorKind::server,
            ErrorKind::other,
        ] {
            drop(metrics.redis_errors.get_or_create(&ErrorLabels { kind }));
        }
        for result in [ReloadValue::ok, ReloadValue::failed] {
            drop(
                metrics
                    .config_reloads
                    .get_or_create(&ReloadLabels { result }),
            );
        }
        metrics
    }

    /// The request counters of `policy`'s windows, looked up in the families once. Creates
    /// the series (each window, allowed and denied) at zero, so they exist before the first
    /// decision.
    pub(crate) fn decision_counters(&self, policy: &Policy) -> DecisionCounters {
        DecisionCounters(
            (0..policy.windows().len())
                .map(|index| {
                    [true, false].map(|allowed| self.request_counter(policy, index, allowed))
                })
                .collect(),
        )
    }

    /// Registers every family in `registry` (yours, or a fresh one).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ratelimiter_requests",
            "Rate-limit decisions by result, binding window and rule",
            self.requests.clone(),
        );
        registry.register(
            "ratelimiter_redis_latency_seconds",
            "Latency of Redis calls by operation",
            self.redis_latency.clone(),
        );
        registry.register(
            "ratelimiter_cache_hits",
            "Decisions answered by the local cache",
            self.cache_hits.clone(),
        );
        registry.register(
            "ratelimiter_fallback_events",
            "Decisions made by the fallback while Redis could not answer",
            self.fallback_events.clone(),
        );
        registry.register(
            "ratelimiter_circuit_state",
            "Circuit breaker state: 1 for the current state",
            self.circuit_state.clone(),
        );
        registry.register(
            "ratelimiter_redis_errors",
            "Failed Redis calls by kind",
            self.redis_errors.clone(),
        );
        registry.register(
            "ratelimiter_config_reloads",
            "Configuration reloads by result",
            self.config_reloads.clone(),
        );
        registry.register(
            "ratelimiter_invariant_ok",
            "Whether each invariant held at its last check (1) or not (0)",
            self.invariants.clone(),
        );
        registry.register(
            "ratelimiter_redis_evicted_keys",
            "Keys the Redis primaries evicted since the limiter started: counts lost (set maxmemory-policy noeviction)",
            self.redis_evicted_keys.clone(),
        );
        registry.register(
            "ratelimiter_hot_keys",
            "Keys whose share of recent decisions is over the hot-key threshold",
            self.hot_keys.clone(),
        );
        registry.register(
            "ratelimiter_hot_key_share",
            "Share of recent decisions of the n-th heaviest key (the key itself is never a label)",
            self.hot_key_share.clone(),
        );
    }

    /// Keys the Redis primaries evicted since the limiter started (each a count lost).
    pub(crate) fn redis_evicted_keys(&self, evicted: u64) {
        self.redis_evicted_keys
            .set(i64::try_from(evicted).unwrap_or(i64::MAX));
    }

    /// Publishes the hot-key detector's view: how many keys are hot, and the shares of the
    /// heaviest, heaviest first.
    pub(crate) fn hot_keys(&self, hot: usize, shares: impl Iterator<Item = f64>) {
        self.hot_keys.set(i64::try_from(hot).unwrap_or(i64::MAX));
        let mut shares = shares;
        for rank in RANKS {
            self.hot_key_share
                .get_or_create(&RankLabels { rank })
                .set(shares.next().unwrap_or(0.0));
        }
    }

    pub(crate) fn invariants(&self, report: &crate::Invariants) {
        for check in report.iter() {
            self.invariants
                .get_or_create(&InvariantLabels {
                    invariant: check.name,
                })
                .set(i64::from(check.ok));
        }
    }

    fn request_counter(&self, policy: &Policy, window_index: usize, allowed: bool) -> Counter {
        let window = policy
            .windows()
            .get(window_index)
            .map_or(Duration::ZERO, |w| w.duration());
        let labels = RequestLabels {
            result: if allowed {
                Outcome::allowed
            } else {
                Outcome::denied
            },
            window: WindowLabel(window),
            rule: NameLabel(policy.shared_name().clone()),
        };
        self.requests.get_or_create(&labels).clone()
    }

    pub(crate) fn redis_latency(&self, operation: Operation, latency: Duration) {
        self.latency_of[operation as usize].observe(latency.as_secs_f64());
    }

    pub(crate) fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub(crate) fn fallback(&self, mode: FallbackMode) {
        let mode = match mode {
            FallbackMode::Open => ModeValue::open,
            FallbackMode::Closed => ModeValue::closed,
            FallbackMode::Local => ModeValue::local,
        };
        self.fallback_events
            .get_or_create(&ModeLabels { mode })
            .inc();
    }

    pub(crate) fn set_circuit_state(&self, state: BreakerState) {
        let [closed, open, half_open] = &self.state_of;
        closed.set(i64::from(state == BreakerState::Closed));
        open.set(i64::from(state == BreakerState::Open));
        half_open.set(i64::from(state == BreakerState::HalfOpen));
    }

    pub(crate) fn redis_error(&self, kind: ErrorKind) {
        self.redis_errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// Counts a configuration reload, for applications that reload (the limiter itself does not
    /// read files).
    pub fn config_reload(&self, ok: bool) {
        let result = if ok {
            ReloadValue::ok
        } else {
            ReloadValue::failed
        };
        self.config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }
}

/// A policy's request counters, resolved from one limiter's families when the limiter is
/// built (see [`Metrics::decision_counters`]), so counting a decision is one atomic increment:
/// the label set is never hashed on the hot path.
#[derive(Debug)]
pub(crate) struct DecisionCounters(Box<[[Counter; 2]]>);

impl DecisionCounters {
    /// Counts `decision`, made under the policy these counters were resolved for.
    pub(crate) fn count(&self, decision: &Decision) {
        if let Some(pair) = self.0.get(decision.window_index()) {
            pair[usize::from(!decision.allowed())].inc();
        }
    }
}

/// The label of a failed Redis call, for `ratelimiter_redis_errors_total`.
pub(crate) fn error_kind(error: &crate::Error) -> ErrorKind {
    match error.kind() {
        crate::ErrorKind::Timeout => ErrorKind::timeout,
        crate::ErrorKind::Connection => ErrorKind::connection,
        crate::ErrorKind::Server => ErrorKind::server,
        _ => ErrorKind::other,
    }
}
