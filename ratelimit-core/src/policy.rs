//! Policies: what is limited, by which algorithm, over which windows.
//!
//! These are value types with readable constructors; a [`Policy`] is checked by
//! [`Policy::validate`] (called for you when a limiter is built), so a policy that reaches a
//! backend always has at least one window, no zero limit and no duplicate window.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::clock::micros;

/// At most `max_requests` permits in any interval of length `duration`.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::Window;
/// let w = Window::per_minute(100);
/// assert_eq!(w.max_requests(), 100);
/// assert_eq!(w.duration(), Duration::from_secs(60));
/// assert_eq!(w.label(), "1m");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    max_requests: u64,
    #[serde(with = "crate::config::human_duration")]
    duration: Duration,
}

impl Window {
    /// A window of `max_requests` per `duration`.
    pub const fn new(max_requests: u64, duration: Duration) -> Self {
        Self {
            max_requests,
            duration,
        }
    }

    /// `max_requests` per second.
    pub const fn per_second(max_requests: u64) -> Self {
        Self::new(max_requests, Duration::from_secs(1))
    }

    /// `max_requests` per minute.
    pub const fn per_minute(max_requests: u64) -> Self {
        Self::new(max_requests, Duration::from_secs(60))
    }

    /// `max_requests` per hour.
    pub const fn per_hour(max_requests: u64) -> Self {
        Self::new(max_requests, Duration::from_secs(3600))
    }

    /// The number of permits in one window.
    pub const fn max_requests(&self) -> u64 {
        self.max_requests
    }

    /// The window's length.
    pub const fn duration(&self) -> Duration {
        self.duration
    }

    /// The window's length in microseconds, the unit every backend computes in.
    pub(crate) fn micros(&self) -> u64 {
        micros(self.duration)
    }

    /// A short human label for the window's length (`1m`, `1h`, `500ms`, `90s`): used in headers
    /// and metric labels, so it comes from configuration only.
    pub fn label(&self) -> String {
        duration_label(self.duration)
    }
}

/// Formats a duration the way configuration writes it, with the largest unit that divides it.
pub(crate) fn duration_label(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return format!("{}us", d.as_micros());
    }
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// How a policy counts.
///
/// | algorithm | exact? | state a key (Redis) |
/// | --- | --- | --- |
/// | `SlidingWindow` | exact in any interval | one sorted set, at most the largest limit entries |
/// | `TokenBucket` | exact burst, smooth refill (GCRA) | one value a window |
/// | `FixedWindow` | up to 2x across a boundary | one value a window |
/// | `SlidingCounter` | approximate: assumes the previous window was spent evenly | one value a window |
///
/// A sliding-window policy with several windows is the multi-window algorithm: all windows are
/// checked in one script and a request is recorded in all of them or in none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Exact sliding log (the default); with several windows, multi-window.
    #[default]
    #[serde(alias = "multi_window")]
    SlidingWindow,
    /// GCRA: burst of `max_requests`, refilled at `max_requests / duration`.
    TokenBucket,
    /// One counter a window, aligned to the epoch.
    FixedWindow,
    /// Sliding window counter: the current fixed window's count plus the previous one's,
    /// weighted by how much of it the sliding window still covers.
    SlidingCounter,
}

