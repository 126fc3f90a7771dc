//! The responses this layer writes itself: 429 when denied, 400 when no key can be found, 500
//! when the server gave no peer address.
//!
//! Bodies are RFC 9457 problem documents (`application/problem+json`). A denial uses the
//! quota-exceeded problem type of draft-ietf-httpapi-ratelimit-headers, whose
//! `violated-policies` lists the policies by the names the `RateLimit-Policy` header gives
//! them. Bodies name policies and windows from configuration and never echo anything from the
//! request.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use ratelimit_core::Decision;
use serde_json::json;

use crate::headers::{self, HeaderSettings};
use crate::plan::Target;

const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

/// The draft's problem type for a request over its quota.
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// `429 Too Many Requests` for a denied `decision`. `retry` is the draft's `t`
/// ([`headers::reset_secs`]): `Retry-After`, `RateLimit`'s `t` and `X-RateLimit-Reset` are all
/// written from it.
pub fn too_many_requests(
    target: &Target,
    decision: &Decision,
    settings: HeaderSettings,
    retry: u64,
) -> Response<Bytes> {
    let window = decision.window();
    let body = json!({
        "type": QUOTA_EXCEEDED,
        "title": "Request cannot be satisfied as assigned quota has been exceeded",
        "status": 429,
        "detail": format!(
            "Rate limit of {} requests per {} exceeded; retry in {retry} s.",
            target.fields().in_requests(window.max_requests()),
            window.label()
        ),
        "violated-policies": target.policy_id(decision.window_index()).into_iter().collect::<Vec<_>>(),
    });
    let mut response = problem_response(StatusCode::TOO_MANY_REQUESTS, &body);
    let headers_out = response.headers_mut();
    headers_out.insert(RETRY_AFTER, HeaderValue::from(retry));
    headers::write(headers_out, settings, target.fields(), decision, retry);
    response
}

/// `429` for a request without a key, when so configured: there is no decision to describe.
pub fn denied_without_key() -> Response<Bytes> {
    problem(
        StatusCode::TOO_MANY_REQUESTS,
        "Requests without an identity are not accepted.",
    )
}

/// `400 Bad Request` for a request whose identity cannot be found (no key header, a malformed
/// entry where a trusted proxy should have written the client's address).
pub fn missing_key() -> Response<Bytes> {
    problem(
        StatusCode::BAD_REQUEST,
        "The request carries no usable identity for rate limiting.",
    )
}

/// `500 Internal Server Error` for a request that needed the socket peer's address when the
/// server gave none: the server's set-up, not the client's request, is at fault.
pub fn missing_peer() -> Response<Bytes> {
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The server is not set up to tell clients apart, so it cannot serve this request now.",
    )
}

/// A problem document of type `about:blank` (its title is the status's reason phrase), so
/// every crate of the workspace writes problems the same way.
///
/// ```
/// use http::StatusCode;
/// use ratelimit_tower::response::problem;
/// let response = problem(StatusCode::BAD_REQUEST, "No key.");
/// assert_eq!(response.status(), 400);
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
/// assert_eq!(body["title"], "Bad Request");
/// assert_eq!(body["detail"], "No key.");
/// ```
pub fn problem(status: StatusCode, detail: &str) -> Response<Bytes> {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
    });
    problem_response(status, &body)
}

fn problem_response(status: StatusCode, body: &serde_json::Value) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    response
}
