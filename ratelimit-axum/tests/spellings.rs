//! Every way to spell a request against the rules: whatever the method and the spelling of the
//! path, a request that reaches a handler is governed by the rule that names
//! that handler's route, and no spelling turns a limited handler into an exempt one. Checked
//! with the layer installed the three ways an axum app can install it: `Router::layer`,
//! `Router::route_layer` (both see axum's `MatchedPath`), and around the whole router (before
//! routing: the path alone decides). The app has a catch-all route (a proxy or a single-page
//! app would), so that most spellings reach some handler. Requests are handed to the router in
//! process, each target as written: `http` parses it as hyper parses a request line, and no
//! client normalizes it on the way.

mod common;

use axum::Router;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{MethodFilter, MethodRouter, get, on};
use common::{call, from_peer, limiter};
use ratelimit_axum::{RateLimited, RouterExt};
use ratelimit_core::RateLimiter;
use tower::Layer;

/// Generous limits, which each rule takes from the top level (a rule without windows of its
/// own applies them under its own name): these tests look at which rule applied, not at denials.
const RULES: &str = r#"
rate_limiter:
  windows: [{ max_requests: 100000, duration: 1m }]
  rules:
    - name: health
      match: { path: /health }
      exempt: true
    - name: hello
      match: { path: /api/hello, methods: [GET] }
    - name: me
      match: { path: /api/users/me, methods: [GET] }
    - name: users
      match: { path: "/api/users/{id}", methods: [GET] }
    - name: files
      match: { path: "/files/{*rest}", methods: [GET] }
    - name: orders
      match: { path: /api/orders, methods: [POST] }
    - name: nested
      match: { path: /v2/hello, methods: [GET] }
"#;

/// How the layer is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Install {
    /// `Router::layer`: wraps every route (and the fallback).
    Layer,
    /// `Router::route_layer`: wraps the routes only.
    RouteLayer,
    /// Around the whole router, before routing.
    Outside,
}

const INSTALLS: [Install; 3] = [Install::Layer, Install::RouteLayer, Install::Outside];

/// Tells the client which handler answered and which rule the layer applied, in headers so
/// that `HEAD` responses carry them too.
fn answer(
    handler: &str,
    id: Option<&str>,
    limited: Option<RateLimited>,
) -> impl IntoResponse + use<> {
    let mut headers = HeaderMap::new();
    let header = |value: &str| value.parse().expect("header value");
    headers.insert("x-handler", header(handler));
    let rule = limited
        .as_ref()
        .and_then(RateLimited::rule)
        .unwrap_or("none");
    headers.insert("x-rule", header(rule));
    if let Some(id) = id {
        // The id as the handler sees it: decoded by `Path`.
        let encoded: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        headers.insert("x-id-hex", header(&encoded));
    }
    (headers, handler.to_owned())
}

/// A handler for `method` that answers as `name` (see [`answer`]).
fn answering(method: MethodFilter, name: &'static str) -> MethodRouter {
    on(method, move |l: Option<RateLimited>| async move {
        answer(name, None, l)
    })
}

fn routes() -> Router {
    let plain = [
        ("/api/hello", MethodFilter::GET, "hello"),
        ("/api/users/me", MethodFilter::GET, "me"),
        ("/files/{*rest}", MethodFilter::GET, "files"),
        ("/api/orders", MethodFilter::POST, "orders"),
        ("/health", MethodFilter::GET, "health"),
    ];
    plain
        .into_iter()
        .fold(Router::new(), |router, (path, method, name)| {
            router.route(path, answering(method, name))
        })
        .route(
            "/api/users/{id}",
            get(
                |Path(id): Path<String>, l: Option<RateLimited>| async move {
                    answer("users", Some(&id), l)
                },
            ),
        )
        .nest(
            "/v2",
            Router::new().route("/hello", answering(MethodFilter::GET, "nested")),
        )
        .route("/{*page}", answering(MethodFilter::GET, "pages"))
}

/// The app with the layer installed as `install` says, its requests from a known peer.
fn app(install: Install, limiter: &RateLimiter) -> Router {
    let app = match install {
        Install::Layer => routes().rate_limit(limiter),
        Install::RouteLayer => routes().rate_limit_routes(limiter),
        Install::Outside => {
            // The outer router has no route: everything goes to its fallback, the limited
            // inner router. The layer runs before the inner router routes.
            let limited = ratelimit_axum::layer(limiter.clone()).layer(routes());
            Router::new().fallback_service(limited)
        }
    };
    from_peer(app)
}

/// What came back: the status, and what [`answer`] told.
#[derive(Debug)]
struct Routed {
    status: u16,
    handler: Option<String>,
    rule: Option<String>,
    id: Option<Vec<u8>>,
}

