//! Invariants an operator can ask a limiter to check, periodically or on demand.
//!
//! - `config_loaded`: the limiter runs a validated configuration.
//! - `redis_healthy`: Redis answers `PING` within the timeout (always true in memory).
//! - `breaker_closed`: decisions are going to Redis, not to the fallback.
//! - `no_stuck_keys`: a bounded `SCAN` of the key prefix (continuing where the previous check
//!   stopped) finds no key without a TTL. Keys are reported by count only: they hold
//!   identities.
//! - `redis_keeps_counts`: every Redis primary's eviction policy cannot pick the limiter's keys
//!   (`noeviction`, or no `maxmemory`), and none evicted a key since the limiter first looked.
//!   A managed Redis that refuses `CONFIG GET` is reported as unknown, which does not hold.

use std::fmt;

use crate::breaker::BreakerState;

/// The outcome of one invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invariant {
    /// Its name (`config_loaded`, `redis_healthy`, `breaker_closed`, `no_stuck_keys`,
    /// `redis_keeps_counts`).
    pub name: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// Every invariant, checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invariants {
    checks: Vec<Invariant>,
}

impl Invariants {
    pub(crate) fn new(checks: Vec<Invariant>) -> Self {
        Self { checks }
    }

    /// Whether every invariant holds.
    pub fn all_ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The invariant named `name`.
    pub fn get(&self, name: &str) -> Option<&Invariant> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Every invariant, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = &Invariant> {
        self.checks.iter()
    }
}

impl fmt::Display for Invariants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            let mark = if check.ok { "ok" } else { "FAILED" };
            writeln!(f, "{}: {mark} ({})", check.name, check.detail)?;
        }
        Ok(())
    }
}

pub(crate) fn breaker(state: Option<BreakerState>) -> Invariant {
    Invariant {
        name: "breaker_closed",
        ok: matches!(state, None | Some(BreakerState::Closed)),
        detail: state
            .map_or("no breaker (in-memory backend)", |s| s.name())
            .to_owned(),
    }
}
