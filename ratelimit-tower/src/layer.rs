//! [`RateLimitLayer`]: builds [`RateLimit`] services.

use std::sync::Arc;

use ratelimit_core::config::HeaderFamilies;
use ratelimit_core::{Config, Error, RateLimiter};
use tower_layer::Layer;

use crate::extract::from_source;
use crate::plan::{Exemptions, Planner, SinglePolicy, Target};
use crate::rules::RuleSet;
use crate::service::{
    PeerLookup, PlannerBuilder, RateLimit, Shared, SharedCell, peer_from_extension,
};

/// Rate-limits every request of the wrapped service.
///
/// Built from a [`Config`] synchronously (Redis connections open on first use), or from an
/// existing [`RateLimiter`]. Cheap to clone.
///
/// ```
/// # async fn demo() {
/// use std::time::Duration;
/// use ratelimit_core::Config;
/// use ratelimit_tower::RateLimitLayer;
///
/// let layer = RateLimitLayer::new(Config::new(100, Duration::from_secs(60)));
/// # drop(layer);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    shared: SharedCell,
}

/// Replaces the limiter (and so the policies, rules and HTTP settings) of a layer and of every
/// service it built, atomically: requests that arrive afterwards see the new one, requests in
/// flight finish with the old.
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
    shared: SharedCell,
}

impl ReloadHandle {
    /// Puts `limiter` in force. The planner is rebuilt from its configuration (unless the layer
    /// was given a fixed planner), and so are the header families and shadow flag.
    pub fn apply(&self, limiter: RateLimiter) {
        let current = self.shared.load_full();
        let http = limiter.config().http();
        let planner = match current.planner_builder {
            Some(build) => build(limiter.config()),
            None => current.planner.clone(),
        };
        self.shared.store(Arc::new(Shared {
            planner,
            planner_builder: current.planner_builder,
            families: http.headers,
            shadow: http.shadow,
            peer: current.peer,
            limiter,
        }));
    }

    /// The limiter in force.
    pub fn limiter(&self) -> RateLimiter {
        self.shared.load().limiter.clone()
    }
}

impl RateLimitLayer {
    /// A layer for `config`: its routing rules (see [`RuleSet`]), top-level policy, key source,
    /// trusted proxies, allow-list, header families and shadow flag.
    ///
    /// # Panics
    ///
    /// When `config` is invalid; [`try_new`](Self::try_new) returns the error instead. A
    /// configuration read with `Config::from_yaml_*` is already valid.
    pub fn new(config: Config) -> Self {
        match Self::try_new(config) {
            Ok(layer) => layer,
            Err(e) => panic!("invalid rate limiter configuration: {e}"),
        }
    }

    /// A layer for `config`, or why `config` is refused.
    pub fn try_new(config: Config) -> Result<Self, Error> {
        Ok(Self::from_limiter(RateLimiter::new_lazy(config)?))
    }

    /// A layer around an existing limiter, planned from its configuration.
    pub fn from_limiter(limiter: RateLimiter) -> Self {
        let planner = default_planner(limiter.config());
        let http = limiter.config().http();
        let shared = Shared {
            families: http.headers,
            shadow: http.shadow,
            planner,
            planner_builder: Some(default_planner),
            limiter,
            peer: peer_from_extension,
        };
        Self {
            shared: Arc::new(arc_swap::ArcSwap::from_pointee(shared)),
        }
    }

    /// Plans requests with `planner` (a custom key, a custom policy choice) instead of the
    /// configuration's single policy. A reload keeps this planner.
    pub fn with_planner(self, planner: impl Planner) -> Self {
        self.map_shared(|s| {
            s.planner = Arc::new(planner);
            s.planner_builder = None;
        })
    }

    /// Plans requests with the planner `build` makes from the configuration (such as
    /// ratelimit-axum's rules), now and after every reload.
    pub fn with_planner_builder(self, build: PlannerBuilder) -> Self {
        self.map_shared(|s| {
            s.planner = build(s.limiter.config());
            s.planner_builder = Some(build);
        })
    }

    /// A handle that replaces this layer's limiter (and its services') later. Take it after
    /// the `with_*` calls: each of them makes a new layer.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            shared: self.shared.clone(),
        }
    }

    /// Which header families responses carry.
    pub fn with_headers(self, families: HeaderFamilies) -> Self {
        self.map_shared(|s| s.families = families)
    }

    /// How to find the socket peer in a request's extensions (default: [`PeerAddr`](crate::PeerAddr)).
    pub fn with_peer_lookup(self, lookup: PeerLookup) -> Self {
        self.map_shared(|s| s.peer = lookup)
    }

    /// Shadow mode: decide and count, never deny.
    pub fn with_shadow(self, shadow: bool) -> Self {
        self.map_shared(|s| s.shadow = shadow)
    }

    /// The limiter in force.
    pub fn limiter(&self) -> RateLimiter {
        self.shared.load().limiter.clone()
    }

    fn map_shared(self, change: impl FnOnce(&mut Shared)) -> Self {
        let current = self.shared.load_full();
        let mut shared = Shared {
            limiter: current.limiter.clone(),
            planner: current.planner.clone(),
            planner_builder: current.planner_builder,
            families: current.families,
            peer: current.peer,
            shadow: current.shadow,
        };
        change(&mut shared);
        Self {
            shared: Arc::new(arc_swap::ArcSwap::from_pointee(shared)),
        }
    }
}

/// The planner a configuration describes: its routing rules ([`RuleSet`]) when it has any,
/// else its single policy.
pub fn default_planner(config: &Config) -> Arc<dyn Planner> {
    let http = config.http();
    if !http.rules.is_empty() {
        return Arc::new(RuleSet::from_config(config));
    }
    let target = Arc::new(Target::new(config.policy().clone(), None, false));
    let key = from_source(&http.default_key(), &http.trusted_proxies);
    Arc::new(
        SinglePolicy::new(target, key)
            .on_missing_key(http.on_missing_key)
            .with_exemptions(Exemptions::new(
                http.allow_list.clone(),
                http.trusted_proxies.iter().copied(),
            )),
    )
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.shared.clone())
    }
}
