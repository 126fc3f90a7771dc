//! `bench-server MODE [--listen ADDR] [--redis URL]`: `GET /api/hello` served four ways, for
//! `load/http-compare.sh`:
//!
//! - `none`: no limiter;
//! - `memory`: this limiter, in-memory backend;
//! - `redis`: this limiter on Redis (`--redis`, default `redis://127.0.0.1:6379`);
//! - `governor`: `tower_governor`, the peer to measure against.
//!
//! Limits are set so high that every request is allowed: the comparison is the cost of a
//! decision (and its headers), not of denials. Every mode keys by client IP.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use ratelimit_axum::RouterExt;
use ratelimit_core::{Config, RateLimiter, RedisConfig};
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

/// Far above what one machine can send in the window.
const LIMIT: u64 = 1_000_000;
const WINDOW: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map_or("none", String::as_str).to_owned();
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let listen: SocketAddr = option("--listen")
        .unwrap_or_else(|| "127.0.0.1:8090".into())
        .parse()?;
    let redis = option("--redis").unwrap_or_else(|| "redis://127.0.0.1:6379".into());

    let hello = Router::new().route("/api/hello", get(|| async { "hello" }));
    let app = match mode.as_str() {
        "none" => hello,
        "memory" => hello.rate_limit(&RateLimiter::new(Config::new(LIMIT, WINDOW)).await?),
        "redis" => {
            let config = Config::new(LIMIT, WINDOW)
                .with_redis_config(RedisConfig::new([redis]).with_timeout(Duration::from_secs(1)));
            hello.rate_limit(&RateLimiter::new(config).await?)
        }
        "governor" => {
            let config = GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(u32::MAX)
                .use_headers()
                .finish()
                .ok_or("tower_governor refused its configuration")?;
            hello.layer(GovernorLayer::new(config))
        }
        other => {
            return Err(format!("unknown mode `{other}`: none | memory | redis | governor").into());
        }
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("bench-server {mode} on {listen}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
