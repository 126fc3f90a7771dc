//! Hot keys: the few keys that take a disproportionate share of decisions.
//!
//! One client hammering one key costs a Redis Cluster one node's worth of capacity however many
//! nodes it has, and it is the first thing an operator wants to see. The detector follows a
//! sample of decisions (one in [`HotKeyConfig::sample_every`], chosen at random per thread) with
//! the space-saving algorithm: at most [`HotKeyConfig::capacity`] keys are tracked, a key not
//! tracked replaces the one with the smallest count and inherits that count as its possible
//! over-estimate. Memory is bounded by the capacity whatever the traffic (identities longer
//! than 64 bytes are already hashed to 33), and a decision pays for a thread-local random number
//! unless it is sampled. Counts halve every [`HotKeyConfig::window`], so shares describe recent
//! traffic.
//!
//! A key is *hot* when its guaranteed share of the sampled decisions (its count less its
//! possible over-estimate) reaches [`HotKeyConfig::min_share`]. Hot keys show up in
//! [`RateLimiter::hot_keys`](crate::RateLimiter::hot_keys) (policy, key, digest, share) and,
//! without the key, in the `ratelimiter_hot_keys` and `ratelimiter_hot_key_share{rank}`
//! metrics. With [`HotKeyConfig::shield`], a Redis-backed limiter whose cache is off still
//! answers a hot key's denials locally until they expire (exactly as the cache would), so a
//! client stuck on its limit stops costing Redis a call a request.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

pub use crate::config::HotKeyConfig;

use crate::clock::{Clock, micros};
use crate::key::{Identity, MAX_PLAIN_IDENTITY};
use crate::metrics::Metrics;
use crate::policy::Policy;

/// Decisions needed in a window before a key can be called hot, so a quiet limiter does not
/// call its only client hot after a handful of requests.
const MIN_SAMPLES: u64 = 8;

/// A key the detector follows, as [`RateLimiter::hot_keys`](crate::RateLimiter::hot_keys)
/// reports it. Heaviest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HotKey {
    /// The policy (rule) the decisions were made under.
    pub policy: String,
    /// The identity as the limiter stores it: the client's key when it is short and printable,
    /// `#` and a hash otherwise.
    pub key: String,
    /// A short hash of the key, as logged and traced.
    pub digest: String,
    /// Its share of recent decisions, between 0 and 1 (an upper bound: see `min_share`).
    pub share: f64,
    /// The share it certainly has: `share` less the most the algorithm may over-count.
    pub min_share: f64,
    /// The share of its decisions that were denials.
    pub denied_share: f64,
    /// Whether `min_share` reaches the configured threshold.
    pub hot: bool,
}

/// One tracked key.
#[derive(Debug)]
struct Tracked {
    hash: u64,
    policy: Arc<str>,
    identity: [u8; MAX_PLAIN_IDENTITY],
    identity_len: usize,
    count: u64,
    /// How much of `count` may belong to keys it replaced.
    error: u64,
    denied: u64,
}

impl Tracked {
    fn identity(&self) -> &str {
        std::str::from_utf8(&self.identity[..self.identity_len]).unwrap_or("")
    }

    fn is(&self, hash: u64, policy: &Policy, identity: &str) -> bool {
        self.hash == hash && *self.policy == *policy.name() && self.identity() == identity
    }
}

#[derive(Debug)]
struct Tracker {
    entries: Vec<Tracked>,
    /// Sampled decisions, decayed like the counts.
    total: u64,
    window_started_us: u64,
}

/// The detector of one limiter.
#[derive(Debug)]
pub(crate) struct HotKeys {
    config: HotKeyConfig,
    /// A draw of the sampler below this is followed: one in `sample_every`.
    sample_below: u64,
    hasher: foldhash::quality::RandomState,
    clock: Arc<dyn Clock>,
    tracker: Mutex<Tracker>,
    metrics: Metrics,
}

thread_local! {
    /// xorshift64 state of this thread's sampling.
    static SAMPLER: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut hasher = foldhash::quality::RandomState::default().build_hasher();
    hasher.write_u64(0x9e37_79b9_7f4a_7c15);
    hasher.finish() | 1
}

/// The draw below which a decision is followed, for one in `every` (no division a decision).
fn sample_below(every: u32) -> u64 {
    match every {
        0 | 1 => u64::MAX,
        every => u64::MAX / u64::from(every),
    }
}

/// Whether this decision is one of those followed (a draw below `below`).
#[inline]
fn sampled(below: u64) -> bool {
    if below == u64::MAX {
        return true;
    }
    SAMPLER.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x < below
    })
}

impl HotKeys {
    pub(crate) fn new(config: HotKeyConfig, clock: Arc<dyn Clock>, metrics: Metrics) -> Self {
        let now = clock.now_micros();
        Self {
            tracker: Mutex::new(Tracker {
                entries: Vec::with_capacity(if config.enabled { config.capacity } else { 0 }),
                total: 0,
                window_started_us: now,
            }),
            sample_below: sample_below(config.sample_every),
            config,
            hasher: Default::default(),
            clock,
            metrics,
        }
    }

