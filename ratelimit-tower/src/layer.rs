//! [`RateLimitLayer`]: builds [`RateLimit`] services; [`RateLimitLayerBuilder`] assembles one
//! in code.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use ratelimit_core::{Algorithm, Config, Policy, RateLimiter, Window};
use ratelimit_core::{HeaderFamilies, LegacyReset, MissingKey};
use tower_layer::Layer;

use crate::error::Error;
use crate::extract::{ClientIp, KeyExtractor, from_source};
use crate::hooks::Denial;
use crate::peer::PeerLookup;
use crate::plan::{Exemptions, Planner, SinglePolicy, Target};
use crate::rules::RuleSet;
use crate::service::RateLimit;
use crate::state::{CodeSettings, LayerState, PlannerBuilder, PlannerSource, Shared, SharedCell};

/// Rate-limits every request of the wrapped service.
///
/// Built from a [`Config`] synchronously (Redis connections open on first use), from an
/// existing [`RateLimiter`], or in code with [`builder`](Self::builder). Cheap to clone.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::Config;
/// use ratelimit_tower::RateLimitLayer;
///
/// let layer = RateLimitLayer::new(Config::new(100, Duration::from_secs(60)));
/// # drop(layer);
/// ```
///
/// What the `with_*`, `on_denied` and `denied_response` methods set in code stays in force
/// across reloads ([`ReloadHandle::apply`]); the configuration decides the rest.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    state: SharedCell,
}

/// Replaces the limiter (and so the policies, rules and HTTP settings) of a layer and of every
/// service it built, atomically: requests that arrive afterwards see the new one, requests in
/// flight finish with the old. What the layer was given in code (header families, shadow mode,
/// a key, hooks) is kept.
///
/// ```
/// # async fn demo() -> Result<(), ratelimit_core::Error> {
/// use std::time::Duration;
/// use ratelimit_core::{Config, RateLimiter};
/// use ratelimit_tower::RateLimitLayer;
///
/// let limiter = RateLimiter::new(Config::new(10, Duration::from_secs(60))).await?;
/// let layer = RateLimitLayer::from_limiter(limiter.clone());
/// let reload = layer.reload_handle();
/// reload.apply(limiter.reconfigure(Config::new(20, Duration::from_secs(60)))?);
/// assert_eq!(layer.limiter().policy().windows()[0].max_requests(), 20);
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    state: SharedCell,
}

impl ReloadHandle {
    /// Puts `limiter` in force. The planner is rebuilt from its configuration (unless the layer
    /// was given a fixed planner), and so are the header settings and the shadow flag, except
    /// where code set them.
    pub fn apply(&self, limiter: RateLimiter) {
        let code = self.state.current.load().code.clone();
        self.state
            .current
            .store(Arc::new(Shared::new(limiter, code)));
    }

    /// The limiter in force.
    pub fn limiter(&self) -> RateLimiter {
        self.state.current.load().limiter.clone()
    }
}

impl RateLimitLayer {
    /// A layer for `config`: its routing rules (see [`RuleSet`]), top-level policy, key source,
    /// trusted proxies and their header, allow-list, header settings and shadow flag.
    ///
    /// # Panics
    ///
    /// When `config` is invalid; [`try_new`](Self::try_new) returns the error instead. A
    /// configuration read with `Config::from_yaml_*`, or built with `Config::new` from a
    /// non-zero limit and window, is valid.
    pub fn new(config: Config) -> Self {
        match Self::try_new(config) {
            Ok(layer) => layer,
            Err(e) => panic!("invalid rate limiter configuration: {e}"),
        }
    }

    /// A layer for `config`, or why `config` is refused.
    pub fn try_new(config: Config) -> Result<Self, ratelimit_core::Error> {
        Ok(Self::from_limiter(RateLimiter::new_lazy(config)?))
    }

