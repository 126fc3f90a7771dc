//! The answer to one request: allowed or not, what is left, and when to come back.

use std::fmt;
use std::time::Duration;

use crate::policy::Window;

/// Which fallback answered while Redis could not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackMode {
    /// Allow every request.
    Open,
    /// Deny every request.
    Closed,
    /// Run the same policy in the in-memory backend of this instance.
    Local,
}

impl FallbackMode {
    /// The name used in configuration and metric labels.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Local => "local",
        }
    }
}

impl fmt::Display for FallbackMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A Redis script, standalone or cluster.
    Redis,
    /// The in-memory backend, when it is the configured backend.
    Memory,
    /// The local cache, without a round trip.
    Cache,
    /// A fallback, because Redis could not answer.
    Fallback(FallbackMode),
}

impl Source {
    /// A stable name: `redis`, `memory`, `cache`, `fallback_open`, `fallback_closed`, `fallback_local`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Memory => "memory",
            Self::Cache => "cache",
            Self::Fallback(FallbackMode::Open) => "fallback_open",
            Self::Fallback(FallbackMode::Closed) => "fallback_closed",
            Self::Fallback(FallbackMode::Local) => "fallback_local",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of `allow`, `peek` or `reset` for one key.
///
/// The numbers describe the *binding* window: when denied, the denying window that waits
/// longest; when allowed, the window with the fewest permits left.
///
/// ```
/// # async fn demo() -> Result<(), ratelimit_core::Error> {
/// use std::time::Duration;
/// use ratelimit_core::{Config, RateLimiter};
/// let limiter = RateLimiter::new(Config::new(2, Duration::from_secs(60))).await?;
/// let first = limiter.allow("user:1").await?;
/// assert!(first.allowed());
/// assert_eq!(first.remaining(), 1);
/// limiter.allow("user:1").await?;
/// let third = limiter.allow("user:1").await?;
/// assert!(!third.allowed());
/// assert!(third.retry_after().is_some());
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    allowed: bool,
    limit: u64,
    remaining: u64,
    reset_after: Duration,
    retry_after: Option<Duration>,
    window: Window,
    window_index: usize,
    source: Source,
}

/// What a backend reports for the binding window, before it becomes a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) allowed: bool,
    /// 0-based index of the binding window in the policy.
    pub(crate) window_index: usize,
    pub(crate) remaining: u64,
    pub(crate) reset_after_us: u64,
    pub(crate) retry_after_us: u64,
}

impl Decision {
    pub(crate) fn from_outcome(outcome: Outcome, windows: &[Window], source: Source) -> Self {
        let index = outcome.window_index.min(windows.len().saturating_sub(1));
        let window = windows
            .get(index)
            .copied()
            .unwrap_or(Window::new(0, Duration::ZERO));
        Self {
            allowed: outcome.allowed,
            limit: window.max_requests(),
            remaining: outcome.remaining,
            reset_after: Duration::from_micros(outcome.reset_after_us),
            retry_after: (!outcome.allowed).then(|| Duration::from_micros(outcome.retry_after_us)),
            window,
            window_index: index,
            source,
        }
    }

    /// A sub-counter's decision (see [`Policy::with_spread`](crate::Policy::with_spread))
    /// told in terms of the whole policy: its windows and limits, and the sub-counter's
    /// remaining permits times `parts` as the estimate of what is left.
    pub(crate) fn of_whole(mut self, windows: &[Window], parts: u64) -> Self {
        if let Some(window) = windows.get(self.window_index) {
            self.window = *window;
            self.limit = window.max_requests();
            self.remaining = self.remaining.saturating_mul(parts).min(self.limit);
        }
        self
    }

    /// A decision that a fallback makes without state: everything or nothing left.
    pub(crate) fn stateless(allowed: bool, windows: &[Window], source: Source) -> Self {
        let (index, window) = windows
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, w)| w.max_requests())
            .unwrap_or((0, Window::new(0, Duration::ZERO)));
        Self {
            allowed,
            limit: window.max_requests(),
            remaining: if allowed { window.max_requests() } else { 0 },
            reset_after: if allowed {
                Duration::ZERO
            } else {
                window.duration()
            },
            retry_after: (!allowed).then(|| window.duration()),
            window,
            window_index: index,
            source,
        }
    }

    /// The same decision seen `elapsed` later: the waits are shorter by that much.
    pub(crate) fn elapsed_by(mut self, elapsed: Duration) -> Self {
        self.reset_after = self.reset_after.saturating_sub(elapsed);
        self.retry_after = self.retry_after.map(|r| r.saturating_sub(elapsed));
        self
    }

    setters! {
        /// The same decision with another count of permits left.
        pub(crate) fn with_remaining(remaining: u64);
    }

    /// A fallback's decision without state: `allowed` or not, retry after `retry_after`.
    pub(crate) fn fallback(
        allowed: bool,
        windows: &[Window],
        mode: FallbackMode,
        retry_after: Duration,
    ) -> Self {
        let mut decision = Self::stateless(allowed, windows, Source::Fallback(mode));
        if !allowed {
            decision.retry_after = Some(retry_after);
            decision.reset_after = retry_after;
        }
        decision
    }

    /// The `open` fallback's decision for `policy`: allowed, every permit of the binding window
    /// left, source [`Source::Fallback`]`(`[`FallbackMode::Open`]`)`. For a caller that lets a
    /// request through without an answer from the limiter, so that whoever reads the decision
    /// sees that it was let through open rather than nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ratelimit_core::{Decision, FallbackMode, Policy, Source, Window};
    ///
    /// let policy = Policy::new("api", [Window::new(10, Duration::from_secs(60))]);
    /// let decision = Decision::fallback_open(&policy);
    /// assert!(decision.allowed());
    /// assert_eq!(decision.source(), Source::Fallback(FallbackMode::Open));
    /// assert_eq!((decision.limit(), decision.remaining()), (10, 10));
    /// ```
    pub fn fallback_open(policy: &crate::policy::Policy) -> Self {
        Self::stateless(true, policy.windows(), Source::Fallback(FallbackMode::Open))
    }

    setters! {
        /// The same decision, attributed to another source.
        pub fn with_source(source: Source);
    }

    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.allowed
    }

    /// `max_requests` of the binding window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Permits left in the binding window: after this request for `allow`, available now for `peek`.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Time until the binding window has every permit back.
    pub fn reset_after(&self) -> Duration {
        self.reset_after
    }

    /// When denied, the time until a request of the same cost can succeed; `None` when allowed.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The binding window.
    pub fn window(&self) -> Window {
        self.window
    }

    /// The binding window's position in the policy's windows.
    pub fn window_index(&self) -> usize {
        self.window_index
    }

    /// Where the decision was made.
    pub fn source(&self) -> Source {
        self.source
    }
}
