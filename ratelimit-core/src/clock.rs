//! Time for the in-memory backend and the local cache.
//!
//! Redis decisions never read this clock: their scripts ask Redis for `TIME`, so instances whose
//! clocks disagree still agree on every decision. The in-memory backend needs a clock of its own,
//! and tests need to drive it, so it is a trait with a real and a fake implementation.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of time in microseconds since the Unix epoch.
///
/// Implementations must never go backwards; [`SystemClock`] reads a monotonic clock anchored to
/// the wall clock once at start, so a wall-clock step does not move it.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
}

/// The real clock: monotonic, anchored to the wall clock when created.
///
/// It reads [`quanta`]'s clock (the CPU's time-stamp counter where it is invariant, the OS's
/// monotonic clock otherwise): a few nanoseconds a read instead of a `clock_gettime` call, which
/// matters on the paths that make no round trip.
///
/// ```
/// use ratelimit_core::{Clock, SystemClock};
/// let clock = SystemClock::new();
/// assert!(clock.now_micros() > 1_600_000_000_000_000);
/// ```
#[derive(Debug, Clone)]
pub struct SystemClock {
    clock: quanta::Clock,
    anchor_raw: u64,
    anchor_micros: u64,
}

impl SystemClock {
    /// Anchors a new clock to the current wall-clock time.
    pub fn new() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let clock = quanta::Clock::new();
        Self {
            anchor_raw: clock.raw(),
            clock,
            anchor_micros: micros(since_epoch),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_micros(&self) -> u64 {
        let nanos = self.clock.delta_as_nanos(self.anchor_raw, self.clock.raw());
        self.anchor_micros + nanos / 1_000
    }
}

/// A clock that moves only when told to: for deterministic tests.
///
/// Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::{Clock, FakeClock};
/// let clock = FakeClock::new(1_000);
/// clock.advance(Duration::from_millis(2));
/// assert_eq!(clock.now_micros(), 3_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
}

impl FakeClock {
    /// A fake clock reading `micros` microseconds since the epoch.
    pub fn new(micros: u64) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(micros)),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(micros(by), Ordering::SeqCst);
    }

    /// Sets the clock; refuses to go backwards (it keeps the later time).
    pub fn set(&self, micros: u64) {
        self.now.fetch_max(micros, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_micros(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// A duration in whole microseconds, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
