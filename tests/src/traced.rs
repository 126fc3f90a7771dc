//! Decisions made under a chosen `tracing` subscriber, for the tests of what a decision's span
//! carries (its fields, its export to OpenTelemetry).

use std::time::Duration;

use ratelimit_core::{Config, RateLimiter};

/// Makes two decisions for `key` on an in-memory limiter of one request a minute (so the first
/// is allowed and the second denied) on a current-thread runtime, with `subscriber` as the
/// default subscriber throughout; whether each was allowed.
///
/// ```
/// let allowed = ratelimit_tests::two_decisions_traced(tracing::subscriber::NoSubscriber::default(), "k");
/// assert_eq!(allowed, [true, false]);
/// ```
pub fn two_decisions_traced<S>(subscriber: S, key: &str) -> [bool; 2]
where
    S: tracing::Subscriber + Send + Sync + 'static,
{
    decisions_traced(subscriber, key, false)
}

/// [`two_decisions_traced`], each decision made with `allow_now` (no future).
///
/// ```
/// let allowed = ratelimit_tests::two_decisions_traced_now(tracing::subscriber::NoSubscriber::default(), "k");
/// assert_eq!(allowed, [true, false]);
/// ```
pub fn two_decisions_traced_now<S>(subscriber: S, key: &str) -> [bool; 2]
where
    S: tracing::Subscriber + Send + Sync + 'static,
{
    decisions_traced(subscriber, key, true)
}

fn decisions_traced<S>(subscriber: S, key: &str, now: bool) -> [bool; 2]
where
    S: tracing::Subscriber + Send + Sync + 'static,
{
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        runtime.block_on(async {
            let limiter = RateLimiter::new(Config::new(1, Duration::from_secs(60)))
                .await
                .expect("an in-memory limiter");
            let mut allowed = [false; 2];
            for slot in &mut allowed {
                let decision = if now {
                    limiter.allow_now(key).expect("memory decides now")
                } else {
                    limiter.allow(key).await
                };
                *slot = decision.expect("memory decides").allowed();
            }
            allowed
        })
    })
}
