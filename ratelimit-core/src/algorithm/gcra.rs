//! GCRA token bucket over one or more windows (`token_bucket.lua`).

use super::binding::{Binding, Candidate};
use super::{Request, Verdict};
use crate::policy::Window;

/// A theoretical arrival time: whole microseconds plus `frac / limit` of one, so that the
/// emission interval `window / limit` is added exactly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tat {
    /// Whole microseconds.
    pub micros: u64,
    /// Remainder, in `1 / limit` of a microsecond.
    pub frac: u64,
}

impl Tat {
    /// This TAT advanced by `cost` emission intervals of `window / limit`.
    fn advance(self, cost: u64, window: u64, limit: u64) -> Self {
        // 64-bit division when the product fits, as it does for any cost and window in
        // practice (a 128-bit one is a library call).
        let (whole, rem) = match cost.checked_mul(window) {
            Some(inc) => (inc / limit, inc % limit),
            None => {
                let inc = u128::from(cost) * u128::from(window);
                let limit = u128::from(limit);
                ((inc / limit) as u64, (inc % limit) as u64)
            }
        };
        let (mut micros, mut frac) = (self.micros + whole, self.frac + rem);
        if frac >= limit {
            micros += 1;
            frac -= limit;
        }
        Self { micros, frac }
    }
}

/// Evaluates GCRA buckets, one [`Tat`] a window: a burst of `max_requests`, refilled at
/// `max_requests / duration`.
///
/// ```
/// use ratelimit_core::test_util::algorithm::{gcra, Request, Tat};
/// use ratelimit_core::Window;
/// let windows = [Window::per_second(3)];
/// let mut tats = [Tat::default()];
/// let allow = Request { cost: 1, consume: true };
/// for _ in 0..3 {
///     assert!(gcra(&mut tats, &windows, 5, allow).allowed);
/// }
/// let denied = gcra(&mut tats, &windows, 5, allow);
/// assert!(!denied.allowed);
/// assert_eq!(denied.retry_after_us, 333_334); // one emission interval, rounded up
/// ```
pub fn gcra(tats: &mut [Tat], windows: &[Window], now: u64, request: Request) -> Verdict {
    if let ([window], [tat]) = (windows, &mut *tats) {
        return one_window(tat, window, now, request);
    }
    let current = |tat: &Tat| {
        if tat.micros < now {
            Tat {
                micros: now,
                frac: 0,
            }
        } else {
            *tat
        }
    };
    let fits = |tat: Tat, window: u64| {
        let ahead = tat.micros.saturating_sub(now);
        !(ahead > window || (ahead == window && tat.frac > 0))
    };
    let next_of =
        |w: &Window, tat: &Tat| current(tat).advance(request.cost, w.micros(), w.max_requests());
    // One window (the usual case): its next TAT is computed once.
    let single = match (windows, &*tats) {
        ([w], [tat]) => Some(next_of(w, tat)),
        _ => None,
    };
    let allowed = match single {
        Some(next) => fits(next, windows[0].micros()),
        None => windows
            .iter()
            .zip(tats.iter())
            .all(|(w, tat)| fits(next_of(w, tat), w.micros())),
    };
    let consume = allowed && request.consume && request.cost > 0;
    let mut binding = Binding::default();
    let mut expires_at_us = now;
    for (index, (w, stored)) in windows.iter().zip(tats.iter_mut()).enumerate() {
        let (window, limit) = (w.micros(), w.max_requests());
        let before = current(stored);
        let next = single.unwrap_or_else(|| next_of(w, stored));
        let tat = if consume {
            *stored = next;
            next
        } else {
            before
        };
        expires_at_us = expires_at_us.max(stored.micros + 1);
        let remaining = remaining(tat, now, window, limit);
        let reset_after_us = tat.micros - now + u64::from(tat.frac > 0);
        let mut retry_after_us = 0;
        if !allowed && !fits(next, window) {
            retry_after_us = next.micros - now - window + u64::from(next.frac > 0);
        }
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

/// Whole permits a bucket of `limit` over `window` µs holds at `now` with its TAT at `tat`:
/// `floor((now + window - TAT) / (window / limit))`, at most `limit`.
#[inline]
fn remaining(tat: Tat, now: u64, window: u64, limit: u64) -> u64 {
    // A TAT beyond now + window only arises when a reload shortened the window.
    let ahead = (now + window).saturating_sub(tat.micros);
    match ahead.checked_mul(limit) {
        Some(headroom) => headroom.saturating_sub(tat.frac) / window,
        None => {
            let headroom =
                (u128::from(ahead) * u128::from(limit)).saturating_sub(u128::from(tat.frac));
            (headroom / u128::from(window)) as u64
        }
    }
    .min(limit)
}

/// [`gcra`] for a policy of one window, the usual case: the same steps, with no binding window
/// to choose.
fn one_window(stored: &mut Tat, w: &Window, now: u64, request: Request) -> Verdict {
    let (window, limit) = (w.micros(), w.max_requests());
    let before = if stored.micros < now {
        Tat {
            micros: now,
            frac: 0,
        }
    } else {
        *stored
    };
    let next = before.advance(request.cost, window, limit);
    let ahead = next.micros.saturating_sub(now);
    let allowed = !(ahead > window || (ahead == window && next.frac > 0));
    let tat = if allowed && request.consume && request.cost > 0 {
        *stored = next;
        next
    } else {
        before
    };
    let remaining = remaining(tat, now, window, limit);
    let retry_after_us = if allowed {
        0
    } else {
        next.micros - now - window + u64::from(next.frac > 0)
    };
    Verdict {
        allowed,
        window_index: 0,
        remaining,
        reset_after_us: tat.micros - now + u64::from(tat.frac > 0),
        retry_after_us,
        expires_at_us: now.max(stored.micros + 1),
    }
}
