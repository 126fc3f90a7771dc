//! Decisions answered without a round trip to Redis.
//!
//! **Denials (always, when the cache is on).** When Redis denies a request, no request of that
//! cost or more can succeed for that key before `retry_after`; until then the cache answers
//! such requests itself. This is exact, and it shields Redis from a client hammering a key it
//! has already spent. Entries are weighed in bytes and bounded by `cache.max_size` (quick_cache
//! evicts by its own policy).
//!
//! **Leases (`cache.mode: lease`).** An instance reserves several permits in one Redis call
//! (`allow_n(lease)`) and hands them out locally for at most `cache.ttl`. The global count is
//! never exceeded, because every permit is recorded in Redis before it is used; the price is
//! that a permit is recorded when reserved rather than when used (by at most `ttl`), and that
//! permits still unused when the lease expires were recorded for nothing (stranded), which can
//! deny other instances' requests that an exact limiter would have allowed. The lease shrinks
//! as the key's remaining quota does, so near the limit the cache steps aside and every
//! decision goes to Redis again. Accuracy and savings are measured in `docs/Performance.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::clock::micros;
use crate::config::{CacheConfig, CacheMode};
use crate::decision::{Decision, Source};

/// What the cache holds for a denied key.
#[derive(Debug, Clone, Copy)]
struct Denial {
    until_us: u64,
    cost: u64,
    decision: Decision,
    at_us: u64,
}

/// A reserved batch of permits.
#[derive(Debug)]
struct Lease {
    permits: u64,
    expires_us: u64,
    /// What Redis said was left after the reservation: the lease size follows it.
    remaining: u64,
    decision: Decision,
}

#[derive(Debug, Clone, Copy)]
struct ByteWeighter;

/// Bytes an entry costs beyond its key: the value and the cache's own bookkeeping.
const ENTRY_OVERHEAD: u64 = 96;

impl<V> Weighter<Box<[u8]>, V> for ByteWeighter {
    fn weight(&self, key: &Box<[u8]>, _value: &V) -> u64 {
        key.len() as u64 + ENTRY_OVERHEAD
    }
}

/// Counters of what the cache did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Decisions answered from a cached denial.
    pub denial_hits: u64,
    /// Decisions answered from a lease.
    pub lease_hits: u64,
    /// Leases reserved in Redis.
    pub leases_taken: u64,
    /// Permits of expired or replaced leases that were never used.
    pub stranded_permits: u64,
}

/// What to do about a request the cache could not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// Ask Redis for exactly the request's cost.
    Exact,
    /// Ask Redis for this many permits; what the request does not use goes into a lease.
    Lease(u64),
}

/// The local cache of one limiter.
#[derive(Debug)]
pub(crate) struct DecisionCache {
    denials: Cache<Box<[u8]>, Denial, ByteWeighter>,
    leases: Option<(LeaseTable, LeaseRules)>,
    denial_hits: AtomicU64,
    lease_hits: AtomicU64,
    leases_taken: AtomicU64,
    stranded: AtomicU64,
}

/// Leases by key.
type LeaseTable = Cache<Box<[u8]>, Arc<Mutex<Lease>>, ByteWeighter>;

#[derive(Debug, Clone, Copy)]
struct LeaseRules {
    size: u64,
    ttl_us: u64,
}

impl DecisionCache {
    pub(crate) fn new(config: &CacheConfig) -> Self {
        let budget = config.max_size();
        let items = usize::try_from(budget / (ENTRY_OVERHEAD + 32))
            .unwrap_or(usize::MAX)
            .max(16);
        let leases = match config.mode() {
            CacheMode::Exact => None,
            CacheMode::Lease { size } => Some((
                Cache::with_weighter(items / 2, budget / 2, ByteWeighter),
                LeaseRules {
                    size,
                    ttl_us: micros(config.ttl()),
                },
            )),
        };
        let denial_budget = if leases.is_some() { budget / 2 } else { budget };
        Self {
            denials: Cache::with_weighter(items, denial_budget, ByteWeighter),
            leases,
            denial_hits: AtomicU64::new(0),
            lease_hits: AtomicU64::new(0),
            leases_taken: AtomicU64::new(0),
            stranded: AtomicU64::new(0),
        }
    }

