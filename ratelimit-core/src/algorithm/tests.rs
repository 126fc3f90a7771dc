//! Each algorithm against an independent reference model, over random schedules.
//!
//! The models are written for clarity, not speed: a list of every admission for the sliding
//! log, a bucket of rational tokens for GCRA, a map of counters for fixed windows (and, weighed
//! with exact rationals, for sliding window counters). They share no code with the algorithms.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::policy::Window;

#[derive(Debug, Clone, Copy)]
struct Step {
    gap_us: u64,
    cost: u64,
    consume: bool,
}

fn windows() -> impl Strategy<Value = Vec<Window>> {
    prop::collection::vec((1u64..12, 1u64..4000), 1..4).prop_map(|ws| {
        let mut seen = Vec::new();
        ws.into_iter()
            .filter_map(|(limit, ms)| {
                let w = Window::new(limit, Duration::from_millis(ms));
                (!seen.contains(&ms)).then(|| {
                    seen.push(ms);
                    w
                })
            })
            .collect()
    })
}

fn schedule() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            prop_oneof![Just(0u64), 0u64..2_000, 0u64..600_000, 0u64..3_000_000],
            1u64..4,
            prop::bool::weighted(0.85),
        )
            .prop_map(|(gap_us, cost, consume)| Step {
                gap_us,
                cost,
                consume,
            }),
        1..200,
    )
}

/// Every admission ever made; a request fits when each window's count plus its cost fits.
#[derive(Default)]
struct LogModel {
    admitted: Vec<u64>,
}

