//! What the axum integration tests share: configurations without the environment, an app
//! called in process from a known peer, an app served on a loopback socket and spoken to over
//! HTTP, and replies read whole.

#![allow(dead_code, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use ratelimit_core::Overrides;
use ratelimit_core::{Config, RateLimiter};
use tower::ServiceExt;

/// The peer of every request [`call`] makes, as `MockConnectInfo` tells it to the layer.
pub const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 4000);

/// `yaml` as a configuration, ignoring `RATELIMIT_REDIS_URL`.
pub fn config(yaml: &str) -> Config {
    Config::from_yaml_str_with(yaml, None, &Overrides::default())
        .unwrap_or_else(|e| panic!("test config refused: {e}"))
}

/// An in-memory limiter for `yaml`.
pub fn limiter(yaml: &str) -> RateLimiter {
    RateLimiter::new_lazy(config(yaml)).unwrap_or_else(|e| panic!("limiter refused: {e}"))
}

/// `app` with every request coming from [`PEER`], as a server with connect info would say.
pub fn from_peer(app: Router) -> Router {
    app.layer(MockConnectInfo(PEER))
}

/// `method target` through `app`, in process. The target reaches the router as it is written
/// (parsed by `http`, as hyper parses a request line): no client normalizes it on the way.
pub async fn call(app: &Router, method: &str, target: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(target)
        .body(Body::empty())
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
    let response = app
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| match e {});
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("response body").to_bytes();
    Reply {
        status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Serves `app` on `127.0.0.1:0`, with axum's connect info or without; its address.
pub async fn serve(app: Router, connect_info: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        if connect_info {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        } else {
            axum::serve(listener, app.into_make_service()).await
        }
        .expect("serve");
    });
    addr
}

/// `GET path` over HTTP from a real client.
pub async fn fetch(addr: SocketAddr, path: &str) -> Reply {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.expect("response body"),
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The value of header `name` (the first, if repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Header `name` as a number; panics when it is missing or not one.
    pub fn number(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("{name} missing: {self:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {self:?}"))
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}
