//! The example API server as a library: the app, its configuration, and its routes, so that
//! tests can bind exactly what the binary serves.
//!
//! Two sets of routes, for two listeners:
//!
//! - [`Server::public`], for clients: the API (`/api/*`, rate-limited by the rules of the
//!   configuration, or without rules by its top-level windows, keyed by client IP), `/health`,
//!   and a bare `/ready` (a status code and `ready` / `not ready`, nothing else) for probes.
//! - [`Server::admin`], for operators, on a listener of its own that is never published to the
//!   public: `/metrics`, `/admin/hot-keys`, the detailed `/ready` (every invariant, the last
//!   reload error), and `/health`.
//!
//! No request starts Redis work beyond its own decision: readiness is answered from the last
//! periodic check ([`Server::spawn_checks`]), never by checking on demand.

pub mod telemetry;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use ratelimit_axum::RateLimited;
use ratelimit_core::{Config, ConfigError, FallbackMode, Invariants, RateLimiter};
use ratelimit_tower::ReloadHandle;
use serde_json::json;

/// The built-in demo configuration: `examples/config.yaml`, in memory.
pub const DEMO_CONFIG: &str = include_str!("../../config.yaml");

/// How often [`Server::spawn_checks`] checks by default: `/ready` is at most this old.
pub const DEFAULT_CHECK_PERIOD: Duration = Duration::from_secs(5);

/// The configuration from `path`, or the demo one; `RATELIMIT_REDIS_URL` switches either to
/// Redis.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(path) => Config::from_yaml_file(path),
        None => Config::from_yaml_str(DEMO_CONFIG),
    }
}

/// What the operator routes share.
#[derive(Clone)]
struct Ops {
    reload: ReloadHandle,
    registry: Arc<Registry>,
    status: ReloadStatus,
    readiness: Readiness,
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

/// One readiness check: the invariants as they were, and what they mean for traffic.
#[derive(Debug, Clone)]
pub struct ReadinessCheck {
    /// Whether the instance should take traffic: the configuration is loaded and Redis
    /// answers, or its absence is covered by a fallback that still answers (`open`, `local`).
    pub ready: bool,
    /// Every invariant, as checked.
    pub invariants: Invariants,
    /// When the check ended.
    pub checked_at: Instant,
    /// How often checks run: a check older than a few periods means the checker is stuck.
    pub period: Duration,
}

impl ReadinessCheck {
    /// Whether the check is recent enough to be believed: within three periods and ten
    /// seconds of slack (a check's own Redis calls may take up to their timeouts).
    pub fn is_fresh(&self) -> bool {
        self.checked_at.elapsed() <= self.period * 3 + Duration::from_secs(10)
    }
}

/// The last readiness check, shared by the checker and the `/ready` routes.
///
/// ```
/// # async fn demo() -> Result<(), ratelimit_core::Error> {
/// use std::time::Duration;
/// use example_api_server::Readiness;
/// use ratelimit_core::{Config, RateLimiter};
///
/// let readiness = Readiness::default();
/// assert!(!readiness.is_ready(), "nothing checked yet");
/// let limiter = RateLimiter::new(Config::new(10, Duration::from_secs(60))).await?;
/// readiness.check(&limiter, Duration::from_secs(5)).await;
/// assert!(readiness.is_ready());
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<RwLock<Option<Arc<ReadinessCheck>>>>);

impl Readiness {
    /// Checks `limiter`'s invariants now (a `PING` and one bounded `SCAN` a Redis node),
    /// records them as the latest check, and returns it. `period` is how often the caller
    /// checks.
    pub async fn check(&self, limiter: &RateLimiter, period: Duration) -> Arc<ReadinessCheck> {
        let invariants = limiter.check_invariants().await;
        let holds = |name: &str| invariants.get(name).is_some_and(|c| c.ok);
        let fallback_answers = limiter.config().fallback().mode() != FallbackMode::Closed;
        let check = Arc::new(ReadinessCheck {
            ready: holds("config_loaded") && (holds("redis_healthy") || fallback_answers),
            invariants,
            checked_at: Instant::now(),
            period,
        });
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(check.clone());
        check
    }

    /// The latest check, if one has run.
    pub fn latest(&self) -> Option<Arc<ReadinessCheck>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the latest check is fresh and says ready.
    pub fn is_ready(&self) -> bool {
        self.latest()
            .is_some_and(|check| check.ready && check.is_fresh())
    }
}

/// The app, and what reloads it.
pub struct Server {
    /// The public routes: the API, `/health` and the bare `/ready`.
    pub public: Router,
    /// The operator routes: `/metrics`, `/admin/hot-keys`, the detailed `/ready`, `/health`.
    /// Serve them on a listener of their own, never the public one.
    pub admin: Router,
    /// Replaces the limiter of every rate-limited route.
    pub reload: ReloadHandle,
    /// The outcome of the last reload.
    pub status: ReloadStatus,
    /// The last readiness check.
    pub readiness: Readiness,
}

