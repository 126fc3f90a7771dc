//! What the layer tells handlers and outer layers: the decision of a request, in its
//! extensions.

use std::sync::Arc;

use ratelimit_core::Decision;

use crate::plan::Target;

/// The decision of the request, left in the response's extensions (and, for handlers, in the
/// request's): what ratelimit-axum's extractor reads.
#[derive(Debug, Clone)]
pub struct RateLimitInfo {
    /// The decision.
    pub decision: Decision,
    /// The target it was made for.
    pub target: Arc<Target>,
}
