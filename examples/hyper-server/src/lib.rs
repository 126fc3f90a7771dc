//! The example hyper server as a library: plain hyper 1.x and a tower `ServiceBuilder` stack,
//! no framework, so tests bind exactly what the binary serves.
//!
//! The rate-limit layer applies the configuration's `rules:` here as in the axum example
//! ([`RateLimitLayer::from_limiter`] plans with `ratelimit-tower`'s `RuleSet` when there are
//! rules). It needs the socket peer, which [`serve`] inserts into each request as a
//! [`PeerAddr`] extension, and a router that agrees with the rules: [`route`] takes a path as
//! axum's router does (exact segments, a trailing `/` is another path, `HEAD` served by the
//! `GET` handler), so that every request a handler answers was planned under that handler's
//! rule.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use ratelimit_tower::{PeerAddr, RateLimitLayer};
use tower::ServiceBuilder;

/// The built-in demo configuration: `examples/config.yaml`.
pub const DEMO_CONFIG: &str = include_str!("../../config.yaml");

/// The handler a request goes to, as a router would decide it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /api/hello`.
    Hello,
    /// `GET /api/users/{id}`.
    User,
    /// `POST /api/orders`.
    Orders,
    /// `GET /health`.
    Health,
    /// A known path, another method.
    MethodNotAllowed,
    /// No such path.
    NotFound,
}

/// Routes `method path` like axum's router: literal segments compared as sent, `{id}` one
/// non-empty segment, nothing else (no trailing `/`, no empty segment); `HEAD` goes to the
/// `GET` handler.
///
/// ```
/// use example_hyper_server::{Route, route};
/// use http::Method;
///
/// assert_eq!(route(&Method::GET, "/api/hello"), Route::Hello);
/// assert_eq!(route(&Method::HEAD, "/api/hello"), Route::Hello);
/// assert_eq!(route(&Method::GET, "/api/hello/"), Route::NotFound);
/// assert_eq!(route(&Method::GET, "/api/users/7"), Route::User);
/// assert_eq!(route(&Method::GET, "/api/users/"), Route::NotFound);
/// assert_eq!(route(&Method::DELETE, "/api/orders"), Route::MethodNotAllowed);
/// ```
pub fn route(method: &Method, path: &str) -> Route {
    let get = method == Method::GET || method == Method::HEAD;
    let (expected_get, route) = match path {
        "/api/hello" => (true, Route::Hello),
        "/api/orders" => (false, Route::Orders),
        "/health" => (true, Route::Health),
        _ => match path.strip_prefix("/api/users/") {
            Some(id) if !id.is_empty() && !id.contains('/') => (true, Route::User),
            _ => return Route::NotFound,
        },
    };
    match (expected_get, get, method == Method::POST) {
        (true, true, _) | (false, _, true) => route,
        _ => Route::MethodNotAllowed,
    }
}

/// Answers a request once the layer let it through.
pub async fn handle<B>(request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body): (StatusCode, &'static str) =
        match route(request.method(), request.uri().path()) {
            Route::Hello => (StatusCode::OK, "hello\n"),
            Route::User => (StatusCode::OK, "a user\n"),
            Route::Orders => (StatusCode::CREATED, "order accepted\n"),
            Route::Health => (StatusCode::OK, "ok\n"),
            Route::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            Route::NotFound => (StatusCode::NOT_FOUND, "not found\n"),
        };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    Ok(response)
}

/// Serves `layer` in front of [`handle`] on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    layer: RateLimitLayer,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let service = ServiceBuilder::new()
            .map_request(move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(PeerAddr(peer));
                request
            })
            .layer(layer.clone())
            .service_fn(handle);
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(e) = connection.await {
                tracing::debug!(%e, %peer, "connection ended with an error");
            }
        });
    }
}
