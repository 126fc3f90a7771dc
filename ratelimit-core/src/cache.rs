//! Decisions answered without a round trip to Redis.
//!
//! **Denials (always, when the cache is on).** When Redis denies a request, no request of that
//! cost or more can succeed for that key before `retry_after`; until then the cache answers
//! such requests itself. This is exact, and it shields Redis from a client hammering a key it
//! has already spent. Entries are weighed in bytes and bounded by `cache.max_size` (quick_cache
//! evicts by its own policy).
//!
//! **Leases (`cache.mode: lease`).** An instance reserves several permits in one Redis call
//! (`allow_n(lease)`) and hands them out locally for at most `cache.ttl`. Redis never records
//! more than the limit, because every permit is recorded before it is used; the price is that a
//! permit is recorded when reserved rather than when used (up to `ttl` earlier), so counted by
//! when requests were *served*, a window can briefly hold a few more than the limit; and permits
//! still unused when a lease expires were recorded for nothing (stranded), which can deny other
//! requests that an exact limiter would have allowed. The lease size follows local demand (it
//! starts at 2, doubles when a lease is used up within its `ttl`, and drops to what was used
//! when one expires under-used), never exceeds `lease_size`, and shrinks with the key's
//! remaining quota, so near the limit the cache steps aside. Accuracy and savings are measured
//! in `docs/Performance.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Weighter};

use crate::clock::micros;
use crate::config::{CacheConfig, CacheMode};
use crate::decision::{Decision, Source};
use crate::key::Identity;
use crate::namespace::Namespaces;
use crate::policy::Policy;

/// A key as the cache keeps it: its policy's number and the identity's bytes (for a policy
/// past the numbered ones, the whole `policy \0 tag \0 identity` under
/// [`UNNUMBERED`](crate::namespace::UNNUMBERED)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StoredKey {
    namespace: u16,
    bytes: Box<[u8]>,
}

/// A key looked up: the borrowed form of a [`StoredKey`], hashed as it is (the same fields,
/// in the same order, of types that hash alike), so that no look-up copies the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey<'a> {
    namespace: u16,
    bytes: &'a [u8],
}

impl Equivalent<StoredKey> for CacheKey<'_> {
    fn equivalent(&self, key: &StoredKey) -> bool {
        self.namespace == key.namespace && self.bytes == &*key.bytes
    }
}

impl CacheKey<'_> {
    fn to_stored(self) -> StoredKey {
        StoredKey {
            namespace: self.namespace,
            bytes: self.bytes.into(),
        }
    }
}

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
    /// Permits left to hand out.
    permits: u64,
    /// Permits granted since the lease was (re)started.
    granted: u64,
    /// When the current permits started to be handed out.
    started_us: u64,
    expires_us: u64,
    /// What Redis said was left after the last reservation: the lease size follows it.
    remaining: u64,
    /// The size of the next reservation, following demand.
    next_size: u64,
    decision: Decision,
}

/// The first lease of a key: demand is unknown yet.
const INITIAL_LEASE: u64 = 2;

impl Lease {
    /// Ends an expired lease: counts what it stranded, and sizes the next one by what was used.
    fn expire(&mut self, stranded: &AtomicU64) {
        if self.permits == 0 && self.granted == 0 {
            return;
        }
        let used = self.granted - self.permits;
        stranded.fetch_add(self.permits, Ordering::Relaxed);
        self.next_size = if self.permits == 0 {
            self.next_size.saturating_mul(2)
        } else {
            used.max(INITIAL_LEASE)
        };
        self.permits = 0;
        self.granted = 0;
    }
}

#[derive(Debug, Clone, Copy)]
struct ByteWeighter;

/// Bytes an entry costs beyond its key: the value, the cache's own bookkeeping and what the
/// allocator adds. Measured with `load/src/bin/soak.rs`: a cached denial costs about 260 bytes
/// of resident memory with a 20-byte key (96 here, as first estimated, let a 64 MB cache take
/// 2.3 times that).
const ENTRY_OVERHEAD: u64 = 240;

