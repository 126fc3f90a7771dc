//! The in-memory backend: one process's state, sharded, bounded, and reclaimed when it expires.
//!
//! State is keyed by policy, algorithm and identity, spread over shards each behind its own
//! mutex, so concurrent callers on different keys rarely meet. Every entry knows when it stops
//! mattering; a shard drops expired entries every few thousand operations and whenever it is
//! full. When a shard is still full after that, the eighth of it that expires soonest is
//! forgotten (those keys start afresh): the bound on memory wins over exactness for the evicted
//! keys.
//!
//! **Layout, for a small footprint and one hash a decision.** A policy (its name and
//! algorithm) gets a small number the first time the backend sees it, so a key is that number
//! and the identity's bytes, kept inline in the entry when they are short (20 bytes: an IPv4
//! address, most user ids). The state of a one-window policy, and a sliding log of up to three
//! entries, are inline too: a typical key costs one 72-byte entry and no allocation of its
//! own. Entries sit densely in a slab a shard (a vector that only grows as far as the shard's
//! bound); the shard's hash table holds 4-byte slab indices, so its doublings cost little. The
//! key's hash, computed once, picks the shard and the table's bucket.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

use hashbrown::HashTable;

use crate::algorithm::{
    CounterPair, FixedCounter, Request, Tat, TimeLog, Verdict, fixed_window, gcra, sliding_counter,
    sliding_log,
};
use crate::clock::Clock;
use crate::key::Identity;
use crate::namespace::{Namespaces, UNNUMBERED};
use crate::policy::{Algorithm, Policy};

const SHARDS: usize = 64;
const SWEEP_EVERY: u32 = 4096;

/// Key bytes kept inside the entry; longer keys go to the heap.
const INLINE_KEY: usize = 20;
/// Sliding-log entries kept inside the entry; a longer log goes to the heap.
const INLINE_LOG: usize = 3;
/// Windows a policy can have without the evaluation touching the heap.
const INLINE_WINDOWS: usize = 8;

/// A key looked up: its namespace, its bytes (the identity's, or for [`UNNUMBERED`] the
/// whole `policy \0 tag \0 identity`), and its hash.
#[derive(Debug, Clone, Copy)]
struct Key<'a> {
    namespace: u16,
    bytes: &'a [u8],
    hash: u64,
}

/// A key as an entry keeps it.
#[derive(Debug)]
enum StoredKey {
    Inline {
        namespace: u16,
        len: u8,
        bytes: [u8; INLINE_KEY],
    },
    Heap {
        namespace: u16,
        bytes: Box<[u8]>,
    },
}

impl StoredKey {
    fn new(key: Key<'_>) -> Self {
        match u8::try_from(key.bytes.len()) {
            Ok(len) if key.bytes.len() <= INLINE_KEY => {
                let mut bytes = [0; INLINE_KEY];
                bytes[..key.bytes.len()].copy_from_slice(key.bytes);
                Self::Inline {
                    namespace: key.namespace,
                    len,
                    bytes,
                }
            }
            _ => Self::Heap {
                namespace: key.namespace,
                bytes: key.bytes.into(),
            },
        }
    }

    fn namespace(&self) -> u16 {
        match self {
            Self::Inline { namespace, .. } | Self::Heap { namespace, .. } => *namespace,
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes, .. } => &bytes[..usize::from(*len)],
            Self::Heap { bytes, .. } => bytes,
        }
    }

    fn is(&self, key: Key<'_>) -> bool {
        self.namespace() == key.namespace && self.bytes() == key.bytes
    }
}

/// Per-window state is kept by window length, as Redis keys it (`:tb:<µs>`, `:fw:<µs>`), so
/// a policy whose windows change keeps the state of the windows it still has. A one-window
/// policy's state is inline (`Bucket`, `Counter`, `Pair`); several windows', or a window
/// that changed, in a vector.
#[derive(Debug)]
enum State {
    /// A sliding log of at most [`INLINE_LOG`] entries.
    ShortLog {
        len: u8,
        times: [u64; INLINE_LOG],
    },
    // Boxed, so that every state fits 32 bytes (a `VecDeque` alone takes 32).
    #[allow(clippy::box_collection)]
    Log(Box<VecDeque<u64>>),
    Bucket(u64, Tat),
    Counter(u64, FixedCounter),
    /// A counter pair whose counts fit 32 bits each: `current << 32 | previous`.
    Pair {
        window: u64,
        number: u64,
        counts: u64,
    },
    Buckets(Vec<(u64, Tat)>),
    Counters(Vec<(u64, FixedCounter)>),
    Pairs(Vec<(u64, CounterPair)>),
}

