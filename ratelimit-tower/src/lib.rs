//! A tower [`Layer`](tower_layer::Layer) that rate-limits HTTP requests.
//!
//! ```
//! # async fn demo() {
//! use std::time::Duration;
//! use ratelimit_core::Config;
//! use ratelimit_tower::RateLimitLayer;
//! use tower::ServiceBuilder;
//!
//! let service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(Config::new(100, Duration::from_secs(60))))
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
//!     });
//! # drop(service);
//! # }
//! ```
//!
//! Every request is planned ([`Planner`]): exempt, rejected (no key), or limited under a policy
//! for a key. A limited request that is allowed goes to the inner service and its response
//! gains the rate-limit headers; a denied one is answered here with `429 Too Many Requests`, a
//! `Retry-After` and an RFC 9457 problem document. A denial is a response, never an error, so
//! the layer composes with any error handling.
//!
//! Keys made of the client IP need the socket peer's address: a hyper server inserts
//! [`PeerAddr`]; an axum app is served with `into_make_service_with_connect_info::<SocketAddr>()`
//! and the layer reads axum's `ConnectInfo` (feature `axum`, on in `ratelimit-axum`). A server
//! that gives no address is told once, loudly, in the log, and its requests are answered `500`:
//! the set-up is at fault, not the client.
//!
//! # Layout
//!
//! Modules are private and their items re-exported here, one path each, except two toolkits
//! kept as namespaces, as tower keeps `future`: [`headers`] (the header families, for code
//! that writes them itself) and [`response`] (the problem documents), and [`future`] itself.
//!
//! - `layer.rs`: [`RateLimitLayer`], which builds the service, and its builder.
//! - `service.rs`: [`RateLimit`], the `Service`; [`future`]: its response future.
//! - `state.rs`: what a layer shares with its services, replaced whole on a reload.
//! - `info.rs`: [`RateLimitInfo`], the decision left in the extensions for handlers.
//! - `body.rs`: [`ResponseBody`], the inner body or one of ours, without boxing.
//! - `plan.rs`: [`Planner`], [`Plan`], [`Target`]: what to do with a request.
//! - `rules.rs`: [`RuleSet`], the planner of a configuration's routing rules.
//! - `extract.rs`: [`KeyExtractor`] and the built-in extractors.
//! - `ip_text.rs`: IP addresses written as text for keys, without `fmt`.
//! - `peer.rs`: [`PeerAddr`], the socket peer, and where the layer finds it.
//! - `proxy.rs`: [`TrustedProxies`], the client IP behind trusted proxies.
//! - [`headers`]: the rate-limit header families.
//! - `hooks.rs`: [`Denial`], what the denial hooks see.
//! - [`response`]: the 429, 400 and 500 responses.
//! - `error.rs`: [`Error`], why a layer could not be built.

#![deny(missing_debug_implementations)]

mod body;
mod error;
mod extract;
pub mod future;
pub mod headers;
mod hooks;
mod info;
mod ip_text;
mod layer;
mod peer;
mod plan;
mod proxy;
pub mod response;
mod rules;
mod service;
mod state;
#[cfg(test)]
mod test_support;

pub use body::ResponseBody;
pub use error::Error;
pub use extract::{
    AllOf, ClientIp, CookieKey, ExtensionKey, FirstOf, HeaderKey, KeyExtractor, PathParam, PeerIp,
    RequestInfo, from_source, ip_key, path_param,
};
pub use hooks::Denial;
pub use info::RateLimitInfo;
pub use layer::{RateLimitLayer, RateLimitLayerBuilder, ReloadHandle, default_planner};
pub use peer::{PeerAddr, PeerLookup, peer_from_extension};
pub use plan::{Exemptions, Plan, Planner, SinglePolicy, Target};
pub use proxy::{MAX_HOPS, ProxyError, TrustedProxies};
pub use rules::{PathLookup, RuleSet};
pub use service::RateLimit;
