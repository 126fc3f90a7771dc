//! A handler that takes `RateLimited` when the limiter cannot reach Redis: with
//! `fallback.mode: open` the request is let through and the handler gets a decision that says
//! so (`fallback_open`), never a 500; where nothing was limited, `Option<RateLimited>` is
//! `None`. Also when the limiter fails in a way no fallback covers: the layer lets the request
//! through and says it did so open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use ratelimit_axum::{RateLimited, RouterExt};
use ratelimit_core::Overrides;
use ratelimit_core::{Config, Policy, RateLimiter, Window};
use ratelimit_tests::RedisServer;
use ratelimit_tower::{Plan, Planner, RateLimitLayer, RequestInfo, Target};

/// The decision as the handler sees it: `rule source allowed`.
async fn strict(limited: RateLimited) -> String {
    format!(
        "{} {} {}",
        limited.rule().unwrap_or("-"),
        limited.decision().source(),
        limited.decision().allowed()
    )
}

async fn optional(limited: Option<RateLimited>) -> String {
    limited.map_or_else(|| "none".to_owned(), |l| l.decision().source().to_string())
}

fn config(redis: &RedisServer) -> Config {
    let yaml = format!(
        r#"
rate_limiter:
  redis:
    addrs: ["{}"]
    timeout: 200ms
  windows: [{{ max_requests: 100, duration: 1m }}]
  fallback:
    mode: open
    circuit_breaker_threshold: 2
    cool_down: 30s
  rules:
    - name: health
      match: {{ path: /health }}
      exempt: true
    - name: api
      match: {{ path: "/api/{{*rest}}" }}
      windows: [{{ max_requests: 50, duration: 1m }}]
"#,
        redis.url()
    );
    Config::from_yaml_str_with(&yaml, None, &Overrides::default()).expect("valid config")
}

/// The body of `GET path`, which must be answered 200.
async fn get_ok(client: &reqwest::Client, addr: SocketAddr, path: &str) -> String {
    let response = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_with_fallback_open_gives_handlers_a_fallback_decision() {
    let redis = RedisServer::start();
    let limiter = RateLimiter::new(config(&redis)).await.expect("limiter");
    let app = Router::new()
        .route("/api/strict", get(strict))
        .route("/api/optional", get(optional))
        .route("/health", get(optional))
        .route("/health/strict", get(strict))
        .rate_limit(&limiter);
    let addr = ratelimit_tests::serve(app).await;
    let client = reqwest::Client::new();

    assert_eq!(get_ok(&client, addr, "/api/strict").await, "api redis true");
    redis.kill();
    // Before the breaker opens (each call fails on the socket) and after (no call at all).
    for i in 0..6 {
        assert_eq!(
            get_ok(&client, addr, "/api/strict").await,
            "api fallback_open true",
            "request {i} after Redis was killed"
        );
        assert_eq!(
            get_ok(&client, addr, "/api/optional").await,
            "fallback_open"
        );
    }
    // Exempt: nothing was limited, so the optional extractor says so.
    assert_eq!(get_ok(&client, addr, "/health").await, "none");
}

/// A planner whose policy the limiter refuses at decision time (a cost above the limit, which a
/// configuration file could never hold): the limiter errs without any fallback.
#[derive(Debug)]
struct Broken(Arc<Target>);

impl Planner for Broken {
    fn plan(&self, _request: &RequestInfo<'_>) -> Plan {
        Plan::Limit {
            target: self.0.clone(),
            key: b"k".to_vec(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_let_through_without_an_answer_says_it_was_let_through_open() {
    let limiter = RateLimiter::new(Config::new(10, Duration::from_secs(60)))
        .await
        .expect("limiter");
    let policy = Policy::new("broken", [Window::new(1, Duration::from_secs(60))]).with_cost(5);
    let target = Arc::new(Target::new(policy, Some(Arc::from("broken")), false));
    let layer = RateLimitLayer::from_limiter(limiter).with_planner(Broken(target));
    let app = Router::new()
        .route("/strict", get(strict))
        .route("/optional", get(optional))
        .layer(layer);
    let addr = ratelimit_tests::serve(app).await;
    let client = reqwest::Client::new();
    assert_eq!(
        get_ok(&client, addr, "/strict").await,
        "broken fallback_open true"
    );
    assert_eq!(get_ok(&client, addr, "/optional").await, "fallback_open");
}
