//! Routing rules in an axum app: `ratelimit-tower`'s [`RuleSet`], told where axum keeps the
//! original path and the matched route.
//!
//! The matching itself (patterns, methods, headers, how each spelling of a path is treated) is
//! documented in [`ratelimit_tower::rules`]. What axum adds:
//!
//! - **Nested routers.** [`Router::nest`](axum::Router::nest) strips the prefix from the URI
//!   the inner router sees; rules match axum's `OriginalUri`, the path as the client sent it,
//!   so they are written against public paths whichever router the layer is installed on.
//! - **The matched route.** Rules also match the route the router chose, axum's `MatchedPath`:
//!   a rule whose pattern is that route (`/api/users/{id}`, parameter names aside) governs
//!   every request the router sends to its handler, whatever the spelling. axum 0.8 wraps each
//!   route with the layer under both [`Router::layer`](axum::Router::layer)
//!   ([`RouterExt::rate_limit`](crate::RouterExt::rate_limit)) and
//!   [`Router::route_layer`](axum::Router::route_layer)
//!   ([`RouterExt::rate_limit_routes`](crate::RouterExt::rate_limit_routes)), so the layer runs
//!   after routing and `MatchedPath` is there. It is absent where the layer runs before
//!   routing: wrapped around the whole `Router` as a service (a `ServiceBuilder` in front of
//!   it, or `layer.layer(router)`), and for requests that no route matches (the fallback).
//!   There the path alone decides, decoded the way the router's handlers decode it. All three
//!   installations are tested spelling by spelling against a real router
//!   (`ratelimit-axum/tests/spellings.rs`). `Router::layer` also limits requests no route
//!   matches (404s, under the default policy); `route_layer` leaves them unlimited.
//!
//! ```
//! use ratelimit_axum::axum_rules;
//! use ratelimit_core::Config;
//! use ratelimit_core::Overrides;
//!
//! let config = Config::from_yaml_str_with(
//!     r#"
//! rate_limiter:
//!   windows: [{ max_requests: 100, duration: 1m }]
//!   rules:
//!     - name: health
//!       match: { path: /health }
//!       exempt: true
//!     - name: login
//!       match: { path: /login, methods: [POST] }
//!       windows: [{ max_requests: 5, duration: 1m }]
//! "#,
//!     None,
//!     &Overrides::default(),
//! )?;
//! let rules = axum_rules(&config);
//! assert_eq!(rules.rule_names(), ["health", "login"]);
//! # Ok::<(), ratelimit_core::ConfigError>(())
//! ```

use axum::extract::{MatchedPath, OriginalUri};
use http::Extensions;
use ratelimit_core::Config;
pub use ratelimit_tower::RuleSet;

/// The rules of `config`, matching axum's `OriginalUri` and `MatchedPath` when present.
pub fn axum_rules(config: &Config) -> RuleSet {
    RuleSet::from_config(config)
        .with_original_path(original_path)
        .with_matched_route(matched_route)
}

/// The path the client sent, before any [`Router::nest`](axum::Router::nest) stripped a
/// prefix: axum's `OriginalUri`.
///
/// ```
/// use axum::extract::OriginalUri;
/// use ratelimit_axum::original_path;
///
/// let mut extensions = http::Extensions::new();
/// assert_eq!(original_path(&extensions), None);
/// extensions.insert(OriginalUri("/api/users/7?x=1".parse()?));
/// assert_eq!(original_path(&extensions), Some("/api/users/7"));
/// # Ok::<(), http::uri::InvalidUri>(())
/// ```
pub fn original_path(extensions: &Extensions) -> Option<&str> {
    extensions
        .get::<OriginalUri>()
        .map(|original| original.0.path())
}

/// The route the router matched (`/api/users/{id}`), when the layer runs after routing:
/// axum's `MatchedPath`.
pub fn matched_route(extensions: &Extensions) -> Option<&str> {
    extensions.get::<MatchedPath>().map(MatchedPath::as_str)
}