/// Where [`MemoryBackend::begin_remote`] left a key's pending permits: the key's hash, its
/// policy's number and its entry's slot, so that [`MemoryBackend::end_remote`] finds the entry
/// again without numbering the policy, hashing or probing (it checks that the slot still holds
/// the key).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Marked {
    hash: u64,
    slot: u32,
    namespace: u16,
}

/// Permits asked of Redis and not answered yet, when this backend is a fallback: its own
/// decisions count them as taken (see [`MemoryBackend::evaluate_counting_pending`]). The top
/// bit says whether this backend, as a fallback, admitted a request for this key itself:
/// permits Redis never heard of, which Redis must then not hand out again.
#[derive(Debug, Clone, Copy, Default)]
struct Pending(u64);

const ADMITTED_LOCALLY: u64 = 1 << 63;

impl Pending {
    fn count(self) -> u64 {
        self.0 & !ADMITTED_LOCALLY
    }

    fn set_count(&mut self, count: u64) {
        self.0 = (self.0 & ADMITTED_LOCALLY) | count.min(!ADMITTED_LOCALLY);
    }

    fn admitted_locally(self) -> bool {
        self.0 & ADMITTED_LOCALLY != 0
    }
}

#[derive(Debug)]
struct Entry {
    key: StoredKey,
    state: State,
    expires_at_us: u64,
    pending: Pending,
}

// What a key costs, besides its share of the hash table and what a long key or log allocates.
const _: () = assert!(std::mem::size_of::<Option<Entry>>() == 72);

/// One shard: a slab of entries, and a hash table of their indices.
#[derive(Debug, Default)]
struct Shard {
    table: HashTable<u32>,
    slots: Vec<Option<Entry>>,
    /// Vacant slots, reused before the slab grows.
    free: Vec<u32>,
    ops: u32,
}

impl Shard {
    fn len(&self) -> usize {
        self.table.len()
    }

    fn find_mut(&mut self, key: Key<'_>) -> Option<&mut Entry> {
        let slot = self.find_slot(key)?;
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// The slab slot of `key`'s entry.
    fn find_slot(&self, key: Key<'_>) -> Option<u32> {
        let Self { table, slots, .. } = self;
        table
            .find(key.hash, |&i| {
                slots
                    .get(i as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|e| e.key.is(key))
            })
            .copied()
    }

    /// The entry in `slot`, if it is still `key`'s: a slot freed and given to another key is
    /// not taken for it.
    fn at(&mut self, slot: u32, key: Key<'_>) -> Option<&mut Entry> {
        self.slots
            .get_mut(slot as usize)?
            .as_mut()
            .filter(|e| e.key.is(key))
    }

    /// Inserts `entry` (whose key is not in the shard) under `hash`; `rehash` gives the hash
    /// of an entry when the table grows. The slab grows by doubling, never past `bound`.
    fn insert(
        &mut self,
        hash: u64,
        entry: Entry,
        bound: usize,
        rehash: impl Fn(&Entry) -> u64,
    ) -> Option<u32> {
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = Some(entry);
                index
            }
            None => {
                let index = u32::try_from(self.slots.len()).ok()?;
                if self.slots.len() == self.slots.capacity() {
                    let wanted = (self.slots.len() * 2).clamp(4, bound.max(4));
                    self.slots
                        .reserve_exact(wanted.saturating_sub(self.slots.len()).max(1));
                }
                self.slots.push(Some(entry));
                index
            }
        };
        let Self { table, slots, .. } = self;
        table.insert_unique(hash, index, |&i| {
            slots
                .get(i as usize)
                .and_then(Option::as_ref)
                .map_or(0, &rehash)
        });
        Some(index)
    }

    /// Keeps the entries for which `keep` holds, in table order.
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let Self {
            table, slots, free, ..
        } = self;
        table.retain(|index| {
            let slot = &mut slots[*index as usize];
            let kept = slot.as_ref().is_some_and(&mut keep);
            if !kept {
                *slot = None;
                free.push(*index);
            }
            kept
        });
        if table.is_empty() {
            // Nothing tracked: give the slab back.
            *slots = Vec::new();
            *free = Vec::new();
        }
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.table
            .iter()
            .filter_map(|&i| self.slots.get(i as usize).and_then(Option::as_ref))
    }

    fn remove(&mut self, key: Key<'_>) {
        let Self {
            table, slots, free, ..
        } = self;
        let found = table.find_entry(key.hash, |&i| {
            slots
                .get(i as usize)
                .and_then(Option::as_ref)
                .is_some_and(|e| e.key.is(key))
        });
        if let Ok(found) = found {
            let (index, _) = found.remove();
            slots[index as usize] = None;
            free.push(index);
        }
    }
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
    namespaces: Namespaces,
    shard_capacity: usize,
}