impl Weighter<StoredKey, Denial> for ByteWeighter {
    fn weight(&self, key: &StoredKey, _value: &Denial) -> u64 {
        key.bytes.len() as u64 + ENTRY_OVERHEAD
    }
}

impl Weighter<StoredKey, Arc<Mutex<Lease>>> for ByteWeighter {
    fn weight(&self, key: &StoredKey, _value: &Arc<Mutex<Lease>>) -> u64 {
        // The lease lives in an allocation of its own, with the `Arc`'s two counts.
        key.bytes.len() as u64 + ENTRY_OVERHEAD + std::mem::size_of::<Mutex<Lease>>() as u64 + 32
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
    denials: Cache<StoredKey, Denial, ByteWeighter>,
    /// The numbers of the policies whose keys the cache holds.
    namespaces: Namespaces,
    /// At least how many denials `denials` holds: counted up before one is stored, down when
    /// one is removed here (never for those the cache evicts itself), so 0 means there is none.
    /// A look-up is then skipped, and an admission asks it instead of `denials.is_empty()`,
    /// which read-locks every shard of the cache (four a core) on every allowed decision.
    denials_stored: AtomicU64,
    leases: Option<(LeaseTable, LeaseRules)>,
    denial_hits: AtomicU64,
    lease_hits: AtomicU64,
    leases_taken: AtomicU64,
    stranded: AtomicU64,
}

/// Leases by key.
type LeaseTable = Cache<StoredKey, Arc<Mutex<Lease>>, ByteWeighter>;

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
            namespaces: Namespaces::new(),
            denials_stored: AtomicU64::new(0),
            leases,
            denial_hits: AtomicU64::new(0),
            lease_hits: AtomicU64::new(0),
            leases_taken: AtomicU64::new(0),
            stranded: AtomicU64::new(0),
        }
    }

    /// `use_key` of the cache's key for `identity` under `policy`: the policy's number and
    /// the identity's bytes, with nothing written (a policy past the numbered ones has its
    /// name and algorithm written before the identity, on the stack).
    pub(crate) fn with_key<T>(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        use_key: impl FnOnce(CacheKey<'_>) -> T,
    ) -> T {
        self.namespaces
            .with_key(policy, identity, |namespace, bytes| {
                use_key(CacheKey { namespace, bytes })
            })
    }

    /// A cached answer for `key` at `now_us`, when there is one.
    pub(crate) fn lookup(
        &self,
        key: CacheKey<'_>,
        cost: u64,
        consume: bool,
        now_us: u64,
    ) -> Option<Decision> {
        // Leased permits first: they are already recorded in Redis, whatever it said since.
        if consume
            && let Some((leases, _)) = &self.leases
            && let Some(lease) = leases.get(&key)
        {
            let mut lease = lease.lock().unwrap_or_else(PoisonError::into_inner);
            if now_us >= lease.expires_us {
                lease.expire(&self.stranded);
            } else if lease.permits >= cost {
                lease.permits -= cost;
                self.lease_hits.fetch_add(1, Ordering::Relaxed);
                return Some(lease.answer(now_us));
            }
        }
        // None stored (the count is never below what the cache holds): no look-up.
        if self.denials_stored.load(Ordering::Relaxed) > 0
            && let Some(denial) = self.denials.get(&key)
        {
            if now_us < denial.until_us && cost >= denial.cost {
                self.denial_hits.fetch_add(1, Ordering::Relaxed);
                return Some(denial.answer(now_us));
            }
            if now_us >= denial.until_us {
                self.remove_denial(key);
            }
        }
        None
    }

    /// How many permits to ask Redis for, for a request of `cost`.
    ///
    /// A policy whose shortest window is not longer than the cache's `ttl` never takes a
    /// lease (whatever policy it is: the default, a rule's, one passed to `allow_with`): a
    /// permit spent after its window ended in Redis would be spent twice.
    pub(crate) fn reservation(
        &self,
        key: CacheKey<'_>,
        cost: u64,
        consume: bool,
        policy: &Policy,
    ) -> Reservation {
        let Some((leases, rules)) = &self.leases else {
            return Reservation::Exact;
        };
        if !consume || cost == 0 || policy.shortest_window_micros() <= rules.ttl_us {
            return Reservation::Exact;
        }
        let limit = policy.smallest_limit();
        // Follow demand, never above the configured size, and take at most half of what Redis
        // said was left, so leases shrink to nothing as the quota runs out.
        let (demand, known_remaining) =
            leases.get(&key).map_or((INITIAL_LEASE, u64::MAX), |lease| {
                let lease = lease.lock().unwrap_or_else(PoisonError::into_inner);
                (lease.next_size, lease.remaining)
            });
        let size = demand.min(rules.size).min(known_remaining / 2).min(limit);
        if size > cost {
            Reservation::Lease(size)
        } else {
            Reservation::Exact
        }
    }

    /// Records what Redis answered for `key`: a denial to answer locally, or a lease granted.
    pub(crate) fn record(
        &self,
        key: CacheKey<'_>,
        cost: u64,
        reserved: u64,
        decision: &Decision,
        now_us: u64,
    ) {
        if !decision.allowed() {
            if let Some(retry) = decision.retry_after() {
                self.denials_stored.fetch_add(1, Ordering::Relaxed);
                self.denials.insert(
                    key.to_stored(),
                    Denial {
                        until_us: now_us + micros(retry),
                        cost,
                        decision: *decision,
                        at_us: now_us,
                    },
                );
            }
            if let Some((leases, _)) = &self.leases
                && let Some(lease) = leases.get(&key)
            {
                // Nothing left to spread: later requests go to Redis until it says otherwise.
                lease
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remaining = 0;
            }
            return;
        }
        // A cheaper request went through: a denial cached for a costlier one no longer knows
        // what is left (it would answer with a stale `remaining`).
        if self.denials_stored.load(Ordering::Relaxed) > 0 {
            self.remove_denial(key);
        }
        let Some((leases, rules)) = &self.leases else {
            return;
        };
        let extra = reserved.saturating_sub(cost);
        if extra > 0 {
            self.leases_taken.fetch_add(1, Ordering::Relaxed);
        }
        // Get or insert in one step: two concurrent misses on one key must both add to the
        // same lease, or the second would replace the first and strand its permits unseen.
        let owned = key.to_stored();
        let lease = leases.get_or_insert_with(&owned, || {
            Ok::<_, std::convert::Infallible>(Arc::new(Mutex::new(Lease {
                permits: 0,
                granted: 0,
                started_us: now_us,
                expires_us: now_us + rules.ttl_us,
                remaining: decision.remaining(),
                next_size: INITIAL_LEASE,
                decision: *decision,
            })))
        });
        let Ok(lease) = lease;
        let mut lease = lease.lock().unwrap_or_else(PoisonError::into_inner);
        if now_us >= lease.expires_us {
            lease.expire(&self.stranded);
        }
        // A lease used up in under half its ttl is too small for this key's traffic.
        if extra > 0 && lease.permits == 0 && lease.granted > 0 {
            if now_us.saturating_sub(lease.started_us) < rules.ttl_us / 2 {
                lease.next_size = lease.next_size.saturating_mul(2);
            }
            lease.granted = 0;
            lease.started_us = now_us;
        }
        if lease.granted == 0 {
            lease.started_us = now_us;
        }
        // Concurrent misses each reserve: their permits join the live lease rather than
        // replace it, so none is stranded by another.
        lease.permits += extra;
        lease.granted += extra;
        lease.remaining = decision.remaining();
        lease.decision = *decision;
        if extra > 0 {
            lease.expires_us = now_us + rules.ttl_us;
        }
    }

    /// Forgets everything: after a reload, a cached denial or a lease may belong to a limit
    /// that no longer holds. Unused leased permits are counted as stranded.
    pub(crate) fn clear(&self) {
        if let Some((leases, _)) = &self.leases {
            for (_, lease) in leases.iter() {
                lease
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .expire(&self.stranded);
            }
            leases.clear();
        }
        self.denials.clear();
    }

    /// Removes `key`'s denial, counting it out of `denials_stored`.
    fn remove_denial(&self, key: CacheKey<'_>) {
        if self.denials.remove(&key).is_some() {
            self.denials_stored.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets `key` (after a reset).
    pub(crate) fn forget(&self, key: CacheKey<'_>) {
        self.remove_denial(key);
        if let Some((leases, _)) = &self.leases {
            leases.remove(&key);
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

    /// `bytes` as the key of the first numbered policy.
    fn k(bytes: &[u8]) -> CacheKey<'_> {
        CacheKey {
            namespace: 0,
            bytes,
        }
    }

    fn exact() -> DecisionCache {
        DecisionCache::new(&CacheConfig::new(Duration::from_millis(200), 1_000_000))
    }

    #[test]
    fn a_denial_is_answered_until_retry_after_and_not_after() {
        let cache = exact();
        cache.record(k(b"k"), 1, 1, &decision(false, 0, 300_000), 1_000);
        let hit = cache
            .lookup(k(b"k"), 1, true, 101_000)
            .expect("cached denial");
        assert!(!hit.allowed());
        assert_eq!(hit.source(), Source::Cache);
        assert_eq!(hit.retry_after(), Some(Duration::from_micros(200_000)));
        assert!(
            cache.lookup(k(b"k"), 1, true, 301_000).is_none(),
            "expired at retry_after"
        );
        assert_eq!(cache.stats().denial_hits, 1);
    }

    #[test]
    fn a_denial_answers_only_requests_costing_as_much_or_more() {
        let cache = exact();
        cache.record(k(b"k"), 3, 3, &decision(false, 2, 300_000), 0);
        assert!(
            cache.lookup(k(b"k"), 1, true, 10).is_none(),
            "a cheaper request may fit"
        );
        assert!(cache.lookup(k(b"k"), 3, true, 10).is_some());
        assert!(cache.lookup(k(b"k"), 5, false, 10).is_some());
    }

    fn per_minute(limit: u64) -> Policy {
        Policy::new("p", [crate::Window::per_minute(limit)])
    }

    /// Keys are told apart by policy (name and algorithm) as well as by identity, for the
    /// numbered policies and for those past them: a denial under one policy answers nothing
    /// under another, and a policy built again with the same name and algorithm (a reload)
    /// finds it.
    #[test]
    fn a_denial_answers_only_under_its_own_policy() {
        let cache = exact();
        let denied = decision(false, 0, 300_000);
        let record = |policy: &Policy, id: &[u8]| {
            cache.with_key(policy, Identity::new(id), |key| {
                cache.record(key, 1, 1, &denied, 0);
            });
        };
        let cached = |policy: &Policy, id: &[u8]| {
            cache
                .with_key(policy, Identity::new(id), |key| {
                    cache.lookup(key, 1, true, 10)
                })
                .is_some()
        };
        let policy = per_minute(10);
        record(&policy, b"client");
        assert!(cached(&policy, b"client"));
        assert!(
            cached(&per_minute(10), b"client"),
            "the same policy, built again"
        );
        assert!(!cached(&policy, b"other"), "another identity");
        let renamed = Policy::new("q", [crate::Window::per_minute(10)]);
        assert!(!cached(&renamed, b"client"), "another name");
        let bucket = per_minute(10).with_algorithm(crate::Algorithm::TokenBucket);
        assert!(!cached(&bucket, b"client"), "another algorithm");
        // More policies than numbers: the rest keep their keys apart by name.
        let many = crate::namespace::NAMESPACES + 8;
        let numbered = |n: usize| Policy::new(format!("n-{n}"), [crate::Window::per_minute(1)]);
        for n in 0..many {
            record(&numbered(n), format!("id-{n}").as_bytes());
        }
        for n in 0..many {
            assert!(
                cached(&numbered(n), format!("id-{n}").as_bytes()),
                "policy {n}"
            );
            let next = numbered((n + 1) % many);
            assert!(
                !cached(&next, format!("id-{n}").as_bytes()),
                "policy {n}'s key"
            );
        }
    }

    /// A denial cached for a costly request is dropped once a cheaper one is admitted: it would
    /// answer later requests with a `remaining` that is no longer true.
    #[test]
    fn an_admission_drops_the_key_s_cached_denial() {
        let cache = exact();
        cache.record(k(b"k"), 2, 2, &decision(false, 1, 300_000), 0);
        assert!(cache.lookup(k(b"k"), 2, true, 10).is_some());
        cache.record(k(b"k"), 1, 1, &decision(true, 0, 0), 20);
        assert!(cache.lookup(k(b"k"), 2, true, 30).is_none());
    }

    /// The count of stored denials, which spares an admission the look-up while it is 0, never
    /// falls below what the cache holds: not when a key's denial is replaced, nor when denials
    /// go by an admission, by expiry or by a reset.
    #[test]
    fn the_count_of_stored_denials_never_falls_below_the_cache() {
        let cache = exact();
        let holds = |cache: &DecisionCache| {
            let (stored, held) = (
                cache.denials_stored.load(Ordering::Relaxed),
                cache.denials.len(),
            );
            assert!(stored >= held as u64, "{stored} counted, {held} held");
            held
        };
        assert_eq!(holds(&cache), 0);
        cache.record(k(b"a"), 1, 1, &decision(false, 0, 300_000), 0);
        cache.record(k(b"a"), 1, 1, &decision(false, 0, 300_000), 5);
        cache.record(k(b"b"), 1, 1, &decision(false, 0, 300_000), 0);
        cache.record(k(b"c"), 1, 1, &decision(false, 0, 300_000), 0);
        assert_eq!(holds(&cache), 3);
        cache.record(k(b"a"), 1, 1, &decision(true, 0, 0), 10);
        assert!(
            cache.lookup(k(b"a"), 1, true, 20).is_none(),
            "admitted: a's denial is gone"
        );
        assert_eq!(holds(&cache), 2);
        assert!(cache.lookup(k(b"b"), 1, true, 400_000).is_none(), "expired");
        assert_eq!(holds(&cache), 1);
        cache.forget(k(b"c"));
        assert_eq!(holds(&cache), 0);
        cache.record(k(b"d"), 1, 1, &decision(false, 0, 300_000), 0);
        assert!(
            cache.lookup(k(b"d"), 1, true, 10).is_some(),
            "a new denial is kept"
        );
        cache.record(k(b"d"), 1, 1, &decision(true, 0, 0), 20);
        assert!(
            cache.lookup(k(b"d"), 1, true, 30).is_none(),
            "and dropped by an admission"
        );
        assert_eq!(holds(&cache), 0);
    }

    #[test]
    fn exact_mode_never_answers_allowed() {
        let cache = exact();
        cache.record(k(b"k"), 1, 1, &decision(true, 9, 0), 0);
        assert!(cache.lookup(k(b"k"), 1, true, 10).is_none());
        assert_eq!(
            cache.reservation(k(b"k"), 1, true, &per_minute(10)),
            Reservation::Exact
        );
    }

    #[test]
    fn leases_follow_demand_and_shrink_with_the_quota() {
        let config = CacheConfig::new(Duration::from_millis(200), 1_000_000).with_leases(8);
        let cache = DecisionCache::new(&config);
        // What the next miss of a request of cost 1 under 100/1m reserves.
        let next = || cache.reservation(k(b"k"), 1, true, &per_minute(100));
        assert_eq!(next(), Reservation::Lease(2));
        cache.record(k(b"k"), 1, 2, &decision(true, 50, 0), 0);
        let hit = cache.lookup(k(b"k"), 1, true, 10).expect("lease permit");
        assert!(hit.allowed());
        assert_eq!(hit.source(), Source::Cache);
        assert!(cache.lookup(k(b"k"), 1, true, 10).is_none(), "lease spent");
        assert!(
            cache.lookup(k(b"k"), 1, false, 10).is_none(),
            "peeks go to Redis"
        );
        // Used up within its ttl: the next one doubles once the old one has expired.
        assert!(cache.lookup(k(b"k"), 1, true, 300_000).is_none());
        assert_eq!(next(), Reservation::Lease(4));
        cache.record(k(b"k"), 1, 4, &decision(true, 40, 0), 300_000);
        // Expires with 2 of its 3 extra permits unused: stranded, and the next size follows use.
        assert!(cache.lookup(k(b"k"), 1, true, 300_010).is_some());
        assert!(cache.lookup(k(b"k"), 1, true, 600_000).is_none());
        assert_eq!(cache.stats().stranded_permits, 2);
        assert_eq!(next(), Reservation::Lease(2));
        // Near the limit the cache steps aside.
        cache.record(k(b"k"), 1, 2, &decision(true, 3, 0), 600_000);
        assert_eq!(next(), Reservation::Exact);
    }

    /// Misses that race to create a key's first lease all land in it: none replaces another's
    /// (whose permits would then be neither spendable nor counted as stranded).
    #[test]
    fn concurrent_grants_join_one_lease() {
        let config = CacheConfig::new(Duration::from_millis(200), 1_000_000).with_leases(8);
        for round in 0..200 {
            let cache = DecisionCache::new(&config);
            let key = format!("k{round}");
            let start = std::sync::Barrier::new(8);
            std::thread::scope(|scope| {
                for _ in 0..8 {
                    scope.spawn(|| {
                        start.wait();
                        cache.record(k(key.as_bytes()), 1, 5, &decision(true, 50, 0), 0);
                    });
                }
            });
            let mut spent = 0;
            while cache.lookup(k(key.as_bytes()), 1, true, 10).is_some() {
                spent += 1;
            }
            assert_eq!(spent, 8 * 4, "round {round}: leased permits vanished");
        }
    }

    #[test]
    fn a_lease_used_up_quickly_grows() {
        let config = CacheConfig::new(Duration::from_millis(200), 1_000_000).with_leases(16);
        let cache = DecisionCache::new(&config);
        let mut now = 0;
        let mut sizes = Vec::new();
        for _ in 0..4 {
            let Reservation::Lease(size) = cache.reservation(k(b"k"), 1, true, &per_minute(1000))
            else {
                panic!("expected a lease");
            };
            sizes.push(size);
            cache.record(k(b"k"), 1, size, &decision(true, 500, 0), now);
            now += 1_000;
            while cache.lookup(k(b"k"), 1, true, now).is_some() {}
        }
        // Growth shows from the lease after the one that was used up.
        assert_eq!(sizes, [2, 2, 4, 8]);
    }

    #[test]
    fn concurrent_grants_join_the_live_lease_and_beat_a_cached_denial() {
        let config = CacheConfig::new(Duration::from_millis(200), 1_000_000).with_leases(8);
        let cache = DecisionCache::new(&config);
        // Three misses in flight each reserved 4 permits.
        for _ in 0..3 {
            cache.record(k(b"k"), 1, 4, &decision(true, 20, 0), 0);
        }
        // Meanwhile another request was denied by Redis and cached.
        cache.record(k(b"k"), 1, 1, &decision(false, 0, 500_000), 0);
        let mut served = 0;
        while cache
            .lookup(k(b"k"), 1, true, 10)
            .is_some_and(|d| d.allowed())
        {
            served += 1;
        }
        assert_eq!(served, 9, "every reserved permit is served, none stranded");
        assert_eq!(cache.stats().stranded_permits, 0);
    }

    #[test]
    fn the_cache_stays_within_its_byte_budget() {
        let cache = DecisionCache::new(&CacheConfig::new(Duration::from_millis(200), 64 * 1024));
        for i in 0..100_000u32 {
            cache.record(k(&i.to_be_bytes()), 1, 1, &decision(false, 0, 1_000_000), 0);
        }
        assert!(cache.weight() <= 64 * 1024, "{} bytes", cache.weight());
    }
}
