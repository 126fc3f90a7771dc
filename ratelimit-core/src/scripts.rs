//! The Lua scripts, embedded, and the one calling convention they share.
//!
//! Every script takes the keys of one decision (all in one hash slot) and the arguments
//! `op, cost, nonce, limit1, window1_us, limit2, window2_us, ...`, reads the time with
//! `redis.call('TIME')`, and answers `{allowed, binding window (1-based), limit, remaining,
//! reset_after_us, retry_after_us}`. They run through [`redis::Script`]: EVALSHA, reloaded
//! transparently after NOSCRIPT (a restart, a failover, a new cluster node).

use std::sync::LazyLock;

use crate::decision::Outcome;
use crate::error::Error;
use crate::policy::{Algorithm, Policy};

/// Source of the exact sliding log over one window.
pub const SLIDING_WINDOW: &str = include_str!("../lua/sliding_window.lua");
/// Source of the exact sliding log over several windows, all or nothing.
pub const MULTI_WINDOW: &str = include_str!("../lua/multi_window.lua");
/// Source of the GCRA token bucket.
pub const TOKEN_BUCKET: &str = include_str!("../lua/token_bucket.lua");
/// Source of the fixed window counter.
pub const FIXED_WINDOW: &str = include_str!("../lua/fixed_window.lua");
/// Source of the sliding window counter.
pub const SLIDING_COUNTER: &str = include_str!("../lua/sliding_counter.lua");

static SLIDING_WINDOW_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(SLIDING_WINDOW));
static MULTI_WINDOW_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(MULTI_WINDOW));
static TOKEN_BUCKET_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(TOKEN_BUCKET));
static FIXED_WINDOW_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(FIXED_WINDOW));
static SLIDING_COUNTER_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(SLIDING_COUNTER));

/// The script that evaluates `policy`.
///
/// ```
/// use ratelimit_core::{scripts, Policy, Window};
/// let single = Policy::new("a", [Window::per_minute(10)]);
/// let multi = Policy::new("b", [Window::per_minute(10), Window::per_hour(100)]);
/// assert_ne!(scripts::for_policy(&single).get_hash(), scripts::for_policy(&multi).get_hash());
/// ```
pub fn for_policy(policy: &Policy) -> &'static redis::Script {
    match policy.algorithm() {
        Algorithm::SlidingWindow if policy.windows().len() == 1 => &SLIDING_WINDOW_SCRIPT,
        Algorithm::SlidingWindow => &MULTI_WINDOW_SCRIPT,
        Algorithm::TokenBucket => &TOKEN_BUCKET_SCRIPT,
        Algorithm::FixedWindow => &FIXED_WINDOW_SCRIPT,
        Algorithm::SlidingCounter => &SLIDING_COUNTER_SCRIPT,
    }
}

/// Every script, for preloading (`SCRIPT LOAD`) and for measuring.
pub fn all() -> [&'static redis::Script; 5] {
    [
        &SLIDING_WINDOW_SCRIPT,
        &MULTI_WINDOW_SCRIPT,
        &TOKEN_BUCKET_SCRIPT,
        &FIXED_WINDOW_SCRIPT,
        &SLIDING_COUNTER_SCRIPT,
    ]
}

/// Fills in the arguments of one call.
pub(crate) fn invocation<'a>(
    policy: &Policy,
    keys: &[String],
    consume: bool,
    cost: u64,
    nonce: &str,
) -> redis::ScriptInvocation<'a> {
    let mut call = for_policy(policy).prepare_invoke();
    for key in keys {
        call.key(key);
    }
    call.arg(if consume { "allow" } else { "peek" })
        .arg(cost)
        .arg(nonce);
    for w in policy.windows() {
        call.arg(w.max_requests()).arg(w.micros());
    }
    call
}

/// Reads a script's reply.
pub(crate) fn outcome(reply: &[i64]) -> Result<Outcome, Error> {
    let [allowed, window, _limit, remaining, reset_after, retry_after] = reply else {
        return Err(Error::UnexpectedReply(format!("{reply:?}")));
    };
    let non_negative = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Outcome {
        allowed: *allowed == 1,
        window_index: usize::try_from(*window - 1).unwrap_or(0),
        remaining: non_negative(*remaining),
        reset_after_us: non_negative(*reset_after),
        retry_after_us: non_negative(*retry_after),
    })
}
