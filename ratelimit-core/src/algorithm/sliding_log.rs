//! Exact sliding log over one or more windows (`sliding_window.lua`, `multi_window.lua`).

use std::collections::VecDeque;

use super::binding::{Binding, Candidate};
use super::{Request, Verdict};
use crate::policy::Window;

/// Where a sliding log keeps its admission times: a `VecDeque`, or a store that keeps a short
/// log inline and moves it to the heap only when it grows (the in-memory backend's).
pub trait TimeLog {
    /// Entries held.
    fn len(&self) -> usize;
    /// Whether no entry is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `index`-th oldest entry.
    fn get(&self, index: usize) -> Option<u64>;
    /// Drops the oldest entry.
    fn pop_front(&mut self);
    /// Appends `times` copies of `at` (not older than any entry held).
    fn push_back(&mut self, at: u64, times: u64);
    /// The first index whose entry is not `pred` (entries for which `pred` holds form a
    /// prefix): a binary search.
    fn partition_point(&self, pred: impl Fn(u64) -> bool) -> usize;
}

impl TimeLog for VecDeque<u64> {
    fn len(&self) -> usize {
        VecDeque::len(self)
    }

    fn get(&self, index: usize) -> Option<u64> {
        VecDeque::get(self, index).copied()
    }

    fn pop_front(&mut self) {
        VecDeque::pop_front(self);
    }

    fn push_back(&mut self, at: u64, times: u64) {
        for _ in 0..times {
            VecDeque::push_back(self, at);
        }
    }

    fn partition_point(&self, pred: impl Fn(u64) -> bool) -> usize {
        VecDeque::partition_point(self, |&s| pred(s))
    }
}

/// Evaluates a sliding log: `log` holds admission times (µs, ascending), one entry a permit.
///
/// An entry admitted at `s` counts while `now < s + window`. One log serves every window, so it
/// holds at most the longest window's limit.
///
/// ```
/// use std::collections::VecDeque;
/// use ratelimit_core::test_util::algorithm::{sliding_log, Request};
/// use ratelimit_core::Window;
/// let windows = [Window::per_second(2)];
/// let mut log = VecDeque::new();
/// let allow = Request { cost: 1, consume: true };
/// assert!(sliding_log(&mut log, &windows, 0, allow).allowed);
/// assert!(sliding_log(&mut log, &windows, 10, allow).allowed);
/// let denied = sliding_log(&mut log, &windows, 20, allow);
/// assert!(!denied.allowed);
/// assert_eq!(denied.retry_after_us, 1_000_000 - 20);
/// assert!(sliding_log(&mut log, &windows, 1_000_000, allow).allowed);
/// ```
pub fn sliding_log(
    log: &mut impl TimeLog,
    windows: &[Window],
    now: u64,
    request: Request,
) -> Verdict {
    let longest = windows.iter().map(Window::micros).max().unwrap_or(0);
    while log.get(0).is_some_and(|s| s.saturating_add(longest) <= now) {
        log.pop_front();
    }
    // Entries inside a window form a suffix of the log. The log now holds exactly the longest
    // window's entries, so that window's count is its length: a policy of one window (the
    // common case) never searches its log, which can hold as many entries as its limit.
    fn count_in(log: &impl TimeLog, w: u64, longest: u64, now: u64) -> u64 {
        if w == longest {
            return log.len() as u64;
        }
        let first_inside = log.partition_point(|s| s.saturating_add(w) <= now);
        (log.len() - first_inside) as u64
    }
    let allowed = windows
        .iter()
        .all(|w| count_in(log, w.micros(), longest, now) + request.cost <= w.max_requests());
    if allowed && request.consume && request.cost > 0 {
        log.push_back(now, request.cost);
    }
    let newest = if log.is_empty() {
        None
    } else {
        log.get(log.len() - 1)
    };
    let mut binding = Binding::default();
    for (index, w) in windows.iter().enumerate() {
        let window = w.micros();
        let count = count_in(log, window, longest, now);
        let reset_after_us = match newest {
            Some(s) if count > 0 => s + window - now,
            _ => 0,
        };
        let mut retry_after_us = 0;
        if !allowed && count + request.cost > w.max_requests() {
            let first_inside = log.len() - count as usize;
            let nth = first_inside + (count + request.cost - w.max_requests() - 1) as usize;
            if let Some(s) = log.get(nth) {
                retry_after_us = s + window - now;
            }
        }
        binding.consider(
            allowed,
            Candidate {
                index,
                remaining: w.max_requests().saturating_sub(count),
                reset_after_us,
                retry_after_us,
            },
        );
    }
    binding.verdict(allowed, newest.map_or(now, |s| s + longest))
}