impl Algorithm {
    /// The name used in configuration (`sliding_window`, `token_bucket`, `fixed_window`,
    /// `sliding_counter`).
    pub const fn name(&self) -> &'static str {
        match self {
            Self::SlidingWindow => "sliding_window",
            Self::TokenBucket => "token_bucket",
            Self::FixedWindow => "fixed_window",
            Self::SlidingCounter => "sliding_counter",
        }
    }

    /// The short tag in Redis keys; state written by one algorithm is never read by another.
    pub(crate) const fn key_tag(&self) -> &'static str {
        match self {
            Self::SlidingWindow => "sw",
            Self::TokenBucket => "tb",
            Self::FixedWindow => "fw",
            Self::SlidingCounter => "sc",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The largest limit a sliding log accepts: its memory grows with the limit.
pub const MAX_SLIDING_LOG_LIMIT: u64 = 1_000_000;

/// The largest limit a fixed window or a sliding counter accepts, 2^35 - 1: their counters are
/// integers holding a count and a tag of the window (`lua/fixed_window.lua`,
/// `lua/sliding_counter.lua`), exact in a Lua double while the count stays below 2^36.
pub const MAX_COUNTER_LIMIT: u64 = (1 << 35) - 1;

/// The largest [`Policy::with_spread`].
pub const MAX_SPREAD: u32 = 64;

/// A named set of windows evaluated together by one algorithm, with a default cost.
///
/// Cheap to clone. Built with a constructor and refined with `with_*` methods:
///
/// ```
/// use ratelimit_core::{Algorithm, Policy, Window};
/// let policy = Policy::new("api", [Window::per_minute(100), Window::per_hour(1000)])
///     .with_algorithm(Algorithm::SlidingWindow);
/// assert!(policy.validate().is_ok());
/// assert_eq!(policy.windows().len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    name: Arc<str>,
    algorithm: Algorithm,
    windows: Arc<Windows>,
    cost: u64,
    spread: u32,
}

/// A policy's windows, shared by the policy's clones, and a place for them written as a
/// backend sends them (a Redis script call's arguments: each window's limit and length),
/// written by the first call that needs them instead of by every call. Compared and hashed
/// by the windows alone.
pub(crate) struct Windows {
    list: Box<[Window]>,
    written: OnceLock<Box<[u8]>>,
}

impl Windows {
    /// The windows as `write` writes them, written by the first call and kept: every caller
    /// passes the same `write` (a script call's arguments, in the Redis backend).
    pub(crate) fn written(&self, write: impl FnOnce(&[Window]) -> Box<[u8]>) -> &[u8] {
        self.written.get_or_init(|| write(&self.list))
    }
}

impl FromIterator<Window> for Windows {
    fn from_iter<I: IntoIterator<Item = Window>>(windows: I) -> Self {
        Self {
            list: windows.into_iter().collect(),
            written: OnceLock::new(),
        }
    }
}

impl fmt::Debug for Windows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.list.fmt(f)
    }
}

impl std::ops::Deref for Windows {
    type Target = [Window];

    fn deref(&self) -> &[Window] {
        &self.list
    }
}

impl PartialEq for Windows {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl Eq for Windows {}

impl std::hash::Hash for Windows {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.list.hash(state);
    }
}

impl Policy {
    /// The name of the policy built from the top-level `windows` of a configuration.
    pub const DEFAULT_NAME: &'static str = "default";

    /// A sliding-window policy named `name` over `windows`, costing 1 a request.
    pub fn new(name: impl Into<Arc<str>>, windows: impl IntoIterator<Item = Window>) -> Self {
        Self {
            name: name.into(),
            algorithm: Algorithm::default(),
            windows: Arc::new(windows.into_iter().collect()),
            cost: 1,
            spread: 1,
        }
    }

    setters! {
        /// The same policy under another algorithm.
        pub fn with_algorithm(algorithm: Algorithm);

        /// The same policy with another default cost (what `allow` spends).
        pub fn with_cost(cost: u64);

        /// Spreads each key's counter over `n` sub-counters (token bucket and fixed window only),
        /// each holding its share of every window's limit, so one hot key's load lands on up to
        /// `n` Redis Cluster slots instead of one. Requests go to the sub-counters in turn; a
        /// request its sub-counter denies tries the next one before it is denied.
        ///
        /// The cost is accuracy, in one direction only: the total admitted never exceeds the
        /// limit, but a request can be denied while other sub-counters still have permits (see
        /// `docs/Performance.md` for measured rates). `n = 1` (the default) is a single counter.
        ///
        /// ```
        /// use ratelimit_core::{Algorithm, Policy, Window};
        /// let policy = Policy::new("search", [Window::per_second(1000)])
        ///     .with_algorithm(Algorithm::TokenBucket)
        ///     .with_spread(4);
        /// assert!(policy.validate().is_ok());
        /// assert_eq!(policy.spread(), 4);
        /// ```
        pub fn with_spread(n: u32) sets spread = n;
    }

