//! [`RateLimit`]: the `Service` that plans, checks and answers.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{Extensions, Request, Response};
use ratelimit_core::config::{HeaderFamilies, LegacyReset, MissingKey};
use ratelimit_core::{Config, RateLimiter};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::extract::{PeerAddr, RequestInfo};
use crate::future::ResponseFuture;
use crate::headers::HeaderSettings;
use crate::hooks::Hooks;
use crate::plan::{Plan, Planner};
use crate::response;

/// Finds the socket peer in a request's extensions.
pub type PeerLookup = fn(&Extensions) -> Option<SocketAddr>;

/// Reads [`PeerAddr`], and with the `axum` feature axum's `ConnectInfo<SocketAddr>` (what
/// `into_make_service_with_connect_info::<SocketAddr>()` inserts) and `MockConnectInfo<SocketAddr>`
/// (what tests add with `Router::layer(MockConnectInfo(addr))`), in that order.
pub fn peer_from_extension(extensions: &Extensions) -> Option<SocketAddr> {
    if let Some(peer) = extensions.get::<PeerAddr>() {
        return Some(peer.0);
    }
    #[cfg(feature = "axum")]
    {
        use axum::extract::ConnectInfo;
        use axum::extract::connect_info::MockConnectInfo;
        if let Some(info) = extensions.get::<ConnectInfo<SocketAddr>>() {
            return Some(info.0);
        }
        if let Some(mock) = extensions.get::<MockConnectInfo<SocketAddr>>() {
            return Some(mock.0);
        }
    }
    None
}

/// Builds the planner of a configuration (its rules, or its single policy), now and after every
/// reload.
pub type PlannerBuilder = Arc<dyn Fn(&Config) -> Arc<dyn Planner> + Send + Sync>;

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

    fn report_missing_peer(&self) {
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

pub(crate) type SharedCell = Arc<LayerState>;

/// Rate-limits requests to `S`.
///
/// Built by [`RateLimitLayer`](crate::RateLimitLayer). Readiness is the inner service's:
/// `poll_ready` passes through, so backpressure is kept, and the ready service is the one
/// called (the clone takes its place).
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    state: SharedCell,
}

impl<S> RateLimit<S> {
    pub(crate) fn new(inner: S, state: SharedCell) -> Self {
        Self { inner, state }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, without the rate limiting.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The limiter in force now.
    pub fn limiter(&self) -> RateLimiter {
        self.state.current.load().limiter.clone()
    }
}

/// A peer address for asking a planner whether a key was missing only for want of one.
const PLACEHOLDER_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, S::Future, ReqBody, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // The state in force when the request arrived decides it, even if a reload follows.
        let shared = self.state.current.load_full();
        let mut info = RequestInfo {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
            peer: (shared.code.peer)(request.extensions()),
        };
        let plan = shared.planner.plan(&info);
        if let Plan::NoKey(_) = plan
            && info.peer.is_none()
        {
            // Would the request have had a key had the server said who sent it? Then the key
            // is missing through no fault of the client's: the server is not set up right.
            info.peer = Some(PLACEHOLDER_PEER);
            if !matches!(shared.planner.plan(&info), Plan::NoKey(_)) {
                self.state.report_missing_peer();
                return ResponseFuture::ready(response::missing_peer().map(ResponseBody::own));
            }
        }
        match plan {
            Plan::Exempt | Plan::NoKey(MissingKey::Allow) => {
                ResponseFuture::passing(inner.call(request))
            }
            Plan::NoKey(MissingKey::Reject) => {
                ResponseFuture::ready(response::missing_key().map(ResponseBody::own))
            }
            Plan::NoKey(MissingKey::Deny) => {
                ResponseFuture::ready(response::denied_without_key().map(ResponseBody::own))
            }
            Plan::Limit { target, key } => {
                ResponseFuture::checking(shared, target, key, request, inner)
            }
        }
    }
}
