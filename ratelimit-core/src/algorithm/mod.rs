//! The algorithms as pure functions over small states: the in-memory twins of `lua/*.lua`.
//!
//! Each function takes the state of one key, the policy's windows, the time in microseconds and
//! the request, and returns the [`Verdict`]; it mutates the state only when the request is
//! admitted and consumes. The Lua scripts follow the same steps in the same order, so the two
//! backends answer alike, and the conformance tests hold them to it.

mod binding;
mod fixed_window;
mod gcra;
mod sliding_counter;
mod sliding_log;

pub use fixed_window::{FixedCounter, fixed_window};
pub use gcra::{Tat, gcra};
pub use sliding_counter::{CounterPair, sliding_counter};
pub use sliding_log::{TimeLog, sliding_log};

/// What an algorithm decided, for the binding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request fits in every window.
    pub allowed: bool,
    /// The binding window's index in the policy.
    pub window_index: usize,
    /// Permits left in the binding window (after consuming, when consumed).
    pub remaining: u64,
    /// Microseconds until the binding window has every permit back.
    pub reset_after_us: u64,
    /// Microseconds until a request of this cost fits (0 when allowed).
    pub retry_after_us: u64,
    /// When the key's state stops mattering (microseconds, same clock): it can be dropped then.
    pub expires_at_us: u64,
}

impl Verdict {
    pub(crate) fn outcome(&self) -> crate::decision::Outcome {
        crate::decision::Outcome {
            allowed: self.allowed,
            window_index: self.window_index,
            remaining: self.remaining,
            reset_after_us: self.reset_after_us,
            retry_after_us: self.retry_after_us,
        }
    }
}

/// One evaluation: how much, and whether to consume when it fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Permits needed.
    pub cost: u64,
    /// Consume them when the request fits (`allow`), or only look (`peek`).
    pub consume: bool,
}

#[cfg(test)]
mod tests;