    /// Over how many sub-counters a key's counter is spread (1: not spread).
    pub fn spread(&self) -> u32 {
        self.spread
    }

    /// The sub-counters' policies: the same name, algorithm and cost, and sub-counter `i`
    /// holds `limit / n` of every window's limit, plus one when `i < limit % n`. Empty when
    /// the policy is not spread. Allocates: a limiter computes them once per policy.
    pub(crate) fn parts(&self) -> Box<[Policy]> {
        if self.spread <= 1 {
            return Box::default();
        }
        let n = u64::from(self.spread);
        (0..n)
            .map(|i| Policy {
                name: self.name.clone(),
                algorithm: self.algorithm,
                windows: Arc::new(
                    self.windows
                        .iter()
                        .map(|w| {
                            let share = w.max_requests / n + u64::from(i < w.max_requests % n);
                            Window::new(share, w.duration)
                        })
                        .collect(),
                ),
                cost: self.cost,
                spread: 1,
            })
            .collect()
    }

    setters! {
        /// The same policy under another name.
        pub fn with_name(name: impl Into<Arc<str>>) sets name = name.into();
    }

    /// The policy's name; part of every key, so two policies never share state.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name, shared (for metric labels).
    pub(crate) fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// Where the windows live: clones of a policy share them, so a limiter finds the state
    /// it keeps for a policy by this address before comparing values.
    pub(crate) fn windows_addr(&self) -> usize {
        Arc::as_ptr(&self.windows).addr()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The windows, in configuration order.
    pub fn windows(&self) -> &[Window] {
        &self.windows
    }

    /// The windows, shared, with their script arguments (a script call on its way to Redis
    /// keeps them).
    pub(crate) fn shared_windows(&self) -> Arc<Windows> {
        self.windows.clone()
    }

    /// What one `allow` costs.
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// The smallest `max_requests` of the windows: no cost above it can ever be allowed.
    pub fn smallest_limit(&self) -> u64 {
        self.windows
            .iter()
            .map(Window::max_requests)
            .min()
            .unwrap_or(0)
    }

    /// The longest window's length in microseconds (0 without windows).
    pub(crate) fn longest_window_micros(&self) -> u64 {
        self.windows.iter().map(Window::micros).max().unwrap_or(0)
    }

    /// The shortest window's length in microseconds (0 without windows).
    pub(crate) fn shortest_window_micros(&self) -> u64 {
        self.windows.iter().map(Window::micros).min().unwrap_or(0)
    }

    /// The longest window; state lives at most this long.
    pub fn longest_window(&self) -> Duration {
        self.windows
            .iter()
            .map(Window::duration)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Checks the policy; the error names the offending part.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !is_valid_name(&self.name) {
            return Err(PolicyError::Name(self.name.to_string()));
        }
        if self.windows.is_empty() {
            return Err(PolicyError::NoWindow);
        }
        for (index, w) in self.windows.iter().enumerate() {
            if w.max_requests == 0 {
                return Err(PolicyError::ZeroLimit { index });
            }
            if w.duration < Duration::from_millis(1) {
                return Err(PolicyError::WindowTooShort { index });
            }
            if w.duration > Duration::from_secs(30 * 86_400) {
                return Err(PolicyError::WindowTooLong { index });
            }
            // Scripts compute in Lua doubles: limit * window (µs) must stay exact.
            if u128::from(w.max_requests) * w.duration.as_micros() > (1u128 << 53) {
                return Err(PolicyError::LimitTooLarge { index });
            }
            if self.algorithm == Algorithm::SlidingWindow && w.max_requests > MAX_SLIDING_LOG_LIMIT
            {
                return Err(PolicyError::LogTooLarge { index });
            }
            if matches!(
                self.algorithm,
                Algorithm::FixedWindow | Algorithm::SlidingCounter
            ) && w.max_requests > MAX_COUNTER_LIMIT
            {
                return Err(PolicyError::CounterTooLarge { index });
            }
            if self.windows[..index]
                .iter()
                .any(|other| other.duration == w.duration)
            {
                return Err(PolicyError::DuplicateWindow { index });
            }
        }
        if self.spread == 0 || self.spread > MAX_SPREAD {
            return Err(PolicyError::Spread(self.spread));
        }
        if self.spread > 1 {
            if !matches!(
                self.algorithm,
                Algorithm::TokenBucket | Algorithm::FixedWindow
            ) {
                return Err(PolicyError::SpreadAlgorithm);
            }
            // The smallest sub-counter must still fit a request of the policy's cost.
            if self.smallest_limit() / u64::from(self.spread) < self.cost.max(1) {
                return Err(PolicyError::SpreadAboveLimit {
                    spread: self.spread,
                    limit: self.smallest_limit(),
                });
            }
        }
        if self.cost > self.smallest_limit() {
            return Err(PolicyError::CostAboveLimit {
                cost: self.cost,
                limit: self.smallest_limit(),
            });
        }
        Ok(())
    }
}

/// Policy names appear in keys, headers and metric labels: keep them short and plain.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
}

