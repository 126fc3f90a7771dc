//! The in-memory backend: one process's state, sharded, bounded, and reclaimed when it expires.
//!
//! State is keyed by policy, algorithm and identity, spread over shards each behind its own
//! mutex, so concurrent callers on different keys rarely meet. Every entry knows when it stops
//! mattering; a shard drops expired entries every few thousand operations and whenever it is
//! full. When a shard is still full after that, the eighth of it that expires soonest is
//! forgotten (those keys start afresh): the bound on memory wins over exactness for the evicted
//! keys.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

use hashbrown::HashTable;

use crate::algorithm::{
    CounterPair, FixedCounter, Request, Tat, Verdict, fixed_window, gcra, sliding_counter,
    sliding_log,
};
use crate::clock::Clock;
use crate::key::{Identity, MAX_KEY, store_key};
use crate::policy::{Algorithm, Policy};

const SHARDS: usize = 64;
const SWEEP_EVERY: u32 = 4096;

/// Per-window state is kept by window length, as Redis keys it (`:tb:<µs>`, `:fw:<µs>`), so
/// a policy whose windows change keeps the state of the windows it still has.
#[derive(Debug)]
enum State {
    Log(VecDeque<u64>),
    Buckets(Vec<(u64, Tat)>),
    Counters(Vec<(u64, FixedCounter)>),
    Pairs(Vec<(u64, CounterPair)>),
}

/// Windows a policy can have without the evaluation touching the heap.
const INLINE_WINDOWS: usize = 8;

#[derive(Debug)]
struct Entry {
    key: Box<[u8]>,
    state: State,
    expires_at_us: u64,
    /// Permits asked of Redis and not answered yet, when this backend is a fallback: its own
    /// decisions count them as taken (see [`MemoryBackend::evaluate_counting_pending`]).
    pending: u64,
    /// Whether this backend, as a fallback, admitted a request for this key itself: permits
    /// Redis never heard of, which Redis must then not hand out again.
    admitted_locally: bool,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashTable<Entry>,
    ops: u32,
}

/// The in-memory backend. Cheap to share behind an `Arc`; every method is synchronous and
/// allocation-free for a key it already tracks.
///
/// ```
/// use std::sync::Arc;
/// use ratelimit_core::test_util::MemoryBackend;
/// use ratelimit_core::{FakeClock, Identity, Policy, Window};
/// let clock = FakeClock::new(0);
/// let memory = MemoryBackend::new(Arc::new(clock.clone()), 1000);
/// let policy = Policy::new("p", [Window::per_second(1)]);
/// assert!(memory.evaluate(&policy, Identity::new(b"k"), 1, true).allowed);
/// assert!(!memory.evaluate(&policy, Identity::new(b"k"), 1, true).allowed);
/// clock.advance(std::time::Duration::from_secs(1));
/// assert!(memory.evaluate(&policy, Identity::new(b"k"), 1, true).allowed);
/// ```
#[derive(Debug)]
pub struct MemoryBackend {
    clock: Arc<dyn Clock>,
    shards: Box<[Mutex<Shard>]>,
    /// One hash a key picks its shard and its bucket: seeded per backend, so clients cannot
    /// aim keys at one bucket.
    hasher: foldhash::quality::RandomState,
    shard_capacity: usize,
}

