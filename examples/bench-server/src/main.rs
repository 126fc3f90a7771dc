//! `bench-server MODE [--listen ADDR] [--redis URL] [--pool-size N] [--requests N]`: `GET
//! /api/hello` served four ways, for `load/http-compare.sh`:
//!
//! - `none`: no limiter;
//! - `memory`: this limiter, in-memory backend;
//! - `memory-ietf`: the same, writing only the draft's two headers (`headers: [ietf]`), as
//!   `tower_governor` writes two;
//! - `redis`: this limiter on Redis (`--redis`, default `redis://127.0.0.1:6379`; `--pool-size`,
//!   default the limiter's);
//! - `governor`: `tower_governor`, the peer to measure against.
//!
//! Limits are set so high that every request is allowed: the comparison is the cost of a
//! decision (and its headers), not of denials. Every mode keys by client IP.
//!
//! With `--requests N` nothing is served: the app answers N requests in process (each with the
//! client address a server would give it, no socket), in `measured_requests`, so that the
//! instructions a request costs in each mode can be counted, repeatably on a busy machine:
//!
//! ```text
//! valgrind --tool=callgrind --toggle-collect=bench_server::measured_requests \
//!   target/release/bench-server memory --requests 100000   # the total Ir / 100000
//! ```

use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use ratelimit_axum::RouterExt;
use ratelimit_core::{Config, HeaderFamilies, HttpConfig, RateLimiter, RedisConfig};
use tower::Service;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

/// The most a sliding log takes (one entry a permit).
const LIMIT: u64 = 1_000_000;
/// The Redis mode's window: its log holds what the run sent in 10 s (about 60,000 requests a
/// second here: 420,000 for the warm-up's 2 s and the measured 5 s).
const WINDOW: Duration = Duration::from_secs(10);
/// The in-memory modes' window, shorter: they answer 140,000 requests a second and more, which
/// would reach 1,000,000 in 10 s (994,000 in one run's 7 s), and from there answer denials.
const MEMORY_WINDOW: Duration = Duration::from_secs(1);

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
        "memory" => hello.rate_limit(&RateLimiter::new(Config::new(LIMIT, MEMORY_WINDOW)).await?),
        "memory-ietf" => {
            let http = HttpConfig {
                headers: HeaderFamilies {
                    ietf: true,
                    legacy: false,
                },
                ..HttpConfig::default()
            };
            let config = Config::new(LIMIT, MEMORY_WINDOW).with_http(http);
            hello.rate_limit(&RateLimiter::new(config).await?)
        }
        "redis" => {
            let mut redis = RedisConfig::new([redis]).with_timeout(Duration::from_secs(1));
            if let Some(size) = option("--pool-size") {
                redis = redis.with_pool_size(size.parse()?);
            }
            let config = Config::new(LIMIT, WINDOW).with_redis_config(redis);
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
            return Err(format!(
                "unknown mode `{other}`: none | memory | memory-ietf | redis | governor"
            )
            .into());
        }
    };
    if let Some(requests) = option("--requests") {
        return measured_requests(app, requests.parse()?);
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("bench-server {mode} on {listen}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// Answers `n` requests in process, as `axum::serve` would hand them to `app` (with the client's
/// address in `ConnectInfo`); fails on any answer but 200. Each request is polled once, without
/// a runtime around it, so that only the app's own work is counted: a mode whose requests wait
/// (Redis) is refused.
#[inline(never)]
fn measured_requests(app: Router, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    // What `into_make_service_with_connect_info` does before serving: every route built once
    // (with its layers), not again for each request.
    let mut app = app.with_state(());
    let peer = ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000)));
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..n {
        let mut request = http::Request::get("/api/hello").body(Body::empty())?;
        request.extensions_mut().insert(peer);
        if Service::<http::Request<Body>>::poll_ready(&mut app, &mut cx).is_pending() {
            return Err("the app was not ready".into());
        }
        let Poll::Ready(response) = pin!(app.call(request)).poll(&mut cx) else {
            return Err("a request waited: only modes that never wait can be counted".into());
        };
        let response = response?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("answered {}", response.status()).into());
        }
        black_box(response);
    }
    Ok(())
}