/// Why a [`Policy`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The name is empty, longer than 64 bytes, or holds characters other than
    /// letters, digits, `_`, `-`, `.` and `/`.
    #[error("policy name {0:?} must be 1-64 characters of letters, digits, `_`, `-`, `.` or `/`")]
    Name(String),
    /// No window at all.
    #[error("a policy needs at least one window")]
    NoWindow,
    /// A window allows nothing.
    #[error("window {index}: max_requests must be at least 1")]
    ZeroLimit {
        /// Which window (0-based).
        index: usize,
    },
    /// A window shorter than a millisecond.
    #[error("window {index}: duration must be at least 1ms")]
    WindowTooShort {
        /// Which window (0-based).
        index: usize,
    },
    /// A window longer than 30 days.
    #[error("window {index}: duration must be at most 30d")]
    WindowTooLong {
        /// Which window (0-based).
        index: usize,
    },
    /// `max_requests` times the window in microseconds exceeds 2^53.
    #[error("window {index}: max_requests x duration (in µs) must stay below 2^53")]
    LimitTooLarge {
        /// Which window (0-based).
        index: usize,
    },
    /// A fixed window or a sliding counter over [`MAX_COUNTER_LIMIT`].
    #[error(
        "window {index}: a fixed_window or sliding_counter counts at most {MAX_COUNTER_LIMIT} permits"
    )]
    CounterTooLarge {
        /// Which window (0-based).
        index: usize,
    },
    /// A sliding log over a million entries a key.
    #[error(
        "window {index}: a sliding_window keeps one entry a permit; above {MAX_SLIDING_LOG_LIMIT} use token_bucket or fixed_window"
    )]
    LogTooLarge {
        /// Which window (0-based).
        index: usize,
    },
    /// `spread` is 0 or above [`MAX_SPREAD`].
    #[error("spread must be between 1 and {MAX_SPREAD}, not {0}")]
    Spread(u32),
    /// `spread` above 1 with the sliding log.
    #[error("spread applies to token_bucket and fixed_window only")]
    SpreadAlgorithm,
    /// A sub-counter would hold less than one request's cost.
    #[error(
        "spread {spread} leaves a sub-counter less than one request's cost of the limit {limit}"
    )]
    SpreadAboveLimit {
        /// The spread asked for.
        spread: u32,
        /// The smallest window's limit.
        limit: u64,
    },
    /// Two windows of the same length.
    #[error("window {index}: another window has the same duration")]
    DuplicateWindow {
        /// Which window (0-based).
        index: usize,
    },
    /// A cost no window could ever admit.
    #[error("cost {cost} is above the smallest limit {limit}: it could never be allowed")]
    CostAboveLimit {
        /// The cost asked for.
        cost: u64,
        /// The smallest `max_requests` of the policy.
        limit: u64,
    },
}
