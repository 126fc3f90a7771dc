//! [`RateLimited`]: the rate-limit decision of a request, as an axum extractor.
//!
//! The layer leaves a [`RateLimitInfo`] in the request's extensions whenever it planned to
//! limit the request and let it through: allowed (by Redis, the cache, memory, or a fallback
//! while Redis is away: [`Decision::source`] says which), over the limit in shadow mode, or let
//! through because the limiter failed in a way no fallback covers (then the decision is the
//! `open` fallback's, [`Decision::fallback_open`]). A handler that takes [`RateLimited`] never
//! gets a 500 because Redis failed. Where no decision exists because nothing was limited (an
//! exempt route, an allow-listed client, `on_missing_key: allow`, a route outside the layer)
//! take `Option<RateLimited>`: it is `None` there.

use std::convert::Infallible;
use std::fmt;

use axum::body::Body;
use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use ratelimit_core::{Decision, Policy};
use ratelimit_tower::response::problem;
use ratelimit_tower::{RateLimitInfo, Target};

/// The rate-limit decision the layer made for this request.
///
/// Rejects with [`RateLimitedRejection`] (a `500`) when there is none: the layer is not
/// installed on the route, or the request was not limited (exempt, allow-listed, or without a
/// key under `on_missing_key: allow`). Take `Option<RateLimited>` where that is expected. When
/// Redis is away the decision is there, from the fallback (`decision().source()` is
/// `fallback_open`, `fallback_local`...).
///
/// ```
/// use axum::{Router, routing::get};
/// use ratelimit_axum::{RateLimited, RouterExt};
/// use ratelimit_core::{Config, RateLimiter};
/// use std::time::Duration;
///
/// async fn handler(limit: RateLimited) -> String {
///     format!(
///         "{} requests left under {}",
///         limit.decision().remaining(),
///         limit.rule().unwrap_or("the default policy")
///     )
/// }
///
/// async fn maybe(limit: Option<RateLimited>) -> String {
///     limit.map_or_else(|| "not limited".into(), |l| l.policy().name().to_owned())
/// }
///
/// let limiter = RateLimiter::new_lazy(Config::new(100, Duration::from_secs(60)))?;
/// let app: Router = Router::new()
///     .route("/", get(handler))
///     .route("/maybe", get(maybe))
///     .rate_limit(&limiter);
/// # drop(app);
/// # Ok::<(), ratelimit_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RateLimited(pub RateLimitInfo);

impl RateLimited {
    /// The decision: whether it was allowed (`false` only in shadow mode), what is left, when
    /// the quota is back.
    pub fn decision(&self) -> &Decision {
        &self.0.decision
    }

    /// The rule that applied: a configured rule's name, `default` for the top-level policy, or
    /// `None` for a layer without rules.
    pub fn rule(&self) -> Option<&str> {
        self.0.target.rule()
    }

    /// The policy that applied.
    pub fn policy(&self) -> &Policy {
        self.0.target.policy()
    }

    /// The policy as the layer applied it, with its rule and shadow flag.
    pub fn target(&self) -> &Target {
        &self.0.target
    }

    /// Whether the request was over the limit and let through only because of shadow mode.
    pub fn shadow_denied(&self) -> bool {
        !self.0.decision.allowed()
    }

    /// The decision and its target.
    pub fn into_inner(self) -> RateLimitInfo {
        self.0
    }
}

impl<S> FromRequestParts<S> for RateLimited
where
    S: Send + Sync,
{
    type Rejection = RateLimitedRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RateLimitInfo>()
            .cloned()
            .map(Self)
            .ok_or(RateLimitedRejection { _private: () })
    }
}

impl<S> OptionalFromRequestParts<S> for RateLimited
where
    S: Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<RateLimitInfo>().cloned().map(Self))
    }
}

/// [`RateLimited`] was asked for, but the request carries no decision.
///
/// A server-side mistake, not the client's: it becomes `500 Internal Server Error` with an
/// RFC 9457 problem document that names the cause and echoes nothing from the request.
///
/// ```
/// use axum::response::IntoResponse;
/// use ratelimit_axum::{RateLimited, RateLimitedRejection};
/// # async fn demo() {
/// let (mut parts, ()) = http::Request::new(()).into_parts();
/// let rejection: RateLimitedRejection =
///     <RateLimited as axum::extract::FromRequestParts<()>>::from_request_parts(&mut parts, &())
///         .await
///         .expect_err("no layer, no decision");
/// assert_eq!(rejection.into_response().status(), 500);
/// # }
/// # tokio::runtime::Runtime::new().expect("runtime").block_on(demo());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitedRejection {
    _private: (),
}

