//! The layer on an axum app as a client sees it: the rules, the headers, the 429 and the
//! extractor, with the app called in process from a known peer; and the peer address itself
//! with the app served on a loopback socket (`axum::serve`, with and without connect info)
//! and spoken to over HTTP.

mod common;

use axum::Router;
use axum::routing::get;
use common::{Reply, call, fetch, from_peer, limiter, serve};
use ratelimit_axum::{RateLimited, RouterExt};

const CONFIG: &str = r#"
rate_limiter:
  windows: [{ max_requests: 5, duration: 1m }]
  headers: [ietf, legacy]
  rules:
    - name: health
      match: { path: /health }
      exempt: true
    - name: api
      match: { path: "/api/*", methods: [GET] }
      windows: [{ max_requests: 3, duration: 1m }]
"#;

async fn decision(limit: RateLimited) -> String {
    format!(
        "{} {}",
        limit.rule().unwrap_or("-"),
        limit.decision().remaining()
    )
}

async fn maybe(limit: Option<RateLimited>) -> &'static str {
    if limit.is_some() { "limited" } else { "exempt" }
}

/// The app, limited by the rules of `yaml`.
fn app(yaml: &str) -> Router {
    Router::new()
        .route("/api/hello", get(decision))
        .route("/api/users/{id}", get(decision))
        .route("/health", get(maybe))
        .route("/other", get(decision))
        .route("/maybe", get(maybe))
        .rate_limit(&limiter(yaml))
}

/// The app called in process, its requests from [`common::PEER`] (127.0.0.1).
fn in_process(yaml: &str) -> Router {
    from_peer(app(yaml))
}

/// `GET path`, allowed: the handler saw the decision the headers describe (its body is `rule
/// remaining`), and `RateLimit-Policy` is `policy`. The reply, for more checks.
async fn allowed(app: &Router, path: &str, rule: &str, remaining: u64, policy: &str) -> Reply {
    let response = call(app, "GET", path).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, format!("{rule} {remaining}"), "{response:?}");
    assert_eq!(
        response.header("ratelimit-policy"),
        Some(policy),
        "{response:?}"
    );
    response
}

#[tokio::test]
async fn three_allowed_then_429_with_headers() {
    let app = in_process(CONFIG);
    for remaining in [2u64, 1, 0] {
        let response = allowed(&app, "/api/hello", "api", remaining, "\"api-1m\";q=3;w=60").await;
        let ratelimit = response.header("ratelimit").expect("RateLimit header");
        let prefix = format!("\"api-1m\";r={remaining};t=");
        let reset: u64 = ratelimit
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{ratelimit} does not start with {prefix}"))
            .parse()
            .expect("t is a number");
        assert!((1..=60).contains(&reset), "{ratelimit}");
        assert_eq!(response.number("x-ratelimit-limit"), 3);
        assert_eq!(response.number("x-ratelimit-remaining"), remaining);
        // Epoch seconds by default.
        assert!(response.number("x-ratelimit-reset") > 1_700_000_000);
    }

    let denied = call(&app, "GET", "/api/hello").await;
    assert_eq!(denied.status, 429, "{denied:?}");
    assert_eq!(
        denied.header("content-type"),
        Some("application/problem+json")
    );
    let retry = denied.number("retry-after");
    assert!((1..=60).contains(&retry), "{denied:?}");
    assert_eq!(
        denied.header("ratelimit-policy"),
        Some("\"api-1m\";q=3;w=60")
    );
    assert_eq!(
        denied.header("ratelimit"),
        Some(format!("\"api-1m\";r=0;t={retry}").as_str()),
        "`t` and Retry-After name the same moment"
    );
    assert_eq!(denied.number("x-ratelimit-limit"), 3);
    assert_eq!(denied.number("x-ratelimit-remaining"), 0);
    let problem = denied.json();
    assert_eq!(problem["status"], 429);
    assert_eq!(
        problem["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(problem["violated-policies"], serde_json::json!(["api-1m"]));

    // The rule covers the whole `/api/*` tree under one quota.
    let other_api = call(&app, "GET", "/api/users/7").await;
    assert_eq!(other_api.status, 429, "{other_api:?}");
}

#[tokio::test]
async fn exempt_rule_is_never_limited() {
    let app = in_process(CONFIG);
    for _ in 0..10 {
        let response = call(&app, "GET", "/health").await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body, "exempt");
        assert_eq!(response.header("ratelimit"), None);
        assert_eq!(response.header("x-ratelimit-limit"), None);
    }
}

#[tokio::test]
async fn unmatched_path_gets_the_default_policy() {
    let app = in_process(CONFIG);
    for remaining in (0..5u64).rev() {
        let policy = "\"default-1m\";q=5;w=60";
        let response = allowed(&app, "/other", "default", remaining, policy).await;
        assert_eq!(response.number("x-ratelimit-remaining"), remaining);
    }
    let denied = call(&app, "GET", "/other").await;
    assert_eq!(denied.status, 429, "{denied:?}");
    let problem = denied.json();
    assert_eq!(
        problem["violated-policies"],
        serde_json::json!(["default-1m"])
    );
    // The default quota is separate from the rule's.
    let api = call(&app, "GET", "/api/hello").await;
    assert_eq!((api.status, api.body.as_str()), (200, "api 2"));
}

#[tokio::test]
async fn header_families_follow_the_configuration() {
    let app = in_process(&CONFIG.replace("headers: [ietf, legacy]", "headers: [legacy]"));
    let response = call(&app, "GET", "/api/hello").await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("ratelimit"), None);
    assert_eq!(response.header("ratelimit-policy"), None);
    assert_eq!(response.number("x-ratelimit-limit"), 3);
}

#[tokio::test]
async fn peer_address_comes_from_connect_info() {
    let listed = serve(
        app(&format!("{CONFIG}  allow_list: {{ ips: [127.0.0.1] }}\n")),
        true,
    )
    .await;
    for _ in 0..6 {
        let response = fetch(listed, "/maybe").await;
        assert_eq!((response.status, response.body.as_str()), (200, "exempt"));
    }
    let unlisted = serve(
        app(&format!("{CONFIG}  allow_list: {{ ips: [10.0.0.0/8] }}\n")),
        true,
    )
    .await;
    let response = fetch(unlisted, "/maybe").await;
    assert_eq!((response.status, response.body.as_str()), (200, "limited"));
}

#[tokio::test]
async fn without_connect_info_ip_keys_are_a_server_error() {
    let addr = serve(app(CONFIG), false).await;
    let response = fetch(addr, "/other").await;
    assert_eq!(response.status, 500, "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json")
    );
    // Exempt routes need no key.
    assert_eq!(fetch(addr, "/health").await.status, 200);
}

#[tokio::test]
async fn extractor_rejects_where_nothing_was_limited() {
    let app = in_process(&format!("{CONFIG}  allow_list: {{ ips: [127.0.0.1] }}\n"));
    let response = call(&app, "GET", "/api/hello").await;
    assert_eq!(response.status, 500, "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json")
    );
    assert!(response.body.contains("not installed"), "{response:?}");
}
