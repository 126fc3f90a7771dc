//! The state a layer shares with every service it built: what code set, and what the
//! configuration in force makes of it. A reload replaces it whole, atomically; a request keeps
//! the state it arrived under.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::Request;
use ratelimit_core::{Config, RateLimiter};
use ratelimit_core::{HeaderFamilies, LegacyReset};

use crate::extract::RequestInfo;
use crate::headers::HeaderSettings;
use crate::hooks::Hooks;
use crate::peer::{PeerLookup, peer_from_extension};
use crate::plan::Planner;

/// Builds the planner of a configuration (its rules, or its single policy), now and after every
/// reload.
pub(crate) type PlannerBuilder = Arc<dyn Fn(&Config) -> Arc<dyn Planner> + Send + Sync>;

/// Where a layer's planner comes from.
#[derive(Clone)]
pub(crate) enum PlannerSource {
    /// Made from the configuration in force, again on every reload.
    Config(PlannerBuilder),
    /// Given in code, kept by reloads.
    Fixed(Arc<dyn Planner>),
}

/// What code set on a layer. Every reload keeps it; the configuration fills in the rest.
#[derive(Clone)]
pub(crate) struct CodeSettings {
    pub(crate) planner: PlannerSource,
    pub(crate) families: Option<HeaderFamilies>,
    pub(crate) legacy_reset: Option<LegacyReset>,
    pub(crate) shadow: Option<bool>,
    /// Whether allowed responses carry the [`RateLimitInfo`](crate::RateLimitInfo) too.
    pub(crate) info_in_response: bool,
    pub(crate) peer: PeerLookup,
    pub(crate) hooks: Hooks,
}

impl CodeSettings {
    pub(crate) fn new(planner: PlannerSource) -> Self {
        Self {
            planner,
            families: None,
            legacy_reset: None,
            shadow: None,
            info_in_response: false,
            peer: peer_from_extension,
            hooks: Hooks::default(),
        }
    }
}

impl fmt::Debug for CodeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let planner = match self.planner {
            PlannerSource::Config(_) => "from the configuration",
            PlannerSource::Fixed(_) => "fixed",
        };
        f.debug_struct("CodeSettings")
            .field("planner", &planner)
            .field("families", &self.families)
            .field("legacy_reset", &self.legacy_reset)
            .field("shadow", &self.shadow)
            .field("info_in_response", &self.info_in_response)
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

/// What every clone of the service shares; replaced whole on a reload.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) limiter: RateLimiter,
    pub(crate) planner: Arc<dyn Planner>,
    /// Header families and reset format in force: code's, else the configuration's.
    pub(crate) headers: HeaderSettings,
    /// Shadow mode for everything, whatever the targets say: code's, else the configuration's.
    pub(crate) shadow: bool,
    pub(crate) code: CodeSettings,
}

impl Shared {
    /// The state for `limiter`: what `code` set, the rest from the limiter's configuration.
    pub(crate) fn new(limiter: RateLimiter, code: CodeSettings) -> Self {
        let config = limiter.config();
        let http = config.http();
        let planner = match &code.planner {
            PlannerSource::Config(build) => build(config),
            PlannerSource::Fixed(planner) => planner.clone(),
        };
        Self {
            headers: HeaderSettings {
                families: code.families.unwrap_or(http.headers),
                legacy_reset: code.legacy_reset.unwrap_or(http.legacy_reset),
            },
            shadow: code.shadow.unwrap_or(http.shadow),
            planner,
            code,
            limiter,
        }
    }
}

impl Shared {
    /// What planners and hooks see of `request`, its peer found as code says.
    pub(crate) fn request_info<'a, B>(&self, request: &'a Request<B>) -> RequestInfo<'a> {
        RequestInfo::new(request, (self.code.peer)(request.extensions()))
    }
}

/// The swappable state of a layer and its services.
#[derive(Debug)]
pub(crate) struct LayerState {
    pub(crate) current: arc_swap::ArcSwap<Shared>,
    /// Whether the missing peer address has been reported (it is, once a layer).
    missing_peer_reported: AtomicBool,
}

impl LayerState {
    pub(crate) fn new(shared: Shared) -> Arc<Self> {
        Arc::new(Self {
            current: arc_swap::ArcSwap::from_pointee(shared),
            missing_peer_reported: AtomicBool::new(false),
        })
    }

    pub(crate) fn report_missing_peer(&self) {
        if !self.missing_peer_reported.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "rate limiting needs the client's socket address, and the server gives none: \
                 every request that is limited by IP is answered 500 until it does. \
                 With axum, serve the app with \
                 `into_make_service_with_connect_info::<SocketAddr>()` (and use ratelimit-axum, \
                 or ratelimit-tower's `axum` feature, so that `ConnectInfo` is read); \
                 in tests, add `MockConnectInfo`; with hyper, insert `ratelimit_tower::PeerAddr` \
                 into each request's extensions. (Reported once.)"
            );
        }
    }
}

/// A layer's state, held by the layer, its services and its reload handles.
pub(crate) type SharedCell = Arc<LayerState>;
