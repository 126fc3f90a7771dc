//! A circuit breaker in front of Redis.
//!
//! Closed: every call goes to Redis; `threshold` consecutive failures (errors or timeouts) open
//! it. Open: nothing goes to Redis, the fallback answers. After `cool_down`, exactly one caller
//! is let through as a probe; its success closes the breaker, its failure opens it for another
//! cool-down. Lock-free: a few atomics, read on every decision.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::micros;

/// The breaker's state, for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go to Redis.
    Closed,
    /// Calls go to the fallback.
    Open,
    /// One probe is in flight; other calls go to the fallback.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Whether a call may go to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Call,
    /// Go ahead: this call is the probe that decides whether to close.
    Probe,
    /// Do not call; use the fallback.
    Reject,
}

/// Counts of transitions, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerStats {
    /// Times the breaker opened (from closed or after a failed probe).
    pub opened: u64,
    /// Times it closed after a successful probe.
    pub closed: u64,
    /// Calls rejected while open.
    pub rejected: u64,
}

/// The circuit breaker. Time is passed in (µs), so tests can drive it.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::BreakerState;
/// use ratelimit_core::test_util::{Admission, CircuitBreaker};
/// let breaker = CircuitBreaker::new(2, Duration::from_secs(1));
/// breaker.on_failure(0);
/// breaker.on_failure(0);
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert_eq!(breaker.admit(500_000), Admission::Reject);
/// assert_eq!(breaker.admit(1_000_000), Admission::Probe);
/// assert_eq!(breaker.admit(1_000_001), Admission::Reject); // one probe at a time
/// breaker.on_success();
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cool_down_us: u64,
    failures: AtomicU32,
    open: AtomicBool,
    opened_at_us: AtomicU64,
    probing: AtomicBool,
    opened: AtomicU64,
    closed: AtomicU64,
    rejected: AtomicU64,
}

impl CircuitBreaker {
    /// Opens after `threshold` consecutive failures, probes after `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down_us: micros(cool_down),
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            opened_at_us: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Whether a call at `now_us` may go to Redis.
    pub fn admit(&self, now_us: u64) -> Admission {
        if !self.open.load(Ordering::Acquire) {
            return Admission::Call;
        }
        let opened_at = self.opened_at_us.load(Ordering::Acquire);
        if now_us >= opened_at.saturating_add(self.cool_down_us)
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Admission::Probe;
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Admission::Reject
    }

    /// Records a successful call: closes an open breaker, resets the failure count.
    pub fn on_success(&self) {
        self.failures.store(0, Ordering::Release);
        if self.open.swap(false, Ordering::AcqRel) {
            self.closed.fetch_add(1, Ordering::Relaxed);
        }
        self.probing.store(false, Ordering::Release);
    }

    /// Records a failed call at `now_us`: opens the breaker at the threshold, or again after a
    /// failed probe.
    pub fn on_failure(&self, now_us: u64) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let was_open = self.open.load(Ordering::Acquire);
        if was_open || failures >= self.threshold {
            self.opened_at_us.store(now_us, Ordering::Release);
            if !self.open.swap(true, Ordering::AcqRel) || self.probing.load(Ordering::Acquire) {
                self.opened.fetch_add(1, Ordering::Relaxed);
            }
            self.probing.store(false, Ordering::Release);
        }
    }

    /// The state now.
    pub fn state(&self) -> BreakerState {
        match (
            self.open.load(Ordering::Acquire),
            self.probing.load(Ordering::Acquire),
        ) {
            (false, _) => BreakerState::Closed,
            (true, false) => BreakerState::Open,
            (true, true) => BreakerState::HalfOpen,
        }
    }

    /// Transition counts so far.
    pub fn stats(&self) -> BreakerStats {
        BreakerStats {
            opened: self.opened.load(Ordering::Relaxed),
            closed: self.closed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successes_between_failures_keep_it_closed() {
        let breaker = CircuitBreaker::new(3, Duration::from_secs(1));
        for _ in 0..10 {
            breaker.on_failure(0);
            breaker.on_failure(0);
            breaker.on_success();
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.stats().opened, 0);
    }

    #[test]
    fn a_failed_probe_reopens_for_another_cool_down() {
        let breaker = CircuitBreaker::new(1, Duration::from_secs(1));
        breaker.on_failure(0);
        assert_eq!(breaker.admit(1_000_000), Admission::Probe);
        breaker.on_failure(1_000_000);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit(1_500_000), Admission::Reject);
        assert_eq!(breaker.admit(2_000_000), Admission::Probe);
        breaker.on_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        let stats = breaker.stats();
        assert_eq!((stats.opened, stats.closed, stats.rejected), (2, 1, 1));
    }
}
