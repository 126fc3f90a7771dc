//! What answers while Redis cannot: `open` allows, `closed` denies, `local` runs the same
//! policy in this instance's memory.
//!
//! A local fallback keeps each instance within the policy on its own, so across N instances up
//! to N times the limit can pass while Redis is away. It knows what this instance admitted
//! through Redis and what it has asked of Redis without an answer yet (see [`InFlight`]), so
//! one instance never passes the limit across the switch, whenever it happens. Its counts are not merged into Redis when
//! Redis returns; they stay in memory, expiring with their windows, and count again if Redis
//! fails again before they expire (so a flapping Redis cannot reset a client's local quota).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::backend::Marked;
use crate::backend::MemoryBackend;
use crate::clock::Clock;
use crate::decision::{Decision, FallbackMode, Source};
use crate::key::Identity;
use crate::policy::Policy;

/// The fallback of one limiter.
#[derive(Debug)]
pub(crate) struct Fallback {
    mode: FallbackMode,
    local: Option<MemoryBackend>,
    retry_after: Duration,
    events: AtomicU64,
}

impl Fallback {
    pub(crate) fn new(
        mode: FallbackMode,
        clock: Arc<dyn Clock>,
        max_keys: usize,
        retry_after: Duration,
    ) -> Self {
        Self {
            mode,
            local: (mode == FallbackMode::Local).then(|| MemoryBackend::new(clock, max_keys)),
            retry_after,
            events: AtomicU64::new(0),
        }
    }

    pub(crate) fn mode(&self) -> FallbackMode {
        self.mode
    }

    /// Keys the `local` fallback tracks now (0 for the other modes).
    pub(crate) fn local_keys(&self) -> usize {
        self.local.as_ref().map_or(0, MemoryBackend::len)
    }

    /// Decisions made by the fallback so far.
    pub(crate) fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    pub(crate) fn decide(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        cost: u64,
        consume: bool,
    ) -> Decision {
        self.events.fetch_add(1, Ordering::Relaxed);
        match (&self.local, self.mode) {
            (Some(local), _) => {
                let verdict = local.evaluate_counting_pending(policy, identity, cost, consume);
                Decision::from_outcome(
                    verdict.outcome(),
                    policy.windows(),
                    Source::Fallback(FallbackMode::Local),
                )
            }
            (None, FallbackMode::Closed) => Decision::fallback(
                false,
                policy.windows(),
                FallbackMode::Closed,
                self.retry_after,
            ),
            (None, mode) => Decision::fallback(true, policy.windows(), mode, self.retry_after),
        }
    }

    /// Marks a consuming Redis call for `cost` permits as sent (see [`InFlight`]); nothing
    /// unless the mode is `local`.
    pub(crate) fn sent<'a>(
        &'a self,
        policy: &'a Policy,
        identity: Identity<'a>,
        cost: u64,
    ) -> InFlight<'a> {
        let local = self.local.as_ref();
        let marked = local.and_then(|local| local.begin_remote(policy, identity, cost));
        InFlight {
            local,
            policy,
            identity,
            cost,
            marked,
        }
    }

    pub(crate) fn reset(&self, policy: &Policy, identity: Identity<'_>) {
        if let Some(local) = &self.local {
            local.reset(policy, identity);
        }
    }
}

/// A consuming call on its way to Redis, as the `local` fallback sees it.
///
/// While it is in flight, the fallback's own decisions count its permits as taken; when it
/// ends, the permits Redis granted are recorded as this instance's admissions. So the fallback
/// starts from what this instance admitted, never from an empty state, and an admission Redis
/// grants while the fallback decides other requests (a timeout, then a late reply) never adds
/// up past the limit with the fallback's own. Dropped unanswered (a failure, a timeout, a
/// caller that gave up), it grants nothing: that caller's answer, if any, comes from the
/// fallback and is counted there.
pub(crate) struct InFlight<'a> {
    local: Option<&'a MemoryBackend>,
    policy: &'a Policy,
    identity: Identity<'a>,
    cost: u64,
    /// Where the permits are kept pending, to find them again without a look-up.
    marked: Option<Marked>,
}

impl InFlight<'_> {
    /// Redis answered: `granted` permits (0 when it denied). Returns `false` when the granted
    /// permits do not fit what this instance admitted: its fallback admitted the rest of the
    /// limit while Redis could not answer, and Redis, which never heard of those, must not
    /// hand them out again.
    pub(crate) fn answered(mut self, granted: u64) -> bool {
        match self.local.take() {
            Some(local) => {
                local.end_remote(self.policy, self.identity, self.cost, granted, self.marked)
            }
            None => true,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(local) = self.local {
            local.end_remote(self.policy, self.identity, self.cost, 0, self.marked);
        }
    }
}
