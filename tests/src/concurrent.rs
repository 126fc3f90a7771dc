//! Many callers at once on one key: the shape of every exactness-under-concurrency test.
//!
//! [`spawn_allows`] starts a burst without waiting for it (several bursts can then overlap);
//! [`concurrent_allows`] starts one and collects its decisions.

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

/// Calls `limiter.allow(key)` from `n` tasks at once and returns their decisions, in spawn
/// order. Panics if a task panicked or a decision failed, naming `context` (the backend, the
/// algorithm: whatever tells the failing case apart).
///
/// ```no_run
/// # async fn example(limiter: ratelimit_core::RateLimiter) {
/// let decisions = ratelimit_tests::concurrent_allows(&limiter, "hot", 1000, "memory").await;
/// assert_eq!(decisions.iter().filter(|d| d.allowed()).count(), 100);
/// # }
/// ```
pub async fn concurrent_allows(
    limiter: &RateLimiter,
    key: &str,
    n: usize,
    context: &str,
) -> Vec<Decision> {
    let mut decisions = Vec::with_capacity(n);
    for task in spawn_allows(limiter, key, n) {
        let decision = task
            .await
            .unwrap_or_else(|e| panic!("{context}: a calling task panicked: {e}"))
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        decisions.push(decision);
    }
    decisions
}