    /// A cached answer for `key` at `now_us`, when there is one.
    pub(crate) fn lookup(
        &self,
        key: &[u8],
        cost: u64,
        consume: bool,
        now_us: u64,
    ) -> Option<Decision> {
        if let Some(denial) = self.denials.get(key) {
            if now_us < denial.until_us && cost >= denial.cost {
                self.denial_hits.fetch_add(1, Ordering::Relaxed);
                return Some(denial.answer(now_us));
            }
            if now_us >= denial.until_us {
                self.denials.remove(key);
            }
        }
        if !consume {
            return None;
        }
        let (leases, _) = self.leases.as_ref()?;
        let lease = leases.get(key)?;
        let mut lease = lease.lock().unwrap_or_else(PoisonError::into_inner);
        if now_us >= lease.expires_us || lease.permits < cost {
            return None;
        }
        lease.permits -= cost;
        self.lease_hits.fetch_add(1, Ordering::Relaxed);
        Some(lease.answer(now_us))
    }

    /// How many permits to ask Redis for, for a request of `cost`.
    pub(crate) fn reservation(
        &self,
        key: &[u8],
        cost: u64,
        consume: bool,
        limit: u64,
    ) -> Reservation {
        let Some((leases, rules)) = &self.leases else {
            return Reservation::Exact;
        };
        if !consume || cost == 0 {
            return Reservation::Exact;
        }
        // Start at the configured size; afterwards take at most half of what Redis said was left,
        // so leases shrink to nothing as the quota runs out.
        let known_remaining = leases
            .get(key)
            .map_or(rules.size.saturating_mul(2), |lease| {
                lease
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remaining
            });
        let size = rules.size.min(known_remaining / 2).min(limit);
        if size > cost {
            Reservation::Lease(size)
        } else {
            Reservation::Exact
        }
    }

    /// Records what Redis answered for `key`: a denial to answer locally, or a lease granted.
    pub(crate) fn record(
        &self,
        key: &[u8],
        cost: u64,
        reserved: u64,
        decision: &Decision,
        now_us: u64,
    ) {
        if !decision.allowed() {
            if let Some(retry) = decision.retry_after() {
                self.denials.insert(
                    key.into(),
                    Denial {
                        until_us: now_us + micros(retry),
                        cost,
                        decision: *decision,
                        at_us: now_us,
                    },
                );
            }
            if let Some((leases, _)) = &self.leases
                && let Some(lease) = leases.get(key)
            {
                // Nothing left to spread: later requests go to Redis until it says otherwise.
                lease
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remaining = 0;
            }
            return;
        }
        let Some((leases, rules)) = &self.leases else {
            return;
        };
        let fresh = Lease {
            permits: reserved.saturating_sub(cost),
            expires_us: now_us + rules.ttl_us,
            remaining: decision.remaining(),
            decision: *decision,
        };
        if reserved > cost {
            self.leases_taken.fetch_add(1, Ordering::Relaxed);
        }
        match leases.get(key) {
            Some(lease) => {
                let mut lease = lease.lock().unwrap_or_else(PoisonError::into_inner);
                self.stranded.fetch_add(lease.permits, Ordering::Relaxed);
                *lease = fresh;
            }
            None => leases.insert(key.into(), Arc::new(Mutex::new(fresh))),
        }
    }

    /// Forgets `key` (after a reset).
    pub(crate) fn forget(&self, key: &[u8]) {
        self.denials.remove(key);
        if let Some((leases, _)) = &self.leases {
            leases.remove(key);
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            denial_hits: self.denial_hits.load(Ordering::Relaxed),
            lease_hits: self.lease_hits.load(Ordering::Relaxed),
            leases_taken: self.leases_taken.load(Ordering::Relaxed),
            stranded_permits: self.stranded.load(Ordering::Relaxed),
        }
    }

    /// Bytes in use, by the cache's own weighing.
    pub(crate) fn weight(&self) -> u64 {
        self.denials.weight() + self.leases.as_ref().map_or(0, |(l, _)| l.weight())
    }
}

impl Denial {
    fn answer(&self, now_us: u64) -> Decision {
        let elapsed = Duration::from_micros(now_us.saturating_sub(self.at_us));
        self.decision.elapsed_by(elapsed).with_source(Source::Cache)
    }
}

