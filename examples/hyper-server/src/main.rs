//! `hyper-server [--listen ADDR]`: plain hyper 1.x and a tower `ServiceBuilder` stack, no
//! framework. The rate-limit layer needs only the socket peer, which this server inserts into
//! each request as a [`PeerAddr`] extension.
//!
//! Every request is limited by the top-level policy of `examples/config.yaml` (rules are an
//! axum feature), keyed by client IP; `RATELIMIT_REDIS_URL` switches it to Redis.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use ratelimit_core::Config;
use ratelimit_tower::{PeerAddr, RateLimitLayer};
use tower::ServiceBuilder;
use tracing_subscriber::EnvFilter;

const CONFIG: &str = include_str!("../../config.yaml");

async fn hello(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let listen: SocketAddr = match std::env::args().skip_while(|a| a != "--listen").nth(1) {
        Some(addr) => addr.parse()?,
        None => SocketAddr::from(([127, 0, 0, 1], 8081)),
    };
    let layer = RateLimitLayer::try_new(Config::from_yaml_str(CONFIG)?)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "hyper-server listening");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let service = ServiceBuilder::new()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(PeerAddr(peer));
                request
            })
            .layer(layer.clone())
            .service_fn(hello);
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            if let Err(e) = connection.await {
                tracing::debug!(%e, %peer, "connection ended with an error");
            }
        });
    }
    tracing::info!("hyper-server stopped");
    Ok(())
}