impl MemoryBackend {
    /// A backend reading `clock` and tracking at most about `max_keys` keys.
    pub fn new(clock: Arc<dyn Clock>, max_keys: usize) -> Self {
        Self {
            clock,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            shard_capacity: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    /// The backend's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Evaluates `policy` for `identity`; consumes `cost` permits when `consume` and they fit.
    pub fn evaluate(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        cost: u64,
        consume: bool,
    ) -> Verdict {
        let mut buffer = [0u8; MAX_KEY];
        let key = store_key(&mut buffer, policy, identity);
        let now = self.clock.now_micros();
        let request = Request { cost, consume };
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        shard.ops = shard.ops.wrapping_add(1);
        if shard.ops.is_multiple_of(SWEEP_EVERY) {
            shard.map.retain(|e| e.expires_at_us > now);
        }
        if let Some(entry) = shard.map.find_mut(hash, |e| *e.key == *key) {
            let verdict = apply(&mut entry.state, policy, now, request);
            entry.expires_at_us = verdict.expires_at_us;
            return verdict;
        }
        let mut state = fresh(policy);
        let verdict = apply(&mut state, policy, now, request);
        if verdict.expires_at_us > now {
            if shard.map.len() >= self.shard_capacity {
                make_room(&mut shard.map, now, self.shard_capacity);
            }
            let entry = Entry {
                key: key.into(),
                state,
                expires_at_us: verdict.expires_at_us,
                pending: 0,
                admitted_locally: false,
            };
            shard
                .map
                .insert_unique(hash, entry, |e| self.hasher.hash_one(&e.key));
        }
        verdict
    }

    /// Marks `cost` permits of `identity` as asked of Redis, answer pending. For the `local`
    /// fallback: while they are in flight, its own decisions count them as taken, so that an
    /// admission Redis is about to grant and one made here never add up past the limit.
    pub(crate) fn begin_remote(&self, policy: &Policy, identity: Identity<'_>, cost: u64) {
        let now = self.clock.now_micros();
        let keep_until = now.saturating_add(policy.longest_window_micros());
        self.with_entry(policy, identity, now, |entry| {
            entry.pending = entry.pending.saturating_add(cost);
            entry.expires_at_us = entry.expires_at_us.max(keep_until);
        });
    }

    /// The Redis call marked by [`Self::begin_remote`] ended; Redis granted `granted` permits
    /// (0 when it denied, failed or was abandoned: then the caller's answer, if any, came from
    /// here and was counted here). Granted permits are recorded like local admissions, so that
    /// a fallback taking over knows this instance's admissions. Returns `false` when they did
    /// not fit because this backend, as a fallback, admitted requests for the key itself,
    /// which Redis never heard of. (Without such admissions the count here only trails
    /// Redis's, by the round trip at a window's edge, and Redis's answer stands.)
    pub(crate) fn end_remote(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        cost: u64,
        granted: u64,
    ) -> bool {
        let now = self.clock.now_micros();
        self.with_entry(policy, identity, now, |entry| {
            entry.pending = entry.pending.saturating_sub(cost);
            if granted == 0 {
                return true;
            }
            let request = Request {
                cost: granted,
                consume: true,
            };
            let verdict = apply(&mut entry.state, policy, now, request);
            entry.expires_at_us = entry.expires_at_us.max(verdict.expires_at_us);
            verdict.allowed || !entry.admitted_locally
        })
    }

    /// Like [`Self::evaluate`], counting the permits pending in Redis (see
    /// [`Self::begin_remote`]) as taken: a request is admitted only if it fits with them.
    pub(crate) fn evaluate_counting_pending(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        cost: u64,
        consume: bool,
    ) -> Verdict {
        let now = self.clock.now_micros();
        self.with_entry(policy, identity, now, |entry| {
            if entry.pending > 0 {
                let with_pending = Request {
                    cost: cost.saturating_add(entry.pending),
                    consume: false,
                };
                let check = apply(&mut entry.state, policy, now, with_pending);
                if !check.allowed {
                    return check;
                }
            }
            let decided = apply(&mut entry.state, policy, now, Request { cost, consume });
            entry.expires_at_us = entry.expires_at_us.max(decided.expires_at_us);
            entry.admitted_locally |= decided.allowed && consume && cost > 0;
            decided
        })
    }

    /// Runs `f` on `identity`'s entry under `policy`, creating it (fresh) when missing, and
    /// keeps the entry while it matters or has permits pending. Sweeps like `evaluate`.
    fn with_entry<R>(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        now: u64,
        f: impl FnOnce(&mut Entry) -> R,
    ) -> R {
        let mut buffer = [0u8; MAX_KEY];
        let key = store_key(&mut buffer, policy, identity);
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        shard.ops = shard.ops.wrapping_add(1);
        if shard.ops.is_multiple_of(SWEEP_EVERY) {
            shard.map.retain(|e| e.expires_at_us > now || e.pending > 0);
        }
        if let Some(entry) = shard.map.find_mut(hash, |e| *e.key == *key) {
            return f(entry);
        }
        if shard.map.len() >= self.shard_capacity {
            make_room(&mut shard.map, now, self.shard_capacity);
        }
        let mut entry = Entry {
            key: key.into(),
            state: fresh(policy),
            expires_at_us: now,
            pending: 0,
            admitted_locally: false,
        };
        let result = f(&mut entry);
        if entry.expires_at_us > now || entry.pending > 0 {
            shard
                .map
                .insert_unique(hash, entry, |e| self.hasher.hash_one(&e.key));
        }
        result
    }

    /// Forgets the state of `identity` under `policy`.
    pub fn reset(&self, policy: &Policy, identity: Identity<'_>) {
        let mut buffer = [0u8; MAX_KEY];
        let key = store_key(&mut buffer, policy, identity);
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        let Ok(entry) = shard.map.find_entry(hash, |e| *e.key == *key) else {
            return;
        };
        // As in Redis, only the policy's own windows are forgotten (one log serves them all).
        let lengths: Vec<u64> = policy.windows().iter().map(|w| w.micros()).collect();
        let mut entry = entry;
        let emptied = match &mut entry.get_mut().state {
            State::Log(_) => true,
            State::Buckets(stored) => forget(stored, &lengths),
            State::Counters(stored) => forget(stored, &lengths),
            State::Pairs(stored) => forget(stored, &lengths),
        };
        if emptied {
            entry.remove();
        }
    }

    /// The number of keys tracked now (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }

    #[cfg(any(test, feature = "test-util"))]
    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[cfg(any(test, feature = "test-util"))]
    /// Drops every expired entry now.
    pub fn sweep(&self) {
        let now = self.clock.now_micros();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.map.retain(|e| e.expires_at_us > now);
        }
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        // Bits the table itself does not use: it takes the low bits for the bucket and the top
        // seven as a tag, so keys of one shard still spread over its buckets.
        let index = ((hash >> 32) as usize) % SHARDS;
        // A panic while holding the lock cannot leave an entry half-written: states are
        // replaced whole. Keep serving.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn fresh(policy: &Policy) -> State {
    match policy.algorithm() {
        Algorithm::SlidingWindow => State::Log(VecDeque::new()),
        Algorithm::TokenBucket => State::Buckets(Vec::new()),
        Algorithm::FixedWindow => State::Counters(Vec::new()),
        Algorithm::SlidingCounter => State::Pairs(Vec::new()),
    }
}

fn apply(state: &mut State, policy: &Policy, now: u64, request: Request) -> Verdict {
    let windows = policy.windows();
    match state {
        State::Log(log) => sliding_log(log, windows, now, request),
        State::Buckets(stored) => {
            per_window(stored, policy, |tats| gcra(tats, windows, now, request))
        }
        State::Counters(stored) => per_window(stored, policy, |counters| {
            fixed_window(counters, windows, now, request)
        }),
        State::Pairs(stored) => per_window(stored, policy, |pairs| {
            sliding_counter(pairs, windows, now, request)
        }),
    }
}

/// Lays the stored per-window states out in the policy's window order, runs `evaluate` on
/// them, and stores them back.
fn per_window<T: Copy + Default>(
    stored: &mut Vec<(u64, T)>,
    policy: &Policy,
    evaluate: impl FnOnce(&mut [T]) -> Verdict,
) -> Verdict {
    let windows = policy.windows();
    let mut inline = [T::default(); INLINE_WINDOWS];
    let mut heap = Vec::new();
    let slots: &mut [T] = if windows.len() <= INLINE_WINDOWS {
        &mut inline[..windows.len()]
    } else {
        heap.resize(windows.len(), T::default());
        &mut heap
    };
    for (slot, w) in slots.iter_mut().zip(windows) {
        if let Some((_, state)) = stored.iter().find(|(len, _)| *len == w.micros()) {
            *slot = *state;
        }
    }
    let verdict = evaluate(slots);
    for (slot, w) in slots.iter().zip(windows) {
        match stored.iter_mut().find(|(len, _)| *len == w.micros()) {
            Some((_, state)) => *state = *slot,
            None => stored.push((w.micros(), *slot)),
        }
    }
    verdict
}

/// Drops the states of windows of the given lengths; whether none is left.
fn forget<T>(stored: &mut Vec<(u64, T)>, lengths: &[u64]) -> bool {
    stored.retain(|(len, _)| !lengths.contains(len));
    stored.is_empty()
}

/// Drops expired entries; if the shard is still full, the eighth that expires soonest (the keys
/// whose state matters least, usually the least recently used). Not the first eighth in table
/// order: keys sitting early in the table would be evicted again and again while the others
/// stayed forever.
fn make_room(map: &mut HashTable<Entry>, now: u64, capacity: usize) {
    map.retain(|e| e.expires_at_us > now);
    if map.len() >= capacity {
        let evict = (capacity / 8).max(1).min(map.len());
        // Once a shard's worth of inserts: the only allocation of a full backend.
        let mut expiries: Vec<u64> = map.iter().map(|e| e.expires_at_us).collect();
        let (_, threshold, _) = expiries.select_nth_unstable(evict - 1);
        let threshold = *threshold;
        let mut at_threshold = evict - expiries.iter().filter(|&&e| e < threshold).count();
        map.retain(|e| {
            if e.expires_at_us < threshold {
                false
            } else if e.expires_at_us == threshold && at_threshold > 0 {
                at_threshold -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use crate::policy::Window;

    /// As a fallback: permits Redis granted count, and so do permits asked of Redis and not
    /// answered yet, so that whatever Redis answers later, the two never pass the limit.
    #[test]
    fn a_fallback_counts_what_redis_granted_and_what_is_in_flight() {
        let clock = FakeClock::new(1_000_000);
        let memory = MemoryBackend::new(Arc::new(clock.clone()), 1000);
        for algorithm in [
            crate::Algorithm::SlidingWindow,
            crate::Algorithm::TokenBucket,
            crate::Algorithm::FixedWindow,
            crate::Algorithm::SlidingCounter,
        ] {
            // Far from any epoch-aligned boundary of a one-hour window.
            clock.set(3_600_000_000 * 1000 + 1_000_000);
            let policy = Policy::new("p", [Window::per_hour(10)]).with_algorithm(algorithm);
            let id = Identity::new(b"k");
            for _ in 0..4 {
                memory.begin_remote(&policy, id, 1);
                memory.end_remote(&policy, id, 1, 1);
            }
            for _ in 0..3 {
                memory.begin_remote(&policy, id, 1);
            }
            let local = (0..10)
                .filter(|_| {
                    memory
                        .evaluate_counting_pending(&policy, id, 1, true)
                        .allowed
                })
                .count();
            assert_eq!(local, 3, "{algorithm}: 4 granted + 3 in flight leave 3");
            for _ in 0..3 {
                memory.end_remote(&policy, id, 1, 1);
            }
            assert!(
                !memory
                    .evaluate_counting_pending(&policy, id, 1, false)
                    .allowed,
                "{algorithm}: the late grants fill the rest"
            );
            memory.reset(&policy, id);
        }
    }

    /// A full backend forgets the keys that expire soonest, not those that happen to sit early
    /// in its tables: every key inserted in the last eighth of the run is still known.
    #[test]
    fn a_full_backend_evicts_the_keys_that_expire_soonest() {
        let clock = FakeClock::new(1_000_000);
        let memory = MemoryBackend::new(Arc::new(clock.clone()), 6_400);
        let policy = Policy::new("p", [Window::per_hour(1)]);
        let keys: Vec<String> = (0..60_000).map(|i| format!("k{i}")).collect();
        for key in &keys {
            clock.advance(std::time::Duration::from_micros(10));
            assert!(
                memory
                    .evaluate(&policy, Identity::new(key.as_bytes()), 1, true)
                    .allowed
            );
        }
        assert!(memory.len() <= 6_400, "bounded: {}", memory.len());
        // A key the backend still knows has its one permit spent: a peek is denied.
        let known = |keys: &[String]| {
            keys.iter()
                .filter(|k| {
                    !memory
                        .evaluate(&policy, Identity::new(k.as_bytes()), 1, false)
                        .allowed
                })
                .count()
        };
        let recent = &keys[keys.len() - 800..];
        assert_eq!(known(recent), recent.len(), "recent keys were evicted");
        assert_eq!(known(&keys[..6_000]), 0, "the oldest keys should be gone");
    }
}