    /// Whether a hot key's denials should be answered locally.
    pub(crate) fn shields(&self) -> bool {
        self.config.enabled && self.config.shield
    }

    fn hash(&self, policy: &Policy, identity: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        hasher.write(policy.name().as_bytes());
        hasher.write_u8(0);
        hasher.write(identity.as_bytes());
        hasher.finish()
    }

    /// Follows one decision (when sampled). Allocation-free. The draw is made in the caller;
    /// only a sampled decision calls into the tracker.
    #[inline]
    pub(crate) fn record(&self, policy: &Policy, identity: Identity<'_>, allowed: bool) {
        if self.config.enabled && sampled(self.sample_below) {
            self.record_sampled(policy, identity, allowed);
        }
    }

    /// [`Self::record`] of a decision the draw kept.
    #[inline(never)]
    fn record_sampled(&self, policy: &Policy, identity: Identity<'_>, allowed: bool) {
        let identity = identity.as_str();
        let hash = self.hash(policy, identity);
        let now = self.clock.now_micros();
        let mut tracker = self.lock();
        if tracker.decay(now, micros(self.config.window)) {
            self.publish(&tracker);
        }
        tracker.total += 1;
        let denied = u64::from(!allowed);
        if let Some(entry) = tracker
            .entries
            .iter_mut()
            .find(|e| e.is(hash, policy, identity))
        {
            entry.count += 1;
            entry.denied += denied;
            return;
        }
        let mut fresh = Tracked {
            hash,
            policy: policy.shared_name().clone(),
            identity: [0; MAX_PLAIN_IDENTITY],
            identity_len: identity.len().min(MAX_PLAIN_IDENTITY),
            count: 1,
            error: 0,
            denied,
        };
        fresh.identity[..fresh.identity_len]
            .copy_from_slice(&identity.as_bytes()[..fresh.identity_len]);
        if tracker.entries.len() < self.config.capacity {
            tracker.entries.push(fresh);
        } else if let Some(smallest) = tracker.entries.iter_mut().min_by_key(|e| e.count) {
            // Space-saving: the newcomer may have been counted before, as often as the
            // key it replaces at most.
            fresh.count += smallest.count;
            fresh.error = smallest.count;
            *smallest = fresh;
        }
    }

    /// Whether `identity` under `policy` is hot now.
    pub(crate) fn is_hot(&self, policy: &Policy, identity: Identity<'_>) -> bool {
        if !self.config.enabled {
            return false;
        }
        let identity = identity.as_str();
        let hash = self.hash(policy, identity);
        let now = self.clock.now_micros();
        let mut tracker = self.lock();
        tracker.decay(now, micros(self.config.window));
        tracker
            .entries
            .iter()
            .find(|e| e.is(hash, policy, identity))
            .is_some_and(|e| self.is_hot_entry(e, tracker.total))
    }

    fn is_hot_entry(&self, entry: &Tracked, total: u64) -> bool {
        let certain = entry.count - entry.error;
        certain >= MIN_SAMPLES
            && u128::from(certain) * 1_000_000
                >= u128::from(total) * u128::from(self.config.min_share_ppm)
    }

    /// The tracked keys, heaviest first; updates the metrics too.
    pub(crate) fn report(&self) -> Vec<HotKey> {
        let now = self.clock.now_micros();
        let mut tracker = self.lock();
        tracker.decay(now, micros(self.config.window));
        self.publish(&tracker);
        let total = tracker.total.max(1) as f64;
        let mut keys: Vec<HotKey> = tracker
            .entries
            .iter()
            .map(|e| HotKey {
                policy: e.policy.to_string(),
                key: e.identity().to_owned(),
                digest: Identity::new(e.identity().as_bytes())
                    .digest()
                    .as_str()
                    .to_owned(),
                share: e.count as f64 / total,
                min_share: (e.count - e.error) as f64 / total,
                denied_share: e.denied as f64 / e.count.max(1) as f64,
                hot: self.is_hot_entry(e, tracker.total),
            })
            .collect();
        keys.sort_by(|a, b| b.share.total_cmp(&a.share));
        keys
    }