impl Server {
    /// Checks readiness (and refreshes `ratelimiter_invariant_ok`) now and every `period`, in
    /// a task of the current runtime: what `/ready` answers from. Until the first check ends,
    /// `/ready` says not ready.
    pub fn spawn_checks(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let reload = self.reload.clone();
        let readiness = self.readiness.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let check = readiness.check(&reload.limiter(), period).await;
                if !check.invariants.all_ok() {
                    tracing::warn!(report = %check.invariants, "invariant check failed");
                }
            }
        })
    }
}

/// The public routes around `limiter` (the API, `/health`, the bare `/ready`); see [`server`]
/// for the operator routes too.
pub fn app(limiter: RateLimiter) -> Router {
    server(limiter).public
}

/// The public and operator routes around `limiter`, with its reload handle.
pub fn server(limiter: RateLimiter) -> Server {
    let mut registry = Registry::default();
    limiter.metrics().register(&mut registry);
    let layer = ratelimit_axum::layer(limiter);
    let reload = layer.reload_handle();
    let status = ReloadStatus::default();
    let readiness = Readiness::default();
    let public = Router::new()
        .route("/api/hello", get(hello))
        .route("/api/users/{id}", get(user))
        .route("/api/orders", post(order))
        .layer(layer)
        .merge(
            Router::new()
                .route("/health", get(health))
                .route("/ready", get(ready_bare))
                .with_state(readiness.clone()),
        );
    let admin = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready_detailed))
        .route("/metrics", get(metrics))
        .route("/admin/hot-keys", get(hot_keys))
        .with_state(Ops {
            reload: reload.clone(),
            registry: Arc::new(registry),
            status: status.clone(),
            readiness: readiness.clone(),
        });
    Server {
        public,
        admin,
        reload,
        status,
        readiness,
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

/// The public readiness probe: the status of the last periodic check, nothing more. It starts
/// no Redis work, whatever the request rate.
async fn ready_bare(State(readiness): State<Readiness>) -> impl IntoResponse {
    let (status, body) = if readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
}

/// The operators' readiness report: the last periodic check with every invariant, its age,
/// and the last reload error. Like the public probe, it reads what the checker found.
async fn ready_detailed(State(ops): State<Ops>) -> impl IntoResponse {
    let limiter = ops.reload.limiter();
    let backend = if limiter.uses_redis() {
        "redis"
    } else {
        "memory"
    };
    let check = ops.readiness.latest();
    let ready = ops.readiness.is_ready();
    let invariants = check.as_ref().map(|check| {
        check
            .invariants
            .iter()
            .map(|c| (c.name.to_owned(), json!({ "ok": c.ok, "detail": c.detail })))
            .collect::<serde_json::Map<String, serde_json::Value>>()
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "ready": ready,
            "backend": backend,
            "checked_seconds_ago": check.as_ref().map(|c| c.checked_at.elapsed().as_secs_f64()),
            "fresh": check.as_ref().is_some_and(|c| c.is_fresh()),
            "invariants": invariants,
            "last_reload_error": ops.status.last_error(),
        })),
    )
}

/// The keys with the largest shares of recent decisions (the hot-key detector's report), each
/// by its digest (the `key_hash` of logs and traces). `?raw=true` adds the keys themselves,
/// which can be other clients' API keys: the operator asks for them explicitly.
async fn hot_keys(State(ops): State<Ops>, RawQuery(query): RawQuery) -> Json<serde_json::Value> {
    let raw = wants_raw(query.as_deref());
    let limiter = ops.reload.limiter();
    let config = limiter.config().hot_keys();
    let keys: Vec<serde_json::Value> = limiter
        .hot_keys()
        .into_iter()
        .map(|hot| {
            let mut entry = json!({
                "policy": hot.policy,
                "digest": hot.digest,
                "share": hot.share,
                "min_share": hot.min_share,
                "denied_share": hot.denied_share,
                "hot": hot.hot,
            });
            if raw {
                entry["key"] = serde_json::Value::String(hot.key);
            }
            entry
        })
        .collect();
    Json(json!({
        "enabled": config.enabled(),
        "min_share": config.min_share(),
        "window_seconds": config.window().as_secs_f64(),
        "raw": raw,
        "keys": keys,
    }))
}

/// Whether a query string asks for raw keys: `raw`, `raw=true` or `raw=1` among its pairs.
fn wants_raw(query: Option<&str>) -> bool {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .any(|pair| matches!(pair, "raw" | "raw=true" | "raw=1"))
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