impl LogModel {
    fn count(&self, w: &Window, now: u64) -> u64 {
        self.admitted
            .iter()
            .filter(|&&s| s + w.micros() > now)
            .count() as u64
    }
    fn fits(&self, windows: &[Window], now: u64, cost: u64) -> bool {
        windows
            .iter()
            .all(|w| self.count(w, now) + cost <= w.max_requests())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn sliding_log_matches_the_model(windows in windows(), steps in schedule()) {
        let mut log = VecDeque::new();
        let mut model = LogModel::default();
        let mut now = 1_000_000_000u64;
        for step in steps {
            now += step.gap_us;
            let cost = step.cost.min(windows.iter().map(Window::max_requests).min().unwrap_or(1));
            let verdict = sliding_log(&mut log, &windows, now, Request { cost, consume: step.consume });
            let fits = model.fits(&windows, now, cost);
            // Zero over-limit and zero false denials.
            prop_assert_eq!(verdict.allowed, fits);
            if fits && step.consume {
                model.admitted.extend(std::iter::repeat_n(now, cost as usize));
            }
            let w = windows[verdict.window_index];
            prop_assert_eq!(verdict.remaining, w.max_requests().saturating_sub(model.count(&w, now)));
            if !fits {
                // retry_after is the earliest moment the same request fits.
                let retry = verdict.retry_after_us;
                prop_assert!(retry > 0);
                prop_assert!(!model.fits(&windows, now + retry - 1, cost));
                prop_assert!(model.fits(&windows, now + retry, cost));
            }
            // Memory stays bounded by the largest limit.
            let largest = windows.iter().map(Window::max_requests).max().unwrap_or(0);
            prop_assert!(log.len() as u64 <= largest);
        }
    }

    #[test]
    fn gcra_matches_a_rational_token_bucket(windows in windows(), steps in schedule()) {
        let mut tats = vec![Tat::default(); windows.len()];
        // Tokens scaled by the window length (µs): integer arithmetic, exact refill.
        let mut scaled: Vec<u128> = windows
            .iter()
            .map(|w| u128::from(w.max_requests()) * u128::from(w.micros()))
            .collect();
        let mut now = 1_000_000_000u64;
        let mut last = now;
        for step in steps {
            now += step.gap_us;
            let cost = step.cost.min(windows.iter().map(Window::max_requests).min().unwrap_or(1));
            for (s, w) in scaled.iter_mut().zip(&windows) {
                let full = u128::from(w.max_requests()) * u128::from(w.micros());
                *s = (*s + u128::from(now - last) * u128::from(w.max_requests())).min(full);
            }
            last = now;
            let fits = scaled
                .iter()
                .zip(&windows)
                .all(|(s, w)| *s >= u128::from(cost) * u128::from(w.micros()));
            let verdict = gcra(&mut tats, &windows, now, Request { cost, consume: step.consume });
            prop_assert_eq!(verdict.allowed, fits);
            if fits && step.consume {
                for (s, w) in scaled.iter_mut().zip(&windows) {
                    *s -= u128::from(cost) * u128::from(w.micros());
                }
            }
            let i = verdict.window_index;
            prop_assert_eq!(u128::from(verdict.remaining), scaled[i] / u128::from(windows[i].micros()));
        }
    }

    #[test]
    fn fixed_window_matches_a_counter_map(windows in windows(), steps in schedule()) {
        let mut counters = vec![FixedCounter::default(); windows.len()];
        let mut model: HashMap<(usize, u64), u64> = HashMap::new();
        let mut now = 1_000_000_000u64;
        for step in steps {
            now += step.gap_us;
            let cost = step.cost.min(windows.iter().map(Window::max_requests).min().unwrap_or(1));
            let count = |model: &HashMap<(usize, u64), u64>, i: usize, w: &Window| {
                model.get(&(i, now / w.micros())).copied().unwrap_or(0)
            };
            let fits = windows
                .iter()
                .enumerate()
                .all(|(i, w)| count(&model, i, w) + cost <= w.max_requests());
            let verdict = fixed_window(&mut counters, &windows, now, Request { cost, consume: step.consume });
            prop_assert_eq!(verdict.allowed, fits);
            if fits && step.consume {
                for (i, w) in windows.iter().enumerate() {
                    *model.entry((i, now / w.micros())).or_default() += cost;
                }
            }
            let i = verdict.window_index;
            prop_assert_eq!(verdict.remaining, windows[i].max_requests() - count(&model, i, &windows[i]));
        }
    }
}

/// Fixed-window counts by (window index, window number); the sliding counter's estimate on
/// them, in exact rationals (scaled by the window length).
#[derive(Default)]
struct CounterModel {
    counts: HashMap<(usize, u64), u64>,
}

impl CounterModel {
    fn count(&self, i: usize, number: Option<u64>) -> u64 {
        number
            .and_then(|n| self.counts.get(&(i, n)).copied())
            .unwrap_or(0)
    }
    /// `current * W + previous * (W - elapsed)`: the estimate times W.
    fn scaled(&self, i: usize, w: &Window, now: u64) -> u128 {
        let window = w.micros();
        let number = now / window;
        let elapsed = now % window;
        u128::from(self.count(i, Some(number))) * u128::from(window)
            + u128::from(self.count(i, number.checked_sub(1))) * u128::from(window - elapsed)
    }
    fn fits(&self, windows: &[Window], now: u64, cost: u64) -> bool {
        windows.iter().enumerate().all(|(i, w)| {
            self.scaled(i, w, now) + u128::from(cost) * u128::from(w.micros())
                <= u128::from(w.max_requests()) * u128::from(w.micros())
        })
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sliding_counter_matches_a_weighed_counter_map(windows in windows(), steps in schedule()) {
        let mut pairs = vec![CounterPair::default(); windows.len()];
        let mut model = CounterModel::default();
        let mut now = 1_000_000_000u64;
        for step in steps {
            now += step.gap_us;
            let cost = step.cost.min(windows.iter().map(Window::max_requests).min().unwrap_or(1));
            let fits = model.fits(&windows, now, cost);
            let verdict = sliding_counter(&mut pairs, &windows, now, Request { cost, consume: step.consume });
            prop_assert_eq!(verdict.allowed, fits);
            if fits && step.consume {
                for (i, w) in windows.iter().enumerate() {
                    *model.counts.entry((i, now / w.micros())).or_default() += cost;
                }
            }
            let i = verdict.window_index;
            let w = windows[i];
            let estimate = model.scaled(i, &w, now).div_ceil(u128::from(w.micros()));
            prop_assert_eq!(
                u128::from(verdict.remaining),
                u128::from(w.max_requests()).saturating_sub(estimate)
            );
            if !fits {
                // The earliest moment it fits, if nothing else is admitted meanwhile.
                let retry = verdict.retry_after_us;
                prop_assert!(retry > 0);
                prop_assert!(model.fits(&windows, now + retry, cost), "fits after retry_after");
                prop_assert!(!model.fits(&windows, now + retry - 1, cost), "not a µs earlier");
            }
        }
    }
}

/// One request of cost 1 that takes what it is granted.
const ALLOW: Request = Request {
    cost: 1,
    consume: true,
};

/// How many of 15 requests just before a one-second boundary and 15 just after it `decide`
/// admits (the instants are 2 µs apart).
fn admitted_across_a_boundary(mut decide: impl FnMut(u64) -> bool) -> u64 {
    let mut admitted = 0;
    for t in [999_999u64, 1_000_001] {
        for _ in 0..15 {
            admitted += u64::from(decide(t));
        }
    }
    admitted
}

/// Across a boundary, only the fixed window admits twice its limit: 10 at the end of one
/// window and 10 at the start of the next, 20 within 2 µs. The sliding counter still weighs the
/// previous window's 10 almost fully 2 µs later, and the sliding log never does.
#[test]
fn only_the_fixed_window_admits_a_double_burst_at_a_boundary() {
    let windows = [Window::per_second(10)];
    let mut pairs = [CounterPair::default()];
    let mut counters = [FixedCounter::default()];
    let mut log = VecDeque::new();
    let admitted = [
        (
            "sliding_counter",
            admitted_across_a_boundary(|t| sliding_counter(&mut pairs, &windows, t, ALLOW).allowed),
            10,
        ),
        (
            "fixed_window",
            admitted_across_a_boundary(|t| fixed_window(&mut counters, &windows, t, ALLOW).allowed),
            20,
        ),
        (
            "sliding_log",
            admitted_across_a_boundary(|t| sliding_log(&mut log, &windows, t, ALLOW).allowed),
            10,
        ),
    ];
    for (algorithm, got, expected) in admitted {
        assert_eq!(got, expected, "{algorithm}");
    }
}

#[test]
fn gcra_admits_exactly_the_burst_then_refills_at_the_rate() {
    // 7 per minute: the emission interval (60/7 s) is not a whole number of microseconds.
    let windows = [Window::per_minute(7)];
    let mut tats = [Tat::default()];
    let allow = ALLOW;
    let now = 5_000_000;
    let burst = (0..20)
        .filter(|_| gcra(&mut tats, &windows, now, allow).allowed)
        .count();
    assert_eq!(burst, 7);
    let denied = gcra(&mut tats, &windows, now, allow);
    let retry = denied.retry_after_us;
    assert_eq!(retry, 8_571_429); // 60 s / 7, rounded up
    assert!(!gcra(&mut tats, &windows, now + retry - 1, allow).allowed);
    assert!(gcra(&mut tats, &windows, now + retry, allow).allowed);
}
