//! [`RateLimitLayer`]: builds [`RateLimit`] services.

use std::sync::Arc;

use ratelimit_core::config::HeaderFamilies;
use ratelimit_core::{Config, Error, RateLimiter};
use tower_layer::Layer;

use crate::extract::from_source;
use crate::plan::{Exemptions, Planner, SinglePolicy, Target};
use crate::service::{PeerLookup, RateLimit, Shared, peer_from_extension};

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
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// A layer for `config`: its top-level policy, key source, trusted proxies, allow-list,
    /// header families and shadow flag. (Routing rules are applied by `ratelimit-axum`.)
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
            limiter,
            peer: peer_from_extension,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Plans requests with `planner` (rules, a custom key) instead of the configuration's
    /// single policy.
    pub fn with_planner(self, planner: impl Planner) -> Self {
        self.map_shared(|s| s.planner = Arc::new(planner))
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

    /// The limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.shared.limiter
    }

    fn map_shared(self, change: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = Shared {
            limiter: self.shared.limiter.clone(),
            planner: self.shared.planner.clone(),
            families: self.shared.families,
            peer: self.shared.peer,
            shadow: self.shared.shadow,
        };
        change(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }
}

/// The planner a configuration describes without rules.
pub fn default_planner(config: &Config) -> Arc<dyn Planner> {
    let http = config.http();
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
