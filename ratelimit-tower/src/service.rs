//! [`RateLimit`]: the `Service` that plans, checks and answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Extensions, Request, Response};
use ratelimit_core::RateLimiter;
use ratelimit_core::config::{HeaderFamilies, MissingKey};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::extract::{PeerAddr, RequestInfo};
use crate::future::ResponseFuture;
use crate::plan::{Plan, Planner};
use crate::response;

/// Finds the socket peer in a request's extensions.
pub type PeerLookup = fn(&Extensions) -> Option<SocketAddr>;

/// Reads [`PeerAddr`].
pub fn peer_from_extension(extensions: &Extensions) -> Option<SocketAddr> {
    extensions.get::<PeerAddr>().map(|p| p.0)
}

/// Builds the planner of a configuration (its rules, or its single policy).
pub type PlannerBuilder = fn(&ratelimit_core::Config) -> Arc<dyn Planner>;

/// What every clone of the service shares; replaced whole on a reload.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) limiter: RateLimiter,
    pub(crate) planner: Arc<dyn Planner>,
    /// How `planner` was made, to make the next one on a reload; `None` for a fixed planner.
    pub(crate) planner_builder: Option<PlannerBuilder>,
    pub(crate) families: HeaderFamilies,
    pub(crate) peer: PeerLookup,
    /// Shadow mode for everything, whatever the targets say.
    pub(crate) shadow: bool,
}

/// The swappable state of a layer and its services.
pub(crate) type SharedCell = Arc<arc_swap::ArcSwap<Shared>>;

/// Rate-limits requests to `S`.
///
/// Built by [`RateLimitLayer`](crate::RateLimitLayer). Readiness is the inner service's:
/// `poll_ready` passes through, so backpressure is kept, and the ready service is the one
/// called (the clone takes its place).
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: SharedCell,
}

impl<S> RateLimit<S> {
    pub(crate) fn new(inner: S, shared: SharedCell) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The limiter in force now.
    pub fn limiter(&self) -> RateLimiter {
        self.shared.load().limiter.clone()
    }
}

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
        let shared = self.shared.load_full();
        let plan = {
            let info = RequestInfo {
                method: request.method(),
                uri: request.uri(),
                headers: request.headers(),
                extensions: request.extensions(),
                peer: (shared.peer)(request.extensions()),
            };
            shared.planner.plan(&info)
        };
        match plan {
            Plan::Exempt | Plan::NoKey(MissingKey::Allow) => {
                ResponseFuture::passing(inner.call(request))
            }
            Plan::NoKey(MissingKey::Reject) => ResponseFuture::ready(response::missing_key()),
            Plan::NoKey(MissingKey::Deny) => ResponseFuture::ready(response::denied_without_key()),
            Plan::Limit { target, key } => {
                ResponseFuture::checking(shared, target, key, request, inner)
            }
        }
    }
}