impl MemoryBackend {
    /// A backend reading `clock` and tracking at most about `max_keys` keys.
    pub fn new(clock: Arc<dyn Clock>, max_keys: usize) -> Self {
        Self {
            clock,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            namespaces: Namespaces::new(),
            shard_capacity: max_keys.div_ceil(SHARDS).clamp(1, u32::MAX as usize - 1),
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
        self.evaluate_at(policy, identity, cost, consume, self.clock.now_micros())
    }

    /// [`Self::evaluate`] at `now` (microseconds of this backend's clock), for a caller that
    /// has read the clock already.
    pub(crate) fn evaluate_at(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        cost: u64,
        consume: bool,
        now: u64,
    ) -> Verdict {
        let request = Request { cost, consume };
        self.with_key(policy, identity, |key| {
            let mut shard = self.shard(key.hash);
            shard.ops = shard.ops.wrapping_add(1);
            if shard.ops.is_multiple_of(SWEEP_EVERY) {
                shard.retain(|e| e.expires_at_us > now);
            }
            if let Some(entry) = shard.find_mut(key) {
                let verdict = apply(&mut entry.state, policy, now, request);
                entry.expires_at_us = verdict.expires_at_us;
                return verdict;
            }
            let mut state = fresh(policy);
            let verdict = apply(&mut state, policy, now, request);
            if verdict.expires_at_us > now {
                if shard.len() >= self.shard_capacity {
                    make_room(&mut shard, now, self.shard_capacity);
                }
                let entry = Entry {
                    key: StoredKey::new(key),
                    state,
                    expires_at_us: verdict.expires_at_us,
                    pending: Pending::default(),
                };
                shard.insert(key.hash, entry, self.shard_capacity, |e| self.rehash(e));
            }
            verdict
        })
    }

    /// Marks `cost` permits of `identity` as asked of Redis, answer pending. For the `local`
    /// fallback: while they are in flight, its own decisions count them as taken, so that an
    /// admission Redis is about to grant and one made here never add up past the limit.
    ///
    /// Returns where the entry is, for [`Self::end_remote`].
    pub(crate) fn begin_remote(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        cost: u64,
    ) -> Option<Marked> {
        let now = self.clock.now_micros();
        let keep_until = now.saturating_add(policy.longest_window_micros());
        let ((), marked) = self.with_entry_marked(policy, identity, now, |entry| {
            entry
                .pending
                .set_count(entry.pending.count().saturating_add(cost));
            entry.expires_at_us = entry.expires_at_us.max(keep_until);
        });
        marked
    }

    /// The Redis call marked by [`Self::begin_remote`] ended; Redis granted `granted` permits
    /// (0 when it denied, failed or was abandoned: then the caller's answer, if any, came from
    /// here and was counted here). Granted permits are recorded like local admissions, so that
    /// a fallback taking over knows this instance's admissions. Returns `false` when they did
    /// not fit because this backend, as a fallback, admitted requests for the key itself,
    /// which Redis never heard of. (Without such admissions the count here only trails
    /// Redis's, by the round trip at a window's edge, and Redis's answer stands.)
    ///
    /// `marked`, what `begin_remote` returned, finds the entry without hashing the key or
    /// probing the table; when its slot no longer holds the key, the key is looked up.
    pub(crate) fn end_remote(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        cost: u64,
        granted: u64,
        marked: Option<Marked>,
    ) -> bool {
        let now = self.clock.now_micros();
        let settle = |entry: &mut Entry| {
            entry
                .pending
                .set_count(entry.pending.count().saturating_sub(cost));
            if granted == 0 {
                return true;
            }
            let request = Request {
                cost: granted,
                consume: true,
            };
            let verdict = apply(&mut entry.state, policy, now, request);
            entry.expires_at_us = entry.expires_at_us.max(verdict.expires_at_us);
            verdict.allowed || !entry.pending.admitted_locally()
        };
        if let Some(Marked {
            hash,
            slot,
            namespace,
        }) = marked
        {
            // A key of an unnumbered policy is not its identity's bytes: looked up below.
            if namespace != UNNUMBERED {
                let key = Key {
                    namespace,
                    bytes: identity.as_bytes(),
                    hash,
                };
                if let Some(entry) = self.shard(hash).at(slot, key) {
                    return settle(entry);
                }
            }
        }
        self.with_entry(policy, identity, now, settle)
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
            let pending = entry.pending.count();
            if pending > 0 {
                let with_pending = Request {
                    cost: cost.saturating_add(pending),
                    consume: false,
                };
                let check = apply(&mut entry.state, policy, now, with_pending);
                if !check.allowed {
                    return check;
                }
            }
            let decided = apply(&mut entry.state, policy, now, Request { cost, consume });
            entry.expires_at_us = entry.expires_at_us.max(decided.expires_at_us);
            if decided.allowed && consume && cost > 0 {
                entry.pending.0 |= ADMITTED_LOCALLY;
            }
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
        self.with_entry_marked(policy, identity, now, f).0
    }

    /// [`Self::with_entry`], telling where the entry is kept (`None` when it was not kept).
    fn with_entry_marked<R>(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        now: u64,
        f: impl FnOnce(&mut Entry) -> R,
    ) -> (R, Option<Marked>) {
        self.with_key(policy, identity, |key| {
            let mut shard = self.shard(key.hash);
            shard.ops = shard.ops.wrapping_add(1);
            if shard.ops.is_multiple_of(SWEEP_EVERY) {
                shard.retain(|e| e.expires_at_us > now || e.pending.count() > 0);
            }
            let marked = |slot| Marked {
                hash: key.hash,
                slot,
                namespace: key.namespace,
            };
            if let Some(slot) = shard.find_slot(key)
                && let Some(entry) = shard.slots.get_mut(slot as usize).and_then(Option::as_mut)
            {
                return (f(entry), Some(marked(slot)));
            }
            if shard.len() >= self.shard_capacity {
                make_room(&mut shard, now, self.shard_capacity);
            }
            let mut entry = Entry {
                key: StoredKey::new(key),
                state: fresh(policy),
                expires_at_us: now,
                pending: Pending::default(),
            };
            let result = f(&mut entry);
            let mut kept = None;
            if entry.expires_at_us > now || entry.pending.count() > 0 {
                kept = shard.insert(key.hash, entry, self.shard_capacity, |e| self.rehash(e));
            }
            (result, kept.map(marked))
        })
    }

    /// Forgets the state of `identity` under `policy`.
    pub fn reset(&self, policy: &Policy, identity: Identity<'_>) {
        self.with_key(policy, identity, |key| {
            let mut shard = self.shard(key.hash);
            let Some(entry) = shard.find_mut(key) else {
                return;
            };
            // As in Redis, only the policy's own windows are forgotten (one log serves them all).
            let windows = policy.windows();
            let forgotten = |len: &u64| windows.iter().any(|w| w.micros() == *len);
            let emptied = match &mut entry.state {
                State::ShortLog { .. } | State::Log(_) => true,
                State::Bucket(len, _)
                | State::Counter(len, _)
                | State::Pair { window: len, .. } => forgotten(len),
                State::Buckets(stored) => forget(stored, forgotten),
                State::Counters(stored) => forget(stored, forgotten),
                State::Pairs(stored) => forget(stored, forgotten),
            };
            if emptied {
                shard.remove(key);
            }
        });
    }

    /// The number of keys tracked now (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
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
            shard.retain(|e| e.expires_at_us > now);
        }
    }

    /// Runs `f` on the key of `identity` under `policy`, hashed once.
    fn with_key<R>(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        f: impl FnOnce(Key<'_>) -> R,
    ) -> R {
        self.namespaces
            .with_key(policy, identity, |namespace, bytes| {
                f(Key {
                    namespace,
                    bytes,
                    hash: self.hash(namespace, bytes),
                })
            })
    }

    fn hash(&self, namespace: u16, bytes: &[u8]) -> u64 {
        // The seeded hash of the bytes, told apart by namespace (an odd multiplier spreads
        // the number over every bit).
        self.hasher.hash_one(bytes) ^ u64::from(namespace).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn rehash(&self, entry: &Entry) -> u64 {
        self.hash(entry.key.namespace(), entry.key.bytes())
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

/// The state of a key not seen yet: inline for one window.
fn fresh(policy: &Policy) -> State {
    let one = match policy.windows() {
        [only] => Some(only.micros()),
        _ => None,
    };
    match (policy.algorithm(), one) {
        (Algorithm::SlidingWindow, _) => State::ShortLog {
            len: 0,
            times: [0; INLINE_LOG],
        },
        (Algorithm::TokenBucket, Some(len)) => State::Bucket(len, Tat::default()),
        (Algorithm::FixedWindow, Some(len)) => State::Counter(len, FixedCounter::default()),
        (Algorithm::SlidingCounter, Some(len)) => State::Pair {
            window: len,
            number: 0,
            counts: 0,
        },
        (Algorithm::TokenBucket, None) => State::Buckets(Vec::new()),
        (Algorithm::FixedWindow, None) => State::Counters(Vec::new()),
        (Algorithm::SlidingCounter, None) => State::Pairs(Vec::new()),
    }
}

fn apply(state: &mut State, policy: &Policy, now: u64, request: Request) -> Verdict {
    let windows = policy.windows();
    // The inline states of a one-window policy whose window has not changed.
    if let [only] = windows {
        let len = only.micros();
        match state {
            State::Bucket(window, tat) if *window == len => {
                return gcra(std::slice::from_mut(tat), windows, now, request);
            }
            State::Counter(window, counter) if *window == len => {
                return fixed_window(std::slice::from_mut(counter), windows, now, request);
            }
            State::Pair {
                window,
                number,
                counts,
            } if *window == len => {
                let mut pair = [CounterPair {
                    number: *number,
                    current: *counts >> 32,
                    previous: *counts & u64::from(u32::MAX),
                }];
                let verdict = sliding_counter(&mut pair, windows, now, request);
                let [pair] = pair;
                match (u32::try_from(pair.current), u32::try_from(pair.previous)) {
                    (Ok(current), Ok(previous)) => {
                        *number = pair.number;
                        *counts = u64::from(current) << 32 | u64::from(previous);
                    }
                    _ => *state = State::Pairs(vec![(len, pair)]),
                }
                return verdict;
            }
            _ => {}
        }
    }
    match state {
        State::ShortLog { .. } | State::Log(_) => {
            sliding_log(&mut LogState(state), windows, now, request)
        }
        State::Bucket(..) | State::Counter(..) | State::Pair { .. } => {
            // The policy's windows changed: the kept window's state goes into a vector.
            widen(state);
            apply(state, policy, now, request)
        }
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

/// A one-window state as the vector of several windows' states.
fn widen(state: &mut State) {
    let wide = match *state {
        State::Bucket(len, tat) => State::Buckets(vec![(len, tat)]),
        State::Counter(len, counter) => State::Counters(vec![(len, counter)]),
        State::Pair {
            window,
            number,
            counts,
        } => State::Pairs(vec![(
            window,
            CounterPair {
                number,
                current: counts >> 32,
                previous: counts & u64::from(u32::MAX),
            },
        )]),
        _ => return,
    };
    *state = wide;
}

/// A sliding log kept in an entry: inline while short, on the heap once longer.
struct LogState<'a>(&'a mut State);

impl TimeLog for LogState<'_> {
    fn len(&self) -> usize {
        match &*self.0 {
            State::ShortLog { len, .. } => usize::from(*len),
            State::Log(log) => log.len(),
            _ => 0,
        }
    }

    fn get(&self, index: usize) -> Option<u64> {
        match &*self.0 {
            State::ShortLog { len, times } => times[..usize::from(*len)].get(index).copied(),
            State::Log(log) => log.get(index).copied(),
            _ => None,
        }
    }

    fn partition_point(&self, pred: impl Fn(u64) -> bool) -> usize {
        match &*self.0 {
            State::ShortLog { len, times } => {
                times[..usize::from(*len)].partition_point(|&s| pred(s))
            }
            State::Log(log) => log.partition_point(|&s| pred(s)),
            _ => 0,
        }
    }

    fn pop_front(&mut self) {
        match self.0 {
            State::ShortLog { len, times } if *len > 0 => {
                times.copy_within(1..usize::from(*len), 0);
                *len -= 1;
            }
            State::Log(log) => {
                log.pop_front();
            }
            _ => {}
        }
    }

    fn push_back(&mut self, at: u64, times: u64) {
        match self.0 {
            State::ShortLog { len, times: inline }
                if usize::from(*len) as u64 + times <= INLINE_LOG as u64 =>
            {
                for _ in 0..times {
                    inline[usize::from(*len)] = at;
                    *len += 1;
                }
            }
            State::ShortLog { len, times: inline } => {
                let held = &inline[..usize::from(*len)];
                let wanted = usize::try_from(times).unwrap_or(usize::MAX);
                let mut log = VecDeque::with_capacity(held.len().saturating_add(wanted));
                log.extend(held);
                TimeLog::push_back(&mut log, at, times);
                *self.0 = State::Log(Box::new(log));
            }
            State::Log(log) => TimeLog::push_back(&mut **log, at, times),
            _ => {}
        }
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

/// Drops the states of the windows `forgotten` names; whether none is left.
fn forget<T>(stored: &mut Vec<(u64, T)>, forgotten: impl Fn(&u64) -> bool) -> bool {
    stored.retain(|(len, _)| !forgotten(len));
    stored.is_empty()
}

/// Drops expired entries; if the shard is still full, the eighth that expires soonest (the keys
/// whose state matters least, usually the least recently used). Not the first eighth in table
/// order: keys sitting early in the table would be evicted again and again while the others
/// stayed forever.
fn make_room(shard: &mut Shard, now: u64, capacity: usize) {
    shard.retain(|e| e.expires_at_us > now);
    if shard.len() >= capacity {
        let evict = (capacity / 8).max(1).min(shard.len());
        // Once a shard's worth of inserts: the only allocation of a full backend.
        let mut expiries: Vec<u64> = shard.entries().map(|e| e.expires_at_us).collect();
        let (_, threshold, _) = expiries.select_nth_unstable(evict - 1);
        let threshold = *threshold;
        let mut at_threshold = evict - expiries.iter().filter(|&&e| e < threshold).count();
        shard.retain(|e| {
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
                let marked = memory.begin_remote(&policy, id, 1);
                assert!(marked.is_some(), "{algorithm}: kept while pending");
                assert!(memory.end_remote(&policy, id, 1, 1, marked));
            }
            // Ended without their marks below: the key is looked up.
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
                memory.end_remote(&policy, id, 1, 1, None);
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

    /// A mark whose slot was given to another key meanwhile is not followed: the marked key is
    /// looked up (and its grant recorded there), the other keeps its own pending permits.
    #[test]
    fn a_mark_whose_slot_went_to_another_key_is_not_followed() {
        let clock = FakeClock::new(3_600_000_000 * 1000 + 1_000_000);
        let memory = MemoryBackend::new(Arc::new(clock.clone()), 1000);
        let policy =
            Policy::new("p", [Window::per_hour(2)]).with_algorithm(crate::Algorithm::FixedWindow);
        let shard_of =
            |id: Identity<'_>| memory.with_key(&policy, id, |key| key.hash >> 32) % SHARDS as u64;
        let a = Identity::new(b"a");
        let names: Vec<String> = (0..10_000).map(|i| format!("b{i}")).collect();
        let b = names
            .iter()
            .map(|name| Identity::new(name.as_bytes()))
            .find(|&b| shard_of(b) == shard_of(a))
            .expect("a key in a's shard");

        let marked_a = memory.begin_remote(&policy, a, 1).expect("kept");
        memory.reset(&policy, a);
        let marked_b = memory.begin_remote(&policy, b, 1).expect("kept");
        assert_eq!(marked_a.slot, marked_b.slot, "b took a's slot");

        assert!(memory.end_remote(&policy, a, 1, 1, Some(marked_a)));
        assert!(
            !memory
                .evaluate_counting_pending(&policy, a, 2, false)
                .allowed,
            "a's grant is recorded under a"
        );
        assert!(
            memory
                .evaluate_counting_pending(&policy, b, 1, false)
                .allowed
                && !memory
                    .evaluate_counting_pending(&policy, b, 2, false)
                    .allowed,
            "b keeps its pending permit and nothing else"
        );
        assert!(memory.end_remote(&policy, b, 1, 0, Some(marked_b)));
        assert!(
            memory
                .evaluate_counting_pending(&policy, b, 2, false)
                .allowed
        );
    }

    /// The compact layouts answer like the plain ones: a key too long to be inline, a policy
    /// beyond the numbered ones, a one-window state whose window changes (the kept window's
    /// state survives, as in Redis), a sliding log that outgrows its inline room, and counts
    /// too large to pack.
    #[test]
    fn compact_entries_keep_every_answer() {
        let clock = FakeClock::new(3_600_000_000 * 1000 + 1_000_000);
        let memory = MemoryBackend::new(Arc::new(clock.clone()), 100_000);
        let long = [b'x'; 64];
        for algorithm in [
            crate::Algorithm::SlidingWindow,
            crate::Algorithm::TokenBucket,
            crate::Algorithm::FixedWindow,
            crate::Algorithm::SlidingCounter,
        ] {
            let policy = Policy::new("p", [Window::per_hour(5)]).with_algorithm(algorithm);
            for id in [&b"short"[..], &long[..]] {
                let admitted = (0..8)
                    .filter(|_| memory.evaluate(&policy, Identity::new(id), 1, true).allowed)
                    .count();
                assert_eq!(admitted, 5, "{algorithm}, {} bytes", id.len());
            }
            // The same name with a second window: the hour's count is kept.
            let wider = Policy::new("p", [Window::per_hour(5), Window::per_minute(100)])
                .with_algorithm(algorithm);
            assert!(
                !memory
                    .evaluate(&wider, Identity::new(b"short"), 1, false)
                    .allowed,
                "{algorithm}: the hour's state survives a change of windows"
            );
            // More policies than numbers: the rest still keep their keys apart.
            for n in 0..crate::namespace::NAMESPACES + 8 {
                let other = Policy::new(format!("other-{n}"), [Window::per_hour(1)])
                    .with_algorithm(algorithm);
                assert!(
                    memory
                        .evaluate(&other, Identity::new(b"k"), 1, true)
                        .allowed
                );
                assert!(
                    !memory
                        .evaluate(&other, Identity::new(b"k"), 1, true)
                        .allowed
                );
            }
        }
        let huge = Policy::new("huge", [Window::per_hour(u64::from(u32::MAX) * 4)])
            .with_algorithm(crate::Algorithm::SlidingCounter);
        let id = Identity::new(b"k");
        let big = u64::from(u32::MAX) * 3;
        assert!(memory.evaluate(&huge, id, big, true).allowed);
        let left = memory.evaluate(&huge, id, 1, false);
        assert_eq!(left.remaining, u64::from(u32::MAX));
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
