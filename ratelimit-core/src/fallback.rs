//! What answers while Redis cannot: `open` allows, `closed` denies, `local` runs the same
//! policy in this instance's memory.
//!
//! A local fallback keeps each instance within the policy on its own, so across N instances up
//! to N times the limit can pass while Redis is away. Its counts are not merged into Redis when
//! Redis returns; they stay in memory, expiring with their windows, and count again if Redis
//! fails again before they expire (so a flapping Redis cannot reset a client's local quota).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
                let verdict = local.evaluate(policy, identity, cost, consume);
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

    /// Records permits Redis granted this instance, so that a `local` fallback taking over
    /// counts them: one instance never admits more than the limit across the switch.
    /// Recorded like any local admission; when the local count is already full (permits the
    /// fallback admitted during an earlier outage), nothing more is recorded.
    pub(crate) fn remember(&self, policy: &Policy, identity: Identity<'_>, granted: u64) {
        if let Some(local) = &self.local {
            local.evaluate(policy, identity, granted, true);
        }
    }

    pub(crate) fn reset(&self, policy: &Policy, identity: Identity<'_>) {
        if let Some(local) = &self.local {
            local.reset(policy, identity);
        }
    }
}
