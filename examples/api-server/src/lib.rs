//! The example API server as a library: the app, its configuration, and its routes, so that
//! tests can bind exactly what the binary serves.
//!
//! Routes under `/api` are rate-limited by the rules of the configuration (or, without rules,
//! by its top-level windows, keyed by client IP); `/health`, `/ready` and `/metrics` never are.

pub mod telemetry;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use ratelimit_axum::RateLimited;
use ratelimit_core::{Config, ConfigError, FallbackMode, RateLimiter};
use ratelimit_tower::ReloadHandle;
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
    reload: ReloadHandle,
    registry: Arc<Registry>,
    status: ReloadStatus,
}

/// The outcome of the last configuration reload, for `/ready`.
#[derive(Clone, Default)]
pub struct ReloadStatus(Arc<Mutex<Option<String>>>);

impl ReloadStatus {
    /// The error of the last reload, if it failed (the previous configuration kept running).
    pub fn last_error(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, error: Option<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }
}

/// The app, and what reloads it.
pub struct Server {
    /// The routes.
    pub router: Router,
    /// Replaces the limiter of every rate-limited route.
    pub reload: ReloadHandle,
    /// The outcome of the last reload.
    pub status: ReloadStatus,
}

/// The whole app around `limiter`; its metrics are served on `/metrics`.
pub fn app(limiter: RateLimiter) -> Router {
    server(limiter).router
}

/// The app around `limiter`, with its reload handle.
pub fn server(limiter: RateLimiter) -> Server {
    let mut registry = Registry::default();
    limiter.metrics().register(&mut registry);
    let layer = ratelimit_axum::layer(limiter);
    let reload = layer.reload_handle();
    let status = ReloadStatus::default();
    let api = Router::new()
        .route("/api/hello", get(hello))
        .route("/api/users/{id}", get(user))
        .route("/api/orders", post(order))
        .layer(layer);
    let ops = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/admin/hot-keys", get(hot_keys))
        .with_state(Ops {
            reload: reload.clone(),
            registry: Arc::new(registry),
            status: status.clone(),
        });
    Server {
        router: api.merge(ops),
        reload,
        status,
    }
}

/// Reloads the configuration file into a running server.
#[derive(Clone)]
pub struct Reloader {
    path: PathBuf,
    reload: ReloadHandle,
    status: ReloadStatus,
}

impl Reloader {
    /// Reloads `path` into `server`.
    pub fn new(path: impl Into<PathBuf>, server: &Server) -> Self {
        Self {
            path: path.into(),
            reload: server.reload.clone(),
            status: server.status.clone(),
        }
    }

    /// Reads the file again and puts it in force for new requests. A broken file is refused
    /// with its path, line and field; the running configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let current = self.reload.limiter();
        let outcome = load_config(Some(&self.path))
            .map_err(|e| e.to_string())
            .and_then(|config| current.reconfigure(config).map_err(|e| e.to_string()));
        let metrics = current.metrics();
        match outcome {
            Ok(limiter) => {
                self.reload.apply(limiter);
                metrics.config_reload(true);
                self.status.set(None);
                tracing::info!(path = %self.path.display(), "configuration reloaded");
                Ok(())
            }
            Err(error) => {
                metrics.config_reload(false);
                self.status.set(Some(error.clone()));
                tracing::error!(%error, "configuration refused; the running one stays");
                Err(error)
            }
        }
    }

    /// Reloads whenever the file changes. Watches its directory, not the file: editors and
    /// ConfigMap updates replace files rather than write them in place. Changes are coalesced
    /// for `settle` before reading. Keep the returned watcher alive.
    pub fn watch(&self, settle: Duration) -> notify::Result<notify::RecommendedWatcher> {
        use notify::Watcher;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let name = self.path.file_name().map(ToOwned::to_owned);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event
                    && event
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(ToOwned::to_owned) == name)
                {
                    let _ = tx.send(());
                }
            })?;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
        let reloader = self.clone();
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                tokio::time::sleep(settle).await;
                while rx.try_recv().is_ok() {}
                let _ = reloader.reload();
            }
        });
        Ok(watcher)
    }
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
async fn ready(State(ops): State<Ops>) -> impl IntoResponse {
    let limiter = ops.reload.limiter();
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
        Json(json!({
            "ready": ready,
            "backend": backend,
            "invariants": invariants,
            "last_reload_error": ops.status.last_error(),
        })),
    )
}

/// The keys with the largest shares of recent decisions (the hot-key detector's report). It
/// names keys, which `/metrics` never does: like `/metrics`, serve it to operators only.
async fn hot_keys(State(ops): State<Ops>) -> Json<serde_json::Value> {
    let limiter = ops.reload.limiter();
    let config = limiter.config().hot_keys();
    Json(json!({
        "enabled": config.enabled(),
        "min_share": config.min_share(),
        "window_seconds": config.window().as_secs_f64(),
        "keys": limiter.hot_keys(),
    }))
}

/// Checks the invariants every `period`, so that `ratelimiter_invariant_ok` stays current
/// between scrapes of `/ready`.
pub fn spawn_invariant_checks(reload: ReloadHandle, period: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        loop {
            ticks.tick().await;
            let report = reload.limiter().check_invariants().await;
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