impl RateLimitedRejection {
    const DETAIL: &'static str = "No rate limit decision for this request: the rate limit layer \
        is not installed on this route, or the request was not limited (exempt, allow-listed, or \
        without a key under on_missing_key: allow). Take Option<RateLimited> where that is \
        expected.";

    /// The problem document's `detail`: shorter than [`Self::DETAIL`], and nothing from the
    /// request.
    const PROBLEM_DETAIL: &'static str =
        "rate limit layer not installed on this route, or the request was not limited";
}

impl fmt::Display for RateLimitedRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::DETAIL)
    }
}

impl std::error::Error for RateLimitedRejection {}

impl IntoResponse for RateLimitedRejection {
    fn into_response(self) -> Response {
        tracing::error!("{}", Self::DETAIL);
        problem(StatusCode::INTERNAL_SERVER_ERROR, Self::PROBLEM_DETAIL)
            .map(Body::from)
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http::Request;
    use http::header::CONTENT_TYPE;
    use http_body_util::BodyExt;
    use ratelimit_core::Overrides;
    use ratelimit_core::{Config, RateLimiter};
    use ratelimit_tower::PeerAddr;
    use tower::ServiceExt;

    use super::*;
    use crate::RouterExt;

    async fn decision(limit: RateLimited) -> String {
        format!(
            "{} {} {} {}",
            limit.rule().unwrap_or("-"),
            limit.policy().name(),
            limit.decision().remaining(),
            limit.shadow_denied()
        )
    }

    async fn maybe(limit: Option<RateLimited>) -> String {
        limit.map_or_else(
            || "none".to_owned(),
            |l| l.decision().remaining().to_string(),
        )
    }

    fn limiter(yaml: &str) -> RateLimiter {
        let config =
            Config::from_yaml_str_with(yaml, None, &Overrides::default()).expect("valid config");
        RateLimiter::new_lazy(config).expect("limiter")
    }

    fn app(limiter: &RateLimiter) -> Router {
        Router::new()
            .route("/limited", get(decision))
            .route("/maybe", get(maybe))
            .route("/health", get(maybe))
            .route("/health/strict", get(decision))
            .rate_limit(limiter)
    }

    const YAML: &str = r#"
rate_limiter:
  windows: [{ max_requests: 5, duration: 1m }]
  rules:
    - name: health
      match: { path: /health/* }
      exempt: true
    - name: shadowed
      match: { path: /limited, headers: { x-shadow: "1" } }
      windows: [{ max_requests: 1, duration: 1m }]
      shadow: true
"#;

    async fn get_text(app: &Router, uri: &str, shadow: bool) -> (StatusCode, String, String) {
        let mut request = Request::get(uri);
        if shadow {
            request = request.header("x-shadow", "1");
        }
        let mut request = request.body(Body::empty()).expect("request");
        request
            .extensions_mut()
            .insert(PeerAddr("198.51.100.4:1234".parse().expect("addr")));
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).expect("utf-8"),
        )
    }

    #[tokio::test]
    async fn handlers_see_the_decision() {
        let app = app(&limiter(YAML));
        let (status, _, body) = get_text(&app, "/limited", false).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "default default 4 false");
        let (_, _, body) = get_text(&app, "/maybe", false).await;
        assert_eq!(body, "3");
    }

    #[tokio::test]
    async fn shadow_denials_are_visible_to_handlers() {
        let app = app(&limiter(YAML));
        let (_, _, first) = get_text(&app, "/limited", true).await;
        assert_eq!(first, "shadowed shadowed 0 false");
        let (status, _, second) = get_text(&app, "/limited", true).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(second, "shadowed shadowed 0 true");
    }

    #[tokio::test]
    async fn exempt_requests_have_no_decision() {
        let app = app(&limiter(YAML));
        let (status, _, body) = get_text(&app, "/health", false).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "none"));
        let (status, content_type, body) = get_text(&app, "/health/strict", false).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(content_type, "application/problem+json");
        assert!(body.contains("rate limit layer not installed on this route"));
    }

    #[tokio::test]
    async fn without_the_layer_the_extractor_rejects() {
        let app: Router = Router::new()
            .route("/limited", get(decision))
            .route("/maybe", get(maybe));
        let (status, content_type, body) = get_text(&app, "/limited?secret=1", false).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(content_type, "application/problem+json");
        let problem: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(problem["status"], 500);
        assert!(!body.contains("secret"));
        let (status, _, body) = get_text(&app, "/maybe", false).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "none"));
    }

    #[test]
    fn rejection_displays_its_cause() {
        let rejection = RateLimitedRejection { _private: () };
        assert!(rejection.to_string().contains("not installed"));
    }
}