    /// A layer assembled in code: windows, key, hooks, a shared limiter.
    ///
    /// ```
    /// use ratelimit_core::IpBlock;
    /// use ratelimit_tower::{ClientIp, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .per_minute(100)
    ///     .key(ClientIp::new(["10.0.0.0/8".parse::<IpBlock>()?]))
    ///     .build()?;
    /// # drop(layer);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder() -> RateLimitLayerBuilder {
        RateLimitLayerBuilder::default()
    }

    /// A layer around an existing limiter, planned from its configuration.
    pub fn from_limiter(limiter: RateLimiter) -> Self {
        let builder: PlannerBuilder = Arc::new(default_planner);
        Self::with_code(limiter, CodeSettings::new(PlannerSource::Config(builder)))
    }

    fn with_code(limiter: RateLimiter, code: CodeSettings) -> Self {
        Self {
            state: LayerState::new(Shared::new(limiter, code)),
        }
    }

    /// Plans requests with `planner` (a custom key, a custom policy choice) instead of the
    /// configuration's single policy. A reload keeps this planner.
    pub fn with_planner(self, planner: impl Planner) -> Self {
        self.map_code(|code| code.planner = PlannerSource::Fixed(Arc::new(planner)))
    }

    /// Plans requests with the planner `build` makes from the configuration (such as
    /// ratelimit-axum's `axum_rules`), now and after every reload.
    pub fn with_planner_builder(
        self,
        build: impl Fn(&Config) -> Arc<dyn Planner> + Send + Sync + 'static,
    ) -> Self {
        self.map_code(|code| code.planner = PlannerSource::Config(Arc::new(build)))
    }

    /// A handle that replaces this layer's limiter (and its services') later. Take it after
    /// the `with_*` calls: each of them makes a new layer.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            state: self.state.clone(),
        }
    }

    /// Which header families responses carry, whatever the configuration says.
    pub fn with_headers(self, families: HeaderFamilies) -> Self {
        self.map_code(|code| code.families = Some(families))
    }

    /// What `X-RateLimit-Reset` holds, whatever the configuration says.
    pub fn with_legacy_reset(self, reset: LegacyReset) -> Self {
        self.map_code(|code| code.legacy_reset = Some(reset))
    }

    /// How to find the socket peer in a request's extensions (default:
    /// [`peer_from_extension`](crate::peer::peer_from_extension): a
    /// [`PeerAddr`](crate::PeerAddr), and with the `axum` feature axum's `ConnectInfo` and
    /// `MockConnectInfo`).
    pub fn with_peer_lookup(self, lookup: PeerLookup) -> Self {
        self.map_code(|code| code.peer = lookup)
    }

    /// Shadow mode (decide and count, never deny) on or off, whatever the configuration says.
    pub fn with_shadow(self, shadow: bool) -> Self {
        self.map_code(|code| code.shadow = Some(shadow))
    }

    /// Leaves the decision ([`RateLimitInfo`](crate::RateLimitInfo)) in the extensions of
    /// every response this layer lets through and stamps with headers, for outer layers
    /// (access logs, metrics) to read. Off by default: handlers find it in the request's
    /// extensions either way, and a response's extensions cost three allocations to fill.
    ///
    /// ```
    /// # async fn demo() {
    /// use std::time::Duration;
    /// use ratelimit_core::Config;
    /// use ratelimit_tower::{PeerAddr, RateLimitInfo, RateLimitLayer};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// let service = ServiceBuilder::new()
    ///     // An outer layer: reads the decision off the response.
    ///     .map_response(|response: http::Response<_>| {
    ///         let info = response.extensions().get::<RateLimitInfo>();
    ///         assert_eq!(info.map(|info| info.decision.remaining()), Some(99));
    ///         response
    ///     })
    ///     .layer(RateLimitLayer::new(Config::new(100, Duration::from_secs(60))).with_info_in_response(true))
    ///     .service_fn(|_req: http::Request<String>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
    ///     });
    /// let mut request = http::Request::new(String::new());
    /// request.extensions_mut().insert(PeerAddr("192.0.2.1:4000".parse().unwrap()));
    /// let response = service.oneshot(request).await.unwrap();
    /// assert_eq!(response.status(), 200);
    /// # }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(demo());
    /// ```
    pub fn with_info_in_response(self, on: bool) -> Self {
        self.map_code(|code| code.info_in_response = on)
    }

    /// Calls `hook` for every request over its limit, shadow-mode ones included (see
    /// [`Denial::shadow`]): for logs and metrics. It runs on the request's task: keep it short.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::time::Duration;
    /// use ratelimit_core::Config;
    /// use ratelimit_tower::RateLimitLayer;
    ///
    /// let denials = Arc::new(AtomicU64::new(0));
    /// let counter = denials.clone();
    /// let layer = RateLimitLayer::new(Config::new(100, Duration::from_secs(60)))
    ///     .on_denied(move |denial| {
    ///         counter.fetch_add(1, Ordering::Relaxed);
    ///         tracing::info!(policy = denial.policy_id(), path = denial.request().uri.path(), "denied");
    ///     });
    /// # drop(layer);
    /// ```
    pub fn on_denied(self, hook: impl Fn(&Denial<'_>) + Send + Sync + 'static) -> Self {
        let hook: crate::hooks::OnDenied = Arc::new(hook);
        self.map_code(|code| code.hooks.on_denied = Some(hook))
    }

    /// Shapes every `429` this layer sends: `hook` gets the denial and the layer's response
    /// (status, headers, problem document) and returns the one to send, with another body,
    /// more headers, or another status.
    ///
    /// ```
    /// use std::time::Duration;
    /// use bytes::Bytes;
    /// use http::header::CONTENT_TYPE;
    /// use ratelimit_core::Config;
    /// use ratelimit_tower::RateLimitLayer;
    ///
    /// let layer = RateLimitLayer::new(Config::new(100, Duration::from_secs(60)))
    ///     .denied_response(|denial, mut response| {
    ///         let text = format!("slow down: retry in {} s\n", denial.retry_after_secs());
    ///         response.headers_mut().insert(CONTENT_TYPE, "text/plain".parse().unwrap());
    ///         *response.body_mut() = Bytes::from(text);
    ///         response
    ///     });
    /// # drop(layer);
    /// ```
    pub fn denied_response(
        self,
        hook: impl Fn(&Denial<'_>, Response<Bytes>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        let hook: crate::hooks::DeniedResponse = Arc::new(hook);
        self.map_code(|code| code.hooks.denied_response = Some(hook))
    }

    /// The limiter in force.
    pub fn limiter(&self) -> RateLimiter {
        self.state.current.load().limiter.clone()
    }

    fn map_code(self, change: impl FnOnce(&mut CodeSettings)) -> Self {
        let current = self.state.current.load_full();
        let mut code = current.code.clone();
        change(&mut code);
        Self::with_code(current.limiter.clone(), code)
    }
}

/// The planner a configuration describes: its routing rules ([`RuleSet`]) when it has any,
/// else its policy for every request, keyed by its key source, with its allow-list.
pub fn default_planner(config: &Config) -> Arc<dyn Planner> {
    let http = config.http();
    if !http.rules.is_empty() {
        return Arc::new(RuleSet::from_config(config));
    }
    let client_ip = ClientIp::from_config(http);
    let key = from_source(&http.default_key(), &client_ip);
    single_policy(config, config.policy().clone(), key, http.on_missing_key)
}

fn single_policy(
    config: &Config,
    policy: Policy,
    key: Arc<dyn KeyExtractor>,
    on_missing_key: MissingKey,
) -> Arc<dyn Planner> {
    let http = config.http();
    let target = Arc::new(Target::new(policy, None, false));
    Arc::new(
        SinglePolicy::new(target, key)
            .on_missing_key(on_missing_key)
            .with_exemptions(Exemptions::new(
                http.allow_list.clone(),
                ClientIp::from_config(http),
            )),
    )
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.state.clone())
    }
}