/// `method target`, the target as written.
async fn send(app: &Router, method: &str, target: &str) -> Routed {
    let reply = call(app, method, target).await;
    let header = |name: &str| reply.header(name).map(str::to_owned);
    Routed {
        status: reply.status,
        handler: header("x-handler"),
        rule: header("x-rule"),
        id: reply.header("x-id-hex").map(|hex| {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect()
        }),
    }
}

/// The rule that must govern a request the router gave to `handler`; `None` for the
/// catch-all, which any rule but an exemption may govern (a limit rule whose path the request
/// spells differently applies there too: stricter, never looser).
fn expected_rule(handler: &str, method: &str, id: Option<&[u8]>) -> Option<&'static str> {
    Some(match handler {
        "hello" => "hello",
        "me" => "me",
        // The `{id}` handler serves `me` when the id decodes to it: the `me` rule's resource.
        "users" if id == Some(b"me".as_slice()) => "me",
        "users" => "users",
        "files" => "files",
        "orders" => "orders",
        "nested" => "nested",
        "health" => "none",
        "pages" => return None,
        other => panic!("{method}: unknown handler {other}"),
    })
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PURGE", "get",
    "Head",
];

/// Each route's path, spelled every way we know.
const SPELLINGS: &[&str] = &[
    // /api/hello
    "/api/hello",
    "/api/hello/",
    "/api/hello//",
    "/api//hello",
    "//api/hello",
    "/api/%68ello",
    "/api/%68%65llo",
    "/%61pi/hello",
    "/%61%70%69/hello",
    "/api/HELLO",
    "/API/hello",
    "/api/hello;a=1",
    "/api;x/hello",
    "/api%2Fhello",
    "/api%2fhello",
    "/api/x/../hello",
    "/api/x/%2e%2e/hello",
    "/api/x/%2E%2E/hello",
    "/api/./hello",
    "/api/%2e/hello",
    "/api/hello?x=1",
    "/api/hello%00",
    "/api/hello%20",
    "/api/hello%2F",
    "/api/hello%",
    // /api/users/me and /api/users/{id}
    "/api/users/me",
    "/api/users/%6De",
    "/api/users/%6de",
    "/api/users/%6D%65",
    "/api/users/m%65",
    "/api/users/me/",
    "/api/users//me",
    "/api/users/me;x=1",
    "/api/users%2Fme",
    "/api/%75sers/me",
    "/api/users/ME",
    "/api/users/7",
    "/api/users/%37",
    "/api/users/a%2Fb",
    "/api/users/%2e%2e",
    "/api/users/..",
    "/api/users/.",
    "/api/users/",
    "/api/users",
    "/api/users/x/../me",
    // /files/{*rest}
    "/files",
    "/files/",
    "/files//",
    "/files/a",
    "/files/a/b/c",
    "/files/%2e%2e/api/hello",
    "/files/../api/hello",
    "/%66iles/x",
    "/files%2Fx",
    // /api/orders
    "/api/orders",
    "/api/%6Frders",
    "/api/orders/",
    "/api//orders",
    // /health
    "/health",
    "/health/",
    "/%68ealth",
    "/health;x",
    "/health/../api/hello",
    "/health%2F..%2Fapi%2Fhello",
    // nested: /v2/hello
    "/v2/hello",
    "/v2/%68ello",
    "/%76%32/hello",
    "/v2/hello/",
    "/v2//hello",
];

/// Every method, every spelling, every installation: a request that reaches a handler is
/// governed by that handler's rule (never exempt unless the handler is the exempt route).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_that_reaches_a_handler_is_governed_by_its_rule() {
    let limiter = limiter(RULES);
    for install in INSTALLS {
        let app = app(install, &limiter);
        let mut reached = 0;
        for &method in METHODS {
            for &path in SPELLINGS {
                let reply = send(&app, method, path).await;
                let Some(handler) = reply.handler.as_deref() else {
                    continue;
                };
                reached += 1;
                match expected_rule(handler, method, reply.id.as_deref()) {
                    Some(expected) => assert_eq!(
                        reply.rule.as_deref(),
                        Some(expected),
                        "{install:?} {method} {path}: handler {handler} governed by the wrong \
                         rule ({reply:?})"
                    ),
                    None => assert!(
                        reply.rule.as_deref().is_some_and(|rule| rule != "none"),
                        "{install:?} {method} {path}: handler {handler} reached exempt \
                         ({reply:?})"
                    ),
                }
            }
        }
        // Not vacuous: GET and HEAD of many spellings reach handlers.
        assert!(
            reached > 40,
            "{install:?}: only {reached} requests reached a handler"
        );
    }
}

