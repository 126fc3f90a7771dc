//! Fixed windows aligned to the epoch (`fixed_window.lua`).

use super::binding::{Binding, Candidate};
use super::{Request, Verdict};
use crate::policy::Window;

/// The counter of one fixed window: which window (time / length) and how much it has spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FixedCounter {
    /// `floor(time / window length)` of the window counted.
    pub number: u64,
    /// Permits spent in it.
    pub count: u64,
}

/// Evaluates fixed windows, one [`FixedCounter`] a window. Up to twice the limit can pass within
/// one window's length across a boundary: the price of one counter a key.
///
/// ```
/// use ratelimit_core::test_util::algorithm::{fixed_window, FixedCounter, Request};
/// use ratelimit_core::Window;
/// let windows = [Window::per_second(1)];
/// let mut counters = [FixedCounter::default()];
/// let allow = Request { cost: 1, consume: true };
/// assert!(fixed_window(&mut counters, &windows, 999_999, allow).allowed);
/// assert!(fixed_window(&mut counters, &windows, 1_000_000, allow).allowed); // next window
/// assert!(!fixed_window(&mut counters, &windows, 1_000_001, allow).allowed);
/// ```
pub fn fixed_window(
    counters: &mut [FixedCounter],
    windows: &[Window],
    now: u64,
    request: Request,
) -> Verdict {
    let count_now = |c: &FixedCounter, window: u64| {
        if c.number == now / window { c.count } else { 0 }
    };
    let allowed = windows
        .iter()
        .zip(counters.iter())
        .all(|(w, c)| count_now(c, w.micros()) + request.cost <= w.max_requests());
    let consume = allowed && request.consume && request.cost > 0;
    let mut binding = Binding::default();
    let mut expires_at_us = now;
    for (index, (w, counter)) in windows.iter().zip(counters.iter_mut()).enumerate() {
        let window = w.micros();
        let number = now / window;
        let end = (number + 1) * window;
        let mut count = count_now(counter, window);
        if consume {
            count += request.cost;
            *counter = FixedCounter { number, count };
        }
        if counter.number == number && counter.count > 0 {
            expires_at_us = expires_at_us.max(end);
        }
        let retry_after_us = if !allowed && count + request.cost > w.max_requests() {
            end - now
        } else {
            0
        };
        binding.consider(
            allowed,
            Candidate {
                index,
                remaining: w.max_requests().saturating_sub(count),
                reset_after_us: if count > 0 { end - now } else { 0 },
                retry_after_us,
            },
        );
    }
    binding.verdict(allowed, expires_at_us)
}
