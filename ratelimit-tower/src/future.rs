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

use crate::RateLimitInfo;
use crate::body::ResponseBody;
use crate::headers;
use crate::plan::Target;
use crate::response;
use crate::service::Shared;

type Check = Pin<Box<dyn Future<Output = Result<Decision, Error>> + Send>>;

pin_project! {
    /// Resolves to the inner service's response with rate-limit headers, or to this layer's
    /// own 429 or 400.
    pub struct ResponseFuture<S, F, ReqBody, ResBody> {
        #[pin]
        state: State<S, F, ReqBody, ResBody>,
        _body: PhantomData<fn() -> ResBody>,
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
    ) -> Self {
        let limiter = shared.limiter.clone();
        let policy_target = target.clone();
        let check: Check = Box::pin(async move {
            let policy = policy_target.policy();
            limiter.allow_with(policy, &key, policy.cost()).await
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
                    let outcome = ready!(check.as_mut().poll(cx));
                    let (Some(mut request), Some(mut inner)) = (request.take(), inner.take())
                    else {
                        // Polled again after completion: nothing left to do.
                        return Poll::Pending;
                    };
                    let (shared, target) = (shared.clone(), target.clone());
                    let shadow = shared.shadow || target.shadow();
                    let stamp = match outcome {
                        Ok(decision) if decision.allowed() => Some(decision),
                        Ok(decision) if shadow => {
                            tracing::info!(
                                policy = target.policy().name(),
                                rule = target.rule(),
                                "shadow mode: request over the limit let through"
                            );
                            request.extensions_mut().insert(RateLimitInfo {
                                decision,
                                target: target.clone(),
                            });
                            None
                        }
                        Ok(decision) => {
                            let response =
                                response::too_many_requests(&target, &decision, shared.families);
                            this.state.set(State::Ready {
                                response: Some(response),
                            });
                            continue;
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
                    let future = inner.call(request);
                    this.state.set(State::Calling { future, stamp });
                }
                StateProjection::Calling { future, stamp } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some((shared, target, decision)) = stamp.take() {
                        headers::write(response.headers_mut(), shared.families, &target, &decision);
                        response
                            .extensions_mut()
                            .insert(RateLimitInfo { decision, target });
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
