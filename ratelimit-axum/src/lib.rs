//! Rate limiting for axum apps, with per-route rules, on top of `ratelimit-tower`.
//!
//! One call installs the limiter on a [`Router`](axum::Router): requests are matched against
//! the configuration's rules (path, method, headers; the first match wins), limited under the
//! rule's policy and key, and answered with `429 Too Many Requests` when over the limit.
//! Handlers can read the decision with the [`RateLimited`] extractor.
//!
//! # Quick start
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use ratelimit_axum::{RateLimited, RouterExt};
//! use ratelimit_core::{Config, RateLimiter};
//!
//! async fn handler(limit: RateLimited) -> String {
//!     format!("hello; {} requests left", limit.decision().remaining())
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // 100 requests a minute per client IP; `Config::from_yaml_file` adds Redis and rules.
//! let limiter = RateLimiter::new(Config::new(100, Duration::from_secs(60))).await?;
//! let app = Router::new().route("/", get(handler)).rate_limit(&limiter);
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! // The peer address is what IP keys are made of: serve with connect info.
//! let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>());
//! # drop(server); Ok(()) }
//! # tokio::runtime::Runtime::new().expect("runtime").block_on(demo()).expect("demo");
//! ```
//!
//! # Layout
//!
//! - `rules.rs`: [`axum_rules`], `ratelimit-tower`'s [`RuleSet`] reading axum's original path and
//!   matched route.
//! - `extract.rs`: [`RateLimited`], the decision as an extractor, and its rejection.
//! - `keys.rs`: [`MatchedPathParam`], a key from the route's path parameters.
//! - `router.rs`: [`layer`], [`layer_from_config`], [`connect_info_peer`], and
//!   [`RouterExt::rate_limit`] / [`RouterExt::rate_limit_routes`], the one-liners.
//!
//! The layer itself, its responses and headers, are `ratelimit-tower`'s [`RateLimitLayer`].

mod extract;
mod keys;
mod router;
mod rules;

pub use extract::{RateLimited, RateLimitedRejection};
pub use keys::MatchedPathParam;
pub use ratelimit_tower::RateLimitLayer;
pub use router::{RouterExt, connect_info_peer, layer, layer_from_config, rules_planner};
pub use rules::{RuleSet, axum_rules, matched_route, original_path};

/// The examples of `docs/API.md`, compiled and run as doctests so the page stays true.
#[cfg(doctest)]
#[doc = include_str!("../../docs/API.md")]
mod api_docs {}
