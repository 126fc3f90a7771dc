//! The sliding window counter (`sliding_counter.lua`): two fixed-window counts, the previous
//! one weighted by how much of it the sliding window still covers.

use super::binding::{Binding, Candidate};
use super::{Request, Verdict};
use crate::policy::Window;

/// The counts of one window: the current fixed window's and the one before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterPair {
    /// `floor(time / window length)` of the current window.
    pub number: u64,
    /// Permits spent in window `number`.
    pub current: u64,
    /// Permits spent in window `number - 1`.
    pub previous: u64,
}

impl CounterPair {
    /// The pair as seen from window `number`: older counts roll over or drop out.
    fn at(self, number: u64) -> CounterPair {
        if self.number == number {
            self
        } else if self.number + 1 == number {
            CounterPair {
                number,
                current: 0,
                previous: self.current,
            }
        } else {
            CounterPair {
                number,
                current: 0,
                previous: 0,
            }
        }
    }
}

/// Evaluates sliding window counters, one [`CounterPair`] a window: a request fits when
/// `current + cost + previous x (share of the previous window still inside the sliding window)`
/// stays within the limit. Constant memory a key (three numbers), like a fixed window, without
/// its double burst at the boundary; the price is that the previous window is assumed to have
/// been spent evenly, so a sliding window can hold somewhat more than the limit when it was not
/// (measured in `docs/Performance.md`). All arithmetic is on integers below 2^53, like the
/// script's.
///
/// ```
/// use ratelimit_core::test_util::algorithm::{sliding_counter, CounterPair, Request};
/// use ratelimit_core::Window;
/// let windows = [Window::per_second(10)];
/// let mut pairs = [CounterPair::default()];
/// let allow = Request { cost: 1, consume: true };
/// for _ in 0..10 {
///     assert!(sliding_counter(&mut pairs, &windows, 900_000, allow).allowed);
/// }
/// // A quarter into the next second, 75% of the previous 10 still count: 2 fit, not 10.
/// let mut admitted = 0;
/// for _ in 0..10 {
///     admitted += u32::from(sliding_counter(&mut pairs, &windows, 1_250_000, allow).allowed);
/// }
/// assert_eq!(admitted, 2);
/// ```
pub fn sliding_counter(
    pairs: &mut [CounterPair],
    windows: &[Window],
    now: u64,
    request: Request,
) -> Verdict {
    let cost = request.cost;
    let fits = |pair: &CounterPair, w: &Window| {
        let window = w.micros();
        let limit = w.max_requests();
        let pair = pair.at(now / window);
        let elapsed = now % window;
        pair.current + cost <= limit
            && pair.previous * (window - elapsed) <= (limit - pair.current - cost) * window
    };
    let allowed = windows.iter().zip(pairs.iter()).all(|(w, p)| fits(p, w));
    let consume = allowed && request.consume && cost > 0;
    let mut binding = Binding::default();
    let mut expires_at_us = now;
    for (index, (w, stored)) in windows.iter().zip(pairs.iter_mut()).enumerate() {
        let window = w.micros();
        let limit = w.max_requests();
        let number = now / window;
        let start = number * window;
        let elapsed = now - start;
        let mut pair = stored.at(number);
        if consume {
            pair.current += cost;
            *stored = pair;
        }
        let weighted = (pair.previous * (window - elapsed)).div_ceil(window);
        let remaining = limit.saturating_sub(pair.current + weighted);
        let reset_after_us = if pair.current > 0 {
            start + 2 * window - now
        } else if pair.previous > 0 {
            start + window - now
        } else {
            0
        };
        if pair.current > 0 {
            expires_at_us = expires_at_us.max(start + 2 * window);
        } else if pair.previous > 0 {
            expires_at_us = expires_at_us.max(start + window);
        }
        let retry_after_us = if allowed || fits(&pair, w) {
            0
        } else if pair.current + cost > limit {
            // Only once this window is the previous one, and enough of it has slid out.
            let keep = (limit - cost) * window / pair.current;
            start + window + (window - keep.min(window)) - now
        } else {
            let keep = (limit - pair.current - cost) * window / pair.previous.max(1);
            (window - keep.min(window)).saturating_sub(elapsed)
        };
        binding.consider(
            allowed,
            Candidate {
                index,
                remaining,
                reset_after_us,
                retry_after_us,
            },
        );
    }
    binding.verdict(allowed, expires_at_us)
}
