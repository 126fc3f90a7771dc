//! The response future of [`RateLimit`](crate::RateLimit): check, then call or answer.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use ratelimit_core::{Decision, Error};
use tower_service::Service;

use crate::body::ResponseBody;
use crate::headers;
use crate::hooks::Denial;
use crate::info::RateLimitInfo;
use crate::plan::Target;
use crate::response;
use crate::state::Shared;

/// The limiter's answer, and the key handed back for the hooks (no copy is made).
type Check = Pin<Box<dyn Future<Output = (Result<Decision, Error>, Vec<u8>)> + Send>>;

pin_project! {
    /// Resolves to the inner service's response with rate-limit headers, or to this layer's
    /// own 429, 400 or 500.
    pub struct ResponseFuture<S, F, ReqBody, ResBody> {
        #[pin]
        state: State<S, F, ReqBody, ResBody>,
        _body: PhantomData<fn() -> ResBody>,
    }
}

impl<S, F, ReqBody, ResBody> std::fmt::Debug for ResponseFuture<S, F, ReqBody, ResBody> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Checking { .. } => "checking",
            State::Calling { .. } => "calling",
            State::Ready { .. } => "ready",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

pin_project! {
    #[project = StateProjection]
    enum State<S, F, ReqBody, ResBody> {
        // Waiting for the limiter; the ready inner service and the request wait with it.
        Checking {
            check: Check,
            shared: Arc<Shared>,
            target: Arc<Target>,
            request: Option<Request<ReqBody>>,
            inner: Option<S>,
        },
        // The inner service is answering; its response gets the headers of `stamp`.
        Calling {
            #[pin]
            future: F,
            stamp: Option<(Arc<Shared>, Arc<Target>, Decision)>,
        },
        // Answered without the inner service.
        Ready {
            response: Option<Response<ResponseBody<ResBody>>>,
        },
    }
}

impl<S, F, ReqBody, ResBody> ResponseFuture<S, F, ReqBody, ResBody> {
    pub(crate) fn passing(future: F) -> Self {
        Self::with(State::Calling {
            future,
            stamp: None,
        })
    }

    pub(crate) fn ready(response: Response<ResponseBody<ResBody>>) -> Self {
        Self::with(State::Ready {
            response: Some(response),
        })
    }

    pub(crate) fn checking(
        shared: Arc<Shared>,
        target: Arc<Target>,
        key: Vec<u8>,
        request: Request<ReqBody>,
        inner: S,
    ) -> Self
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>, Future = F>,
    {
        // The in-memory backend, or the cache of a Redis-backed limiter, decides now: no
        // future is built, boxed or not. Only a decision that waits for Redis boxes one.
        let policy = target.policy();
        if let Some(outcome) = shared.limiter.allow_with_now(policy, &key, policy.cost()) {
            return Self::with(decided(shared, target, outcome, &key, request, inner));
        }
        let limiter = shared.limiter.clone();
        let policy_target = target.clone();
        let check: Check = Box::pin(async move {
            let policy = policy_target.policy();
            // The cache was asked above (`allow_with_now`): not again.
            let decision = limiter.allow_with_remote(policy, &key, policy.cost()).await;
            (decision, key)
        });
        Self::with(State::Checking {
            check,
            shared,
            target,
            request: Some(request),
            inner: Some(inner),
        })
    }

    fn with(state: State<S, F, ReqBody, ResBody>) -> Self {
        Self {
            state,
            _body: PhantomData,
        }
    }
}

impl<S, F, ReqBody, ResBody, E> Future for ResponseFuture<S, F, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Error = E, Future = F>,
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProjection::Checking {
                    check,
                    shared,
                    target,
                    request,
                    inner,
                } => {
                    let (outcome, key) = ready!(check.as_mut().poll(cx));
                    let (Some(request), Some(inner)) = (request.take(), inner.take()) else {
                        // Polled again after completion: nothing left to do.
                        return Poll::Pending;
                    };
                    let next = decided(
                        shared.clone(),
                        target.clone(),
                        outcome,
                        &key,
                        request,
                        inner,
                    );
                    this.state.set(next);
                }
                StateProjection::Calling { future, stamp } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some((shared, target, decision)) = stamp.take() {
                        let reset = headers::reset_secs(&decision);
                        headers::write(
                            response.headers_mut(),
                            shared.headers,
                            target.fields(),
                            &decision,
                            reset,
                        );
                        if shared.code.info_in_response {
                            response
                                .extensions_mut()
                                .insert(RateLimitInfo { decision, target });
                        }
                    }
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
                }
                StateProjection::Ready { response } => {
                    return match response.take() {
                        Some(response) => Poll::Ready(Ok(response)),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// What follows the limiter's answer `outcome` for `request` (keyed `key`): the inner service
/// called, the decision in the request's extensions and the headers to come, or a `429`.
fn decided<S, F, ReqBody, ResBody>(
    shared: Arc<Shared>,
    target: Arc<Target>,
    outcome: Result<Decision, Error>,
    key: &[u8],
    mut request: Request<ReqBody>,
    mut inner: S,
) -> State<S, F, ReqBody, ResBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>, Future = F>,
{
    let shadow = shared.shadow || target.shadow();
    let stamp = match outcome {
        Ok(decision) if decision.allowed() => Some(decision),
        Ok(decision) if shadow => {
            tracing::info!(
                policy = target.policy().name(),
                rule = target.rule(),
                "shadow mode: request over the limit let through"
            );
            if let Some(on_denied) = &shared.code.hooks.on_denied {
                on_denied(&denial(&shared, &request, &target, &decision, key, true));
            }
            request.extensions_mut().insert(RateLimitInfo {
                decision,
                target: target.clone(),
            });
            None
        }
        Ok(decision) => {
            // One number for `Retry-After`, `t` and `X-RateLimit-Reset`.
            let retry = headers::reset_secs(&decision);
            let mut response =
                response::too_many_requests(&target, &decision, shared.headers, retry);
            let hooks = &shared.code.hooks;
            if hooks.any() {
                let denial = denial(&shared, &request, &target, &decision, key, false);
                if let Some(on_denied) = &hooks.on_denied {
                    on_denied(&denial);
                }
                if let Some(shape) = &hooks.denied_response {
                    response = shape(&denial, response);
                }
            }
            return State::Ready {
                response: Some(response.map(ResponseBody::own)),
            };
        }
        Err(error) => {
            tracing::warn!(
                %error,
                policy = target.policy().name(),
                "rate limiter unavailable: request let through"
            );
            // Handlers still learn what happened: let through, open. No
            // headers: they would describe a quota nobody counted.
            request.extensions_mut().insert(RateLimitInfo {
                decision: Decision::fallback_open(target.policy()),
                target: target.clone(),
            });
            None
        }
    };
    if let Some(decision) = &stamp {
        request.extensions_mut().insert(RateLimitInfo {
            decision: *decision,
            target: target.clone(),
        });
    }
    // Shadow decisions stay invisible to clients: no headers.
    let stamp = stamp
        .filter(|_| !shadow)
        .map(|decision| (shared, target, decision));
    State::Calling {
        future: inner.call(request),
        stamp,
    }
}

/// What the hooks see of a denied `request`.
fn denial<'a, B>(
    shared: &Shared,
    request: &'a Request<B>,
    target: &'a Target,
    decision: &'a Decision,
    key: &'a [u8],
    shadow: bool,
) -> Denial<'a> {
    Denial {
        request: shared.request_info(request),
        target,
        decision,
        key,
        shadow,
    }
}
