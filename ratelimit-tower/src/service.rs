//! [`RateLimit`]: the `Service` that plans, checks and answers.

use std::net::{Ipv6Addr, SocketAddr};
use std::task::{Context, Poll};

use http::{Request, Response};
use ratelimit_core::MissingKey;
use ratelimit_core::RateLimiter;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::future::ResponseFuture;
use crate::plan::Plan;
use crate::response;
use crate::state::SharedCell;

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
        let mut info = shared.request_info(&request);
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