impl Lease {
    fn answer(&self, _now_us: u64) -> Decision {
        // What this instance still holds plus what Redis said was left when it was reserved.
        self.decision
            .with_remaining(self.permits + self.remaining)
            .with_source(Source::Cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Outcome;
    use crate::policy::Window;

    const WINDOWS: [Window; 1] = [Window::per_second(10)];

    fn decision(allowed: bool, remaining: u64, retry_us: u64) -> Decision {
        Decision::from_outcome(
            Outcome {
                allowed,
                window_index: 0,
                remaining,
                reset_after_us: 1_000_000,
                retry_after_us: retry_us,
            },
            &WINDOWS,
            Source::Redis,
        )
    }

    fn exact() -> DecisionCache {
        DecisionCache::new(&CacheConfig::new(Duration::from_millis(200), 1_000_000))
    }

    #[test]
    fn a_denial_is_answered_until_retry_after_and_not_after() {
        let cache = exact();
        cache.record(b"k", 1, 1, &decision(false, 0, 300_000), 1_000);
        let hit = cache.lookup(b"k", 1, true, 101_000).expect("cached denial");
        assert!(!hit.allowed());
        assert_eq!(hit.source(), Source::Cache);
        assert_eq!(hit.retry_after(), Some(Duration::from_micros(200_000)));
        assert!(
            cache.lookup(b"k", 1, true, 301_000).is_none(),
            "expired at retry_after"
        );
        assert_eq!(cache.stats().denial_hits, 1);
    }

    #[test]
    fn a_denial_answers_only_requests_costing_as_much_or_more() {
        let cache = exact();
        cache.record(b"k", 3, 3, &decision(false, 2, 300_000), 0);
        assert!(
            cache.lookup(b"k", 1, true, 10).is_none(),
            "a cheaper request may fit"
        );
        assert!(cache.lookup(b"k", 3, true, 10).is_some());
        assert!(cache.lookup(b"k", 5, false, 10).is_some());
    }

    #[test]
    fn exact_mode_never_answers_allowed() {
        let cache = exact();
        cache.record(b"k", 1, 1, &decision(true, 9, 0), 0);
        assert!(cache.lookup(b"k", 1, true, 10).is_none());
        assert_eq!(cache.reservation(b"k", 1, true, 10), Reservation::Exact);
    }

    #[test]
    fn leases_are_spent_locally_and_shrink_with_the_quota() {
        let config = CacheConfig::new(Duration::from_millis(200), 1_000_000).with_leases(8);
        let cache = DecisionCache::new(&config);
        assert_eq!(cache.reservation(b"k", 1, true, 100), Reservation::Lease(8));
        cache.record(b"k", 1, 8, &decision(true, 12, 0), 0);
        for _ in 0..7 {
            let hit = cache.lookup(b"k", 1, true, 10).expect("lease permit");
            assert!(hit.allowed());
            assert_eq!(hit.source(), Source::Cache);
        }
        assert!(cache.lookup(b"k", 1, true, 10).is_none(), "lease spent");
        assert!(
            cache.lookup(b"k", 1, false, 10).is_none(),
            "peeks go to Redis"
        );
        // Redis said 12 were left: the next lease takes at most half.
        assert_eq!(cache.reservation(b"k", 1, true, 100), Reservation::Lease(6));
        cache.record(b"k", 1, 2, &decision(true, 1, 0), 20);
        assert_eq!(cache.reservation(b"k", 1, true, 100), Reservation::Exact);
        // An unused lease that is replaced counts as stranded.
        assert_eq!(cache.stats().stranded_permits, 0);
        cache.record(b"k", 1, 3, &decision(true, 5, 0), 30);
        assert_eq!(cache.stats().stranded_permits, 1);
        assert!(
            cache.lookup(b"k", 1, true, 30 + 200_000).is_none(),
            "expired after ttl"
        );
    }

    #[test]
    fn the_cache_stays_within_its_byte_budget() {
        let cache = DecisionCache::new(&CacheConfig::new(Duration::from_millis(200), 64 * 1024));
        for i in 0..100_000u32 {
            cache.record(&i.to_be_bytes(), 1, 1, &decision(false, 0, 1_000_000), 0);
        }
        assert!(cache.weight() <= 64 * 1024, "{} bytes", cache.weight());
    }
}
