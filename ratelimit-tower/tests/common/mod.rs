//! What the layer's integration tests share: configurations without the environment, requests
//! with a peer, a service around the layer, and replies read whole.

#![allow(dead_code, missing_docs)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};

use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use ratelimit_core::Config;
use ratelimit_core::Overrides;
use ratelimit_tower::{PeerAddr, RateLimitLayer, ResponseBody};
use tower::{Layer, Service, ServiceExt};

/// `yaml` as a configuration, ignoring `RATELIMIT_REDIS_URL`.
pub fn config(yaml: &str) -> Config {
    Config::from_yaml_str_with(yaml, None, &Overrides::default())
        .unwrap_or_else(|e| panic!("test config refused: {e}"))
}

/// `GET path` from `peer` (none: the server gave no address) with `headers`.
pub fn request(path: &str, peer: Option<&str>, headers: &[(&str, &[u8])]) -> Request<String> {
    let mut request = Request::get(path)
        .body(String::new())
        .expect("valid request");
    if let Some(peer) = peer {
        let addr = peer.parse().expect("socket address");
        request.extensions_mut().insert(PeerAddr(addr));
    }
    for (name, value) in headers {
        let value = HeaderValue::from_bytes(value).expect("header value");
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value,
        );
    }
    request
}

/// The inner service: `200 hello`.
pub async fn hello(_request: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new("hello".to_owned()))
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The value of header `name`, if present once or more (the first).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// The inner service [`hello`] behind `layer`.
pub fn hello_behind(
    layer: RateLimitLayer,
) -> impl Service<Request<String>, Response = Response<ResponseBody<String>>, Error = Infallible> + Clone
{
    layer.layer(tower::service_fn(hello))
}

/// Sends `request` through a clone of `service`.
pub async fn send<S, B>(service: &S, request: Request<String>) -> Reply
where
    S: Service<Request<String>, Response = Response<ResponseBody<B>>, Error = Infallible> + Clone,
    B: http_body::Body<Data = bytes::Bytes, Error = Infallible>,
{
    let response = service.clone().oneshot(request).await.expect("infallible");
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("infallible").to_bytes();
    Reply {
        status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// The statuses of `requests`, sent one after the other.
pub async fn statuses_of<S, B>(
    service: &S,
    requests: impl IntoIterator<Item = Request<String>>,
) -> Vec<u16>
where
    S: Service<Request<String>, Response = Response<ResponseBody<B>>, Error = Infallible> + Clone,
    B: http_body::Body<Data = bytes::Bytes, Error = Infallible>,
{
    let mut out = Vec::new();
    for request in requests {
        out.push(send(service, request).await.status);
    }
    out
}

/// The statuses of `n` requests made by `make`.
pub async fn statuses<S, B>(service: &S, n: usize, make: impl Fn() -> Request<String>) -> Vec<u16>
where
    S: Service<Request<String>, Response = Response<ResponseBody<B>>, Error = Infallible> + Clone,
    B: http_body::Body<Data = bytes::Bytes, Error = Infallible>,
{
    statuses_of(service, (0..n).map(|_| make())).await
}

/// Log events recorded while a [`Capture`] is the thread's default subscriber: (level,
/// message).
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl Capture {
    /// Starts recording on this thread; stops when the guard drops.
    pub fn start(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(self.clone());
        tracing::subscriber::set_default(subscriber)
    }

    /// The messages recorded at `level`.
    pub fn at(&self, level: tracing::Level) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((*event.metadata().level(), message.0));
    }
}