/// The cases the issue names, one by one, so that a regression says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_named_spellings_reach_their_handler_under_their_rule() {
    let limiter = limiter(RULES);
    let cases: &[(&str, &str, &str, &str)] = &[
        ("GET", "/api/hello", "hello", "hello"),
        ("HEAD", "/api/hello", "hello", "hello"),
        ("GET", "/api/users/%6De", "users", "me"),
        ("HEAD", "/api/users/%6de", "users", "me"),
        ("GET", "/api/users/me", "me", "me"),
        ("GET", "/api/users/7", "users", "users"),
        ("GET", "/api/users/%2e%2e", "users", "users"),
        ("GET", "/api/users/a%2Fb", "users", "users"),
        ("GET", "/files/a/b/c", "files", "files"),
        ("HEAD", "/files//", "files", "files"),
        ("POST", "/api/orders", "orders", "orders"),
        ("GET", "/v2/hello", "nested", "nested"),
        ("HEAD", "/v2/hello", "nested", "nested"),
        ("GET", "/health", "health", "none"),
    ];
    for install in INSTALLS {
        let app = app(install, &limiter);
        for &(method, path, handler, rule) in cases {
            let reply = send(&app, method, path).await;
            assert_eq!(reply.status, 200, "{install:?} {method} {path}: {reply:?}");
            assert_eq!(
                reply.handler.as_deref(),
                Some(handler),
                "{install:?} {method} {path}"
            );
            assert_eq!(
                reply.rule.as_deref(),
                Some(rule),
                "{install:?} {method} {path}"
            );
        }
        // Spellings the named routes do not take go to the catch-all, limited by default;
        // a wrong method is answered by the router.
        for path in [
            "/api/hello/",
            "/api//hello",
            "/api/hello;a=1",
            "/api%2Fhello",
            "/api/x/%2e%2e/hello",
            "/files/",
            "/health/",
            "/%68ealth",
            "/health/../api/hello",
            "/health%2F..%2Fapi%2Fhello",
        ] {
            let reply = send(&app, "GET", path).await;
            assert_eq!(
                reply.handler.as_deref(),
                Some("pages"),
                "{install:?} {path}"
            );
            assert_eq!(
                reply.rule.as_deref(),
                Some("default"),
                "{install:?} {path}: {reply:?}"
            );
        }
        let reply = send(&app, "POST", "/api/hello").await;
        assert_eq!((reply.status, reply.handler), (405, None), "{install:?}");
    }
}

const TIGHT: &str = r#"
rate_limiter:
  windows: [{ max_requests: 100, duration: 1m }]
  rules:
    - name: hello
      match: { path: /api/hello, methods: [GET] }
      windows: [{ max_requests: 3, duration: 1m }]
    - name: me
      match: { path: /api/users/me, methods: [GET] }
      windows: [{ max_requests: 2, duration: 1m }]
    - name: files
      match: { path: "/files/{*rest}", methods: [GET] }
      windows: [{ max_requests: 2, duration: 1m }]
"#;

/// Sends `method` to each of `paths` in turn and expects `status` for every one.
async fn expect_each(app: &Router, install: Install, method: &str, paths: &[&str], status: u16) {
    for path in paths {
        let reply = send(app, method, path).await;
        assert_eq!(
            reply.status, status,
            "{install:?} {method} {path}: {reply:?}"
        );
    }
}

/// `curl -I` used to escape the `hello` rule: 3 GET and 5 HEAD on a 3-a-minute rule all
/// passed. HEAD is served by the GET handler and spends the same quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_spends_the_get_rules_quota() {
    for install in INSTALLS {
        let app = app(install, &limiter(TIGHT));
        expect_each(&app, install, "GET", &["/api/hello"; 3], 200).await;
        expect_each(&app, install, "HEAD", &["/api/hello"; 5], 429).await;
    }
}

/// `/api/users/%6De` reaches the `{id}` handler with `id = "me"`: it spends the `me` rule's
/// quota, in any case of hex digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percent_encoded_literal_spends_the_literal_rules_quota() {
    for install in INSTALLS {
        let app = app(install, &limiter(TIGHT));
        let spent = ["/api/users/me", "/api/users/%6De"];
        expect_each(&app, install, "GET", &spent, 200).await;
        let denied = ["/api/users/%6de", "/api/users/m%65", "/api/users/%6D%65"];
        expect_each(&app, install, "GET", &denied, 429).await;
        // Another user is another quota (the default policy's).
        expect_each(&app, install, "GET", &["/api/users/7"], 200).await;
    }
}

/// `{*rest}` is axum's catch-all: a rule written like the route governs the whole tree (it used
/// to be compiled as a single segment, so `/files/a/b` escaped it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_all_rule_governs_the_whole_tree() {
    for install in INSTALLS {
        let app = app(install, &limiter(TIGHT));
        expect_each(&app, install, "GET", &["/files/a", "/files/a/b/c"], 200).await;
        let denied = ["/files/x/y", "/files//", "/files/%2e%2e/x"];
        expect_each(&app, install, "GET", &denied, 429).await;
    }
}
