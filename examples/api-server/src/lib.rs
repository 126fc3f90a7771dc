//! The example API server as a library: the app, its configuration, and its routes, so that
//! tests can bind exactly what the binary serves.
//!
//! Routes under `/api` are rate-limited by the rules of the configuration (or, without rules,
//! by its top-level windows, keyed by client IP); `/health`, `/ready` and `/metrics` never are.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use ratelimit_axum::{RateLimited, RouterExt};
use ratelimit_core::{Config, ConfigError, FallbackMode, RateLimiter};
use serde_json::json;

/// The built-in demo configuration: `examples/config.yaml`, in memory.
pub const DEMO_CONFIG: &str = include_str!("../../config.yaml");

/// The configuration from `path`, or the demo one; `RATELIMIT_REDIS_URL` switches either to
/// Redis.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => Config::from_yaml_file(path),
        None => Config::from_yaml_str(DEMO_CONFIG),
    }
}

/// What the operational routes share.
#[derive(Clone)]
struct Ops {
    limiter: RateLimiter,
    registry: Arc<Registry>,
}

/// The whole app around `limiter`; its metrics are served on `/metrics`.
pub fn app(limiter: RateLimiter) -> Router {
    let mut registry = Registry::default();
    limiter.metrics().register(&mut registry);
    app_with_registry(limiter, Arc::new(registry))
}

/// The whole app, serving `registry` (which should hold the limiter's metrics) on `/metrics`.
pub fn app_with_registry(limiter: RateLimiter, registry: Arc<Registry>) -> Router {
    let api = Router::new()
        .route("/api/hello", get(hello))
        .route("/api/users/{id}", get(user))
        .route("/api/orders", post(order))
        .rate_limit(&limiter);
    let ops = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Ops { limiter, registry });
    api.merge(ops)
}

/// What a handler can tell the client about its quota.
fn quota(limited: Option<&RateLimited>) -> serde_json::Value {
    match limited {
        Some(limited) => json!({
            "rule": limited.rule(),
            "remaining": limited.decision().remaining(),
        }),
        None => serde_json::Value::Null,
    }
}

async fn hello(limited: Option<RateLimited>) -> Json<serde_json::Value> {
    Json(json!({ "message": "hello", "quota": quota(limited.as_ref()) }))
}

async fn user(UrlPath(id): UrlPath<u64>, limited: Option<RateLimited>) -> Json<serde_json::Value> {
    Json(json!({ "id": id, "name": format!("user {id}"), "quota": quota(limited.as_ref()) }))
}

async fn order(limited: Option<RateLimited>) -> impl IntoResponse {
    (
        StatusCode::CREATED,
        Json(json!({ "order": "accepted", "quota": quota(limited.as_ref()) })),
    )
}

async fn health() -> &'static str {
    "ok"
}

/// Ready when the configuration is loaded and Redis answers, or its absence is covered by a
/// fallback that still answers requests (`open` or `local`). The body lists every invariant.
async fn ready(State(Ops { limiter, .. }): State<Ops>) -> impl IntoResponse {
    let report = limiter.check_invariants().await;
    let holds = |name: &str| report.get(name).is_some_and(|c| c.ok);
    let fallback_answers = limiter.config().fallback().mode() != FallbackMode::Closed;
    let ready = holds("config_loaded") && (holds("redis_healthy") || fallback_answers);
    let invariants: serde_json::Map<String, serde_json::Value> = report
        .iter()
        .map(|c| (c.name.to_owned(), json!({ "ok": c.ok, "detail": c.detail })))
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let backend = if limiter.uses_redis() {
        "redis"
    } else {
        "memory"
    };
    (
        status,
        Json(json!({ "ready": ready, "backend": backend, "invariants": invariants })),
    )
}

/// Checks the invariants every `period`, so that `ratelimiter_invariant_ok` stays current
/// between scrapes of `/ready`.
pub fn spawn_invariant_checks(limiter: RateLimiter, period: std::time::Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        loop {
            ticks.tick().await;
            let report = limiter.check_invariants().await;
            if !report.all_ok() {
                tracing::warn!(report = %report, "invariant check failed");
            }
        }
    });
}

/// The registry in the OpenMetrics text format, which Prometheus scrapes.
async fn metrics(State(Ops { registry, .. }): State<Ops>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "metrics could not be encoded\n".to_owned(),
        ),
    }
}
