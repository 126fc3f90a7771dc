//! The responses this layer writes itself: 429 when denied, 400 when no key can be found.
//!
//! Bodies are RFC 9457 problem documents (`application/problem+json`). They name the policy
//! and window from configuration and never echo anything from the request.

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use ratelimit_core::Decision;
use ratelimit_core::config::HeaderFamilies;
use serde_json::json;

use crate::body::ResponseBody;
use crate::headers::{self, retry_after_secs};
use crate::plan::Target;

const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// `429 Too Many Requests` for a denied `decision`.
pub fn too_many_requests<B>(
    target: &Target,
    decision: &Decision,
    families: HeaderFamilies,
) -> Response<ResponseBody<B>> {
    let retry = retry_after_secs(decision);
    let window = decision.window();
    let body = json!({
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": format!(
            "Rate limit of {} requests per {} exceeded; retry in {retry} s.",
            window.max_requests(),
            window.label()
        ),
        "policy": target.policy().name(),
        "window": window.label(),
        "limit": window.max_requests(),
        "retry_after": retry,
    });
    let mut response = problem(StatusCode::TOO_MANY_REQUESTS, &body);
    let headers_out = response.headers_mut();
    headers_out.insert(RETRY_AFTER, HeaderValue::from(retry));
    headers::write(headers_out, families, target, decision);
    response
}

/// `429` for a request without a key, when so configured: there is no decision to describe.
pub fn denied_without_key<B>() -> Response<ResponseBody<B>> {
    let body = json!({
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "Requests without an identity are not accepted.",
    });
    problem(StatusCode::TOO_MANY_REQUESTS, &body)
}

/// `400 Bad Request` for a request whose identity cannot be found (no key header, a malformed
/// forwarding header from a trusted proxy).
pub fn missing_key<B>() -> Response<ResponseBody<B>> {
    let body = json!({
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "The request carries no usable identity for rate limiting.",
    });
    problem(StatusCode::BAD_REQUEST, &body)
}

fn problem<B>(status: StatusCode, body: &serde_json::Value) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::own(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    response
}
