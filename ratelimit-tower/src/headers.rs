//! The rate-limit headers: the IETF draft's structured fields and the legacy `X-RateLimit-*`.
//!
//! ```text
//! RateLimit-Policy: "1m";q=100;w=60, "1h";q=1000;w=3600
//! RateLimit: "1m";r=0;t=17
//! X-RateLimit-Limit: 100
//! X-RateLimit-Remaining: 0
//! X-RateLimit-Reset: 17
//! ```
//!
//! Every duration is in whole seconds, rounded up: a client that waits what it was told must
//! not be refused again for coming a fraction of a second early.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use ratelimit_core::config::HeaderFamilies;
use ratelimit_core::{Decision, Policy};

use crate::plan::Target;

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `X-RateLimit-Limit`.
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`: seconds until the quota is back (a delta, not a timestamp).
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_tower::headers::ceil_secs;
/// assert_eq!(ceil_secs(Duration::from_millis(16_001)), 17);
/// assert_eq!(ceil_secs(Duration::from_secs(17)), 17);
/// assert_eq!(ceil_secs(Duration::ZERO), 0);
/// ```
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `Retry-After` for a denial: whole seconds rounded up, at least 1.
pub fn retry_after_secs(decision: &Decision) -> u64 {
    decision.retry_after().map_or(1, ceil_secs).max(1)
}

/// The `RateLimit-Policy` value of `policy`: one item per window, named by its length.
pub fn policy_header(policy: &Policy) -> Option<HeaderValue> {
    let items: Vec<String> = policy
        .windows()
        .iter()
        .map(|w| {
            format!(
                "\"{}\";q={};w={}",
                w.label(),
                w.max_requests(),
                ceil_secs(w.duration()).max(1)
            )
        })
        .collect();
    HeaderValue::from_str(&items.join(", ")).ok()
}

fn number(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

/// Writes the enabled families for `decision` under `target` into `headers`.
pub fn write(
    headers: &mut HeaderMap,
    families: HeaderFamilies,
    target: &Target,
    decision: &Decision,
) {
    let reset = ceil_secs(decision.reset_after());
    if families.ietf {
        if let Some(policy) = target.policy_header_value() {
            headers.insert(RATELIMIT_POLICY.clone(), policy.clone());
        }
        let item = format!(
            "\"{}\";r={};t={}",
            decision.window().label(),
            decision.remaining(),
            reset
        );
        if let Ok(value) = HeaderValue::from_str(&item) {
            headers.insert(RATELIMIT.clone(), value);
        }
    }
    if families.legacy {
        headers.insert(X_RATELIMIT_LIMIT.clone(), number(decision.limit()));
        headers.insert(X_RATELIMIT_REMAINING.clone(), number(decision.remaining()));
        headers.insert(X_RATELIMIT_RESET.clone(), number(reset));
    }
}
