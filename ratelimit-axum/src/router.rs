//! Wiring: the layer for an axum app, and the one-liner that installs it.
//!
//! [`layer`] builds a [`RateLimitLayer`] that plans with the configuration's rules
//! ([`axum_rules`]) and finds the client's socket address in axum's
//! [`ConnectInfo`](axum::extract::ConnectInfo). [`RouterExt::rate_limit`] installs it on a
//! [`Router`] for every request, [`RouterExt::rate_limit_routes`] for the requests a route
//! matched. Serve the app with
//! [`into_make_service_with_connect_info::<SocketAddr>()`](Router::into_make_service_with_connect_info)
//! so that the peer is known (tests add `MockConnectInfo` instead): without it, requests limited
//! by IP are answered `500`, and the log says once what to change.

use std::net::SocketAddr;

use axum::Router;
use http::Extensions;
use ratelimit_core::{Config, RateLimiter};
use ratelimit_tower::RateLimitLayer;

use crate::rules::axum_rules;

/// The socket peer of a request: a [`PeerAddr`](ratelimit_tower::PeerAddr) left by another server, else axum's
/// `ConnectInfo<SocketAddr>`, else a `MockConnectInfo<SocketAddr>` added by a test (the
/// layer's default lookup, [`peer_from_extension`](ratelimit_tower::peer_from_extension)).
///
/// ```
/// use std::net::SocketAddr;
/// use axum::extract::ConnectInfo;
/// use ratelimit_axum::connect_info_peer;
///
/// let peer: SocketAddr = "192.0.2.1:4000".parse()?;
/// let mut extensions = http::Extensions::new();
/// assert_eq!(connect_info_peer(&extensions), None);
/// extensions.insert(ConnectInfo(peer));
/// assert_eq!(connect_info_peer(&extensions), Some(peer));
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
pub fn connect_info_peer(extensions: &Extensions) -> Option<SocketAddr> {
    ratelimit_tower::peer_from_extension(extensions)
}

/// The layer for `limiter`'s configuration: its rules (see [`axum_rules`]), header families and
/// shadow flag, with the peer read by [`connect_info_peer`].
///
/// Without rules, every request gets the top-level policy, as with
/// [`RateLimitLayer::from_limiter`].
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use ratelimit_core::{Config, RateLimiter};
///
/// let limiter = RateLimiter::new_lazy(Config::new(100, Duration::from_secs(60)))?;
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(ratelimit_axum::layer(limiter));
/// # drop(app);
/// # Ok::<(), ratelimit_core::Error>(())
/// ```
pub fn layer(limiter: RateLimiter) -> RateLimitLayer {
    RateLimitLayer::from_limiter(limiter)
        .with_planner_builder(rules_planner)
        .with_peer_lookup(connect_info_peer)
}

/// The rules of `config` as a planner: rebuilt from the new configuration on every reload
/// (see [`RateLimitLayer::reload_handle`]).
pub fn rules_planner(config: &Config) -> std::sync::Arc<dyn ratelimit_tower::Planner> {
    std::sync::Arc::new(axum_rules(config))
}

/// [`layer`] for a limiter built from `config` without I/O (Redis connects on first use), or
/// why `config` is refused.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::Config;
///
/// let layer = ratelimit_axum::layer_from_config(Config::new(100, Duration::from_secs(60)))?;
/// assert!(ratelimit_axum::layer_from_config(Config::new(0, Duration::from_secs(60))).is_err());
/// # drop(layer);
/// # Ok::<(), ratelimit_core::Error>(())
/// ```
pub fn layer_from_config(config: Config) -> Result<RateLimitLayer, ratelimit_core::Error> {
    Ok(layer(RateLimiter::new_lazy(config)?))
}

/// Rate limiting for an axum [`Router`] in one call.
///
/// [`rate_limit`](Self::rate_limit) installs the layer with [`Router::layer`]: on every
/// request, including those no route matches (404s, limited under the default policy).
/// [`rate_limit_routes`](Self::rate_limit_routes) installs it with [`Router::route_layer`]:
/// only on requests a route matched. Either way axum wraps each route, so rules also match the
/// route the router chose (axum's `MatchedPath`; see [`axum_rules`](crate::axum_rules)). Either applies to the
/// routes added before it: call it last. Rules match the full path even behind
/// [`Router::nest`].
///
/// ```
/// use std::net::SocketAddr;
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use ratelimit_axum::RouterExt;
/// use ratelimit_core::{Config, RateLimiter};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = RateLimiter::new(Config::new(100, Duration::from_secs(60))).await?;
/// let app = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .rate_limit(&limiter);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>());
/// # drop(server); Ok(()) }
/// ```
pub trait RouterExt<S> {
    /// `self` with [`layer`]`(limiter.clone())` applied by [`Router::layer`]: every request,
    /// 404s included.
    fn rate_limit(self, limiter: &RateLimiter) -> Self;

    /// `self` with [`layer`]`(limiter.clone())` applied by [`Router::route_layer`]: the
    /// requests a route matched.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use ratelimit_axum::RouterExt;
    /// use ratelimit_core::{Config, RateLimiter};
    ///
    /// let limiter = RateLimiter::new_lazy(Config::new(100, Duration::from_secs(60)))?;
    /// let app: Router = Router::new()
    ///     .route("/api/users/{id}", get(|| async { "user" }))
    ///     .rate_limit_routes(&limiter);
    /// # drop(app);
    /// # Ok::<(), ratelimit_core::Error>(())
    /// ```
    fn rate_limit_routes(self, limiter: &RateLimiter) -> Self;
}

impl<S> RouterExt<S> for Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    fn rate_limit(self, limiter: &RateLimiter) -> Self {
        self.layer(layer(limiter.clone()))
    }

    fn rate_limit_routes(self, limiter: &RateLimiter) -> Self {
        self.route_layer(layer(limiter.clone()))
    }
}
