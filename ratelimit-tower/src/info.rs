//! What the layer tells handlers (and, when asked, outer layers): the decision of a request,
//! in its extensions.

use std::sync::Arc;

use ratelimit_core::Decision;

use crate::plan::Target;

/// The decision of the request, left in the request's extensions for handlers: what
/// ratelimit-axum's extractor reads. With
/// [`with_info_in_response`](crate::RateLimitLayer::with_info_in_response), allowed
/// responses carry it too, for outer layers.
#[derive(Debug, Clone)]
pub struct RateLimitInfo {
    /// The decision.
    pub decision: Decision,
    /// The target it was made for.
    pub target: Arc<Target>,
}