/// Where a built layer's limiter comes from.
#[derive(Debug, Default)]
enum Source {
    /// An in-memory limiter of the builder's own.
    #[default]
    Own,
    /// A limiter built from a configuration.
    Config(Box<Config>),
    /// A limiter shared with other layers.
    Limiter(RateLimiter),
}

/// Assembles a [`RateLimitLayer`] in code. Every setting is optional but the windows, which a
/// layer needs unless its configuration or limiter has them.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::RateLimiter;
/// use ratelimit_core::IpBlock;
/// use ratelimit_tower::{ClientIp, RateLimitLayer};
///
/// // A limiter for the whole app, and a stricter layer for one route that shares it.
/// let limiter = RateLimiter::new_lazy(ratelimit_core::Config::new(1000, Duration::from_secs(3600)))?;
/// let global = RateLimitLayer::from_limiter(limiter.clone());
/// let login = RateLimitLayer::builder()
///     .limiter(limiter)
///     .policy_name("login")
///     .per_minute(5)
///     .key(ClientIp::new(["10.0.0.0/8".parse::<IpBlock>()?]))
///     .build()?;
/// # drop((global, login));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RateLimitLayerBuilder {
    source: Source,
    windows: Vec<Window>,
    name: Option<String>,
    algorithm: Option<Algorithm>,
    cost: Option<u64>,
    key: Option<Arc<dyn KeyExtractor>>,
    on_missing_key: Option<MissingKey>,
    /// What the layer keeps across reloads; its planner is decided by `build`.
    code: CodeSettings,
}