    /// Sets `ratelimiter_hot_keys` and the shares of the heaviest keys.
    fn publish(&self, tracker: &Tracker) {
        let hot = tracker
            .entries
            .iter()
            .filter(|e| self.is_hot_entry(e, tracker.total))
            .count();
        let mut counts: Vec<u64> = tracker.entries.iter().map(|e| e.count).collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let total = tracker.total.max(1) as f64;
        self.metrics
            .hot_keys(hot, counts.iter().map(|&count| count as f64 / total));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        // Counts are plain numbers: a panic elsewhere cannot leave them half-written.
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Tracker {
    /// Halves every count (and the total) for each whole window gone by since the last decay,
    /// and forgets keys that reach zero; whether any window had gone by.
    fn decay(&mut self, now: u64, window_us: u64) -> bool {
        let windows = now.saturating_sub(self.window_started_us) / window_us.max(1);
        if windows == 0 {
            return false;
        }
        let shift = u32::try_from(windows).unwrap_or(u32::MAX).min(63);
        self.total >>= shift;
        for entry in &mut self.entries {
            entry.count >>= shift;
            entry.error >>= shift;
            entry.denied >>= shift;
        }
        self.entries.retain(|e| e.count > 0);
        self.window_started_us += windows.saturating_mul(window_us);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::FakeClock;
    use crate::policy::Window;

    fn detector(config: HotKeyConfig) -> (HotKeys, FakeClock) {
        let clock = FakeClock::new(1_000_000);
        let hot = HotKeys::new(config, Arc::new(clock.clone()), Metrics::new());
        (hot, clock)
    }

    #[test]
    fn finds_the_heavy_key_among_many_with_bounded_memory() {
        let (hot, _) = detector(HotKeyConfig::default().with_sample_every(1));
        let policy = Policy::new("api", [Window::per_minute(10)]);
        // 30% of 100,000 decisions on one key, the rest spread over 10,000 keys.
        for i in 0u64..100_000 {
            let key = if i % 10 < 3 {
                "abuser".to_owned()
            } else {
                format!("user:{}", i % 10_000)
            };
            hot.record(&policy, Identity::new(key.as_bytes()), i % 2 == 0);
        }
        let report = hot.report();
        assert!(report.len() <= 32, "bounded: {} keys tracked", report.len());
        let top = &report[0];
        assert_eq!(top.key, "abuser");
        assert_eq!(top.policy, "api");
        assert!(top.hot);
        assert!(
            (0.29..=0.31).contains(&top.min_share),
            "share of the heavy key: {top:?}"
        );
        assert_eq!(report.iter().filter(|k| k.hot).count(), 1, "{report:?}");
        assert_eq!(top.digest, Identity::new(b"abuser").digest().as_str());
    }

    #[test]
    fn uniform_traffic_has_no_hot_key() {
        let (hot, _) = detector(HotKeyConfig::default().with_sample_every(1));
        let policy = Policy::new("api", [Window::per_minute(10)]);
        for i in 0u64..50_000 {
            let key = format!("user:{}", i % 1_000);
            hot.record(&policy, Identity::new(key.as_bytes()), true);
        }
        assert!(hot.report().iter().all(|k| !k.hot));
        assert!(!hot.is_hot(&policy, Identity::new(b"user:1")));
    }

    #[test]
    fn one_decision_in_sample_every_is_followed() {
        for every in [2_u32, 16, 100] {
            let below = sample_below(every);
            let draws = 100_000 * u64::from(every);
            let followed = (0..draws).filter(|_| sampled(below)).count() as f64;
            // 100,000 expected; a binomial's standard deviation is about 316.
            assert!(
                (98_000.0..=102_000.0).contains(&followed),
                "one in {every}: {followed} of {draws}"
            );
        }
        assert!((0..1000).all(|_| sampled(sample_below(1))));
        assert!((0..1000).all(|_| sampled(sample_below(0))));
    }

    #[test]
    fn sampling_still_finds_it_and_shares_decay() {
        let (hot, clock) = detector(HotKeyConfig::default());
        let policy = Policy::new("api", [Window::per_minute(10)]);
        for i in 0u64..200_000 {
            let key = if i % 4 == 0 {
                "tenant:9".to_owned()
            } else {
                format!("tenant:{}", 100 + i % 5_000)
            };
            hot.record(&policy, Identity::new(key.as_bytes()), true);
        }
        assert!(hot.is_hot(&policy, Identity::new(b"tenant:9")));
        assert!(!hot.is_hot(
            &Policy::new("other", [Window::per_minute(10)]),
            Identity::new(b"tenant:9")
        ));
        // Traffic stops: a window later it is still there, half as heavy; after enough
        // windows nothing is left.
        clock.advance(Duration::from_secs(10));
        assert!(hot.report().len() <= 32);
        assert!(hot.is_hot(&policy, Identity::new(b"tenant:9")));
        clock.advance(Duration::from_secs(400));
        assert!(!hot.is_hot(&policy, Identity::new(b"tenant:9")));
        assert!(hot.report().is_empty());
    }

    #[test]
    fn hostile_keys_are_tracked_hashed_and_bounded() {
        let (hot, _) = detector(HotKeyConfig::default().with_sample_every(1));
        let policy = Policy::new("api", [Window::per_minute(10)]);
        let huge = vec![b'{'; 10_000];
        for _ in 0..100 {
            hot.record(&policy, Identity::new(&huge), false);
        }
        let report = hot.report();
        assert_eq!(report.len(), 1);
        assert!(report[0].key.starts_with('#') && report[0].key.len() <= MAX_PLAIN_IDENTITY);
        assert_eq!(report[0].denied_share, 1.0);
    }

    #[test]
    fn disabled_detector_follows_nothing() {
        let (hot, _) = detector(HotKeyConfig::disabled().with_sample_every(1));
        let policy = Policy::new("api", [Window::per_minute(10)]);
        for _ in 0..100 {
            hot.record(&policy, Identity::new(b"k"), true);
        }
        assert!(hot.report().is_empty());
        assert!(!hot.shields());
    }
}
