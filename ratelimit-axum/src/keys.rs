//! Keys from what axum knows of a request: a parameter of the route that matched.

use axum::extract::{MatchedPath, OriginalUri};
use ratelimit_tower::path_param;
use ratelimit_tower::{KeyExtractor, RequestInfo};

/// A path parameter of the route that matched, such as `id` in `/users/{id}`, percent-decoded
/// (`/users/%41` and `/users/A` are one key). It reads axum's [`MatchedPath`], so one layer
/// serves every route; a route without that parameter (or a request no route matched) has no
/// key.
///
/// The layer must run after routing: install it with [`Router::layer`](axum::Router::layer) or
/// [`Router::route_layer`](axum::Router::route_layer), which wrap each route.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use ratelimit_axum::MatchedPathParam;
/// use ratelimit_tower::RateLimitLayer;
///
/// let per_tenant = RateLimitLayer::builder()
///     .per_minute(1000)
///     .key(MatchedPathParam::new("tenant"))
///     .build()?;
/// let app: Router = Router::new()
///     .route("/t/{tenant}/orders", get(|| async { "orders" }))
///     .route_layer(per_tenant);
/// # drop(app);
/// # Ok::<(), ratelimit_tower::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct MatchedPathParam {
    name: Box<str>,
}

impl MatchedPathParam {
    /// The route's parameter `name`.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self {
            name: name.as_ref().into(),
        }
    }
}

impl KeyExtractor for MatchedPathParam {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        let pattern = request.extensions.get::<MatchedPath>()?.as_str();
        // Behind `Router::nest` the URI is stripped of the prefix the pattern still has.
        let path = request
            .extensions
            .get::<OriginalUri>()
            .map_or(request.uri.path(), |original| original.0.path());
        path_param(pattern, path, &self.name)
    }
}
