//! Many callers at once on one key: the shape of every exactness-under-concurrency test.

use ratelimit_core::{Decision, Error, RateLimiter};
use tokio::task::JoinHandle;

/// Spawns `n` tasks, each calling `limiter.allow(key)` once, and returns their handles without
/// awaiting them, so a test can start several such bursts before collecting any.
pub fn spawn_allows(
    limiter: &RateLimiter,
    key: &str,
    n: usize,
) -> Vec<JoinHandle<Result<Decision, Error>>> {
    (0..n)
        .map(|_| {
            let limiter = limiter.clone();
            let key = key.to_owned();
            tokio::spawn(async move { limiter.allow(key).await })
        })
        .collect()
}