impl Default for RateLimitLayerBuilder {
    fn default() -> Self {
        Self {
            source: Source::default(),
            windows: Vec::new(),
            name: None,
            algorithm: None,
            cost: None,
            key: None,
            on_missing_key: None,
            code: CodeSettings::new(PlannerSource::Config(Arc::new(default_planner))),
        }
    }
}

impl fmt::Debug for RateLimitLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayerBuilder")
            .field("source", &self.source)
            .field("windows", &self.windows)
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("cost", &self.cost)
            .field("key", &self.key)
            .field("on_missing_key", &self.on_missing_key)
            .field("code", &self.code)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayerBuilder {
    /// Adds a window of `max_requests` per second.
    pub fn per_second(self, max_requests: u64) -> Self {
        self.window(Window::per_second(max_requests))
    }

    /// Adds a window of `max_requests` per minute.
    pub fn per_minute(self, max_requests: u64) -> Self {
        self.window(Window::per_minute(max_requests))
    }

    /// Adds a window of `max_requests` per hour.
    pub fn per_hour(self, max_requests: u64) -> Self {
        self.window(Window::per_hour(max_requests))
    }

    /// Adds `window`; several windows make a multi-window policy (all must allow).
    pub fn window(mut self, window: Window) -> Self {
        self.windows.push(window);
        self
    }

    /// The policy's name: it names the policy in headers, metrics and Redis keys, and keeps
    /// this layer's counts apart from another layer's on the same limiter. Default: the
    /// configuration's (`default`).
    pub fn policy_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The algorithm (default: the configuration's, a sliding window).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = Some(algorithm);
        self
    }

    /// Permits each request takes (default 1).
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = Some(cost);
        self
    }

    /// Limits requests by `key` (default: the configuration's key source, the client IP).
    pub fn key(mut self, key: impl KeyExtractor) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// What to do with a request `key` finds nothing for.
    pub fn on_missing_key(mut self, action: MissingKey) -> Self {
        self.on_missing_key = Some(action);
        self
    }

    /// Starts from `config`: its backend (Redis, cache, fallback), and whatever the builder
    /// does not set (windows, key source, proxies, allow-list, headers). Its routing rules
    /// plan requests unless the builder sets a policy (windows, name, algorithm, cost), a key
    /// or `on_missing_key`: then that one policy governs every request.
    pub fn config(mut self, config: Config) -> Self {
        self.source = Source::Config(Box::new(config));
        self
    }

    /// Shares `limiter` (its backend and state) with other layers, such as a global layer
    /// around routes that have their own. Give this layer its own windows and
    /// [`policy_name`](Self::policy_name), or it counts into the other layer's keys.
    pub fn limiter(mut self, limiter: RateLimiter) -> Self {
        self.source = Source::Limiter(limiter);
        self
    }

    /// Which header families responses carry.
    pub fn headers(mut self, families: HeaderFamilies) -> Self {
        self.code.families = Some(families);
        self
    }

    /// What `X-RateLimit-Reset` holds.
    pub fn legacy_reset(mut self, reset: LegacyReset) -> Self {
        self.code.legacy_reset = Some(reset);
        self
    }

    /// Shadow mode: decide and count, never deny.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.code.shadow = Some(shadow);
        self
    }

    /// The decision in allowed responses' extensions too (see
    /// [`RateLimitLayer::with_info_in_response`]).
    pub fn info_in_response(mut self, on: bool) -> Self {
        self.code.info_in_response = on;
        self
    }

    /// How to find the socket peer (see [`RateLimitLayer::with_peer_lookup`]).
    pub fn peer_lookup(mut self, lookup: PeerLookup) -> Self {
        self.code.peer = lookup;
        self
    }

    /// See [`RateLimitLayer::on_denied`].
    pub fn on_denied(mut self, hook: impl Fn(&Denial<'_>) + Send + Sync + 'static) -> Self {
        self.code.hooks.on_denied = Some(Arc::new(hook));
        self
    }

    /// See [`RateLimitLayer::denied_response`].
    pub fn denied_response(
        mut self,
        hook: impl Fn(&Denial<'_>, Response<Bytes>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.code.hooks.denied_response = Some(Arc::new(hook));
        self
    }

    /// The layer, or why its settings are refused (no window, a zero limit, a cost above the
    /// limit, an unnamed policy on a shared limiter).
    pub fn build(self) -> Result<RateLimitLayer, Error> {
        let shared_limiter = matches!(self.source, Source::Limiter(_));
        let limiter = match self.source {
            Source::Limiter(limiter) => limiter,
            Source::Config(config) => RateLimiter::new_lazy(*config)?,
            Source::Own => {
                let policy = Policy::new(Policy::DEFAULT_NAME, self.windows.iter().copied());
                policy.validate()?;
                RateLimiter::new_lazy(Config::with_policy(policy))?
            }
        };
        let base = limiter.config().policy().clone();
        if shared_limiter
            && !self.windows.is_empty()
            && self.name.as_deref().unwrap_or(base.name()) == base.name()
        {
            return Err(Error::UnnamedPolicy);
        }
        let custom_policy = !self.windows.is_empty()
            || self.name.is_some()
            || self.algorithm.is_some()
            || self.cost.is_some();
        let policy = custom_policy.then(|| {
            let windows = if self.windows.is_empty() {
                base.windows().to_vec()
            } else {
                self.windows.clone()
            };
            Policy::new(
                self.name.clone().unwrap_or_else(|| base.name().to_owned()),
                windows,
            )
            .with_algorithm(self.algorithm.unwrap_or(base.algorithm()))
            .with_cost(self.cost.unwrap_or(base.cost()))
        });
        if let Some(policy) = &policy {
            policy.validate()?;
        }
        let mut code = self.code;
        // Without a policy, key or missing-key action of its own, the configuration plans
        // (the default); otherwise its one policy governs every request.
        if policy.is_some() || self.key.is_some() || self.on_missing_key.is_some() {
            let (key, on_missing_key) = (self.key, self.on_missing_key);
            code.planner = PlannerSource::Config(Arc::new(move |config: &Config| {
                let http = config.http();
                let key = key.clone().unwrap_or_else(|| {
                    from_source(&http.default_key(), &ClientIp::from_config(http))
                });
                let policy = policy.clone().unwrap_or_else(|| config.policy().clone());
                single_policy(
                    config,
                    policy,
                    key,
                    on_missing_key.unwrap_or(http.on_missing_key),
                )
            }));
        }
        Ok(RateLimitLayer::with_code(limiter, code))
    }
}
