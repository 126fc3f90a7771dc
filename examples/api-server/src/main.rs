//! `api-server [--config FILE] [--listen ADDR]`: the example API server.
//!
//! Serves `GET /api/hello`, `GET /api/users/{id}`, `POST /api/orders` (rate-limited),
//! `GET /health`, `GET /ready` and `GET /metrics`, on `127.0.0.1:8080` by default, with the
//! demo configuration in memory unless `--config` or `RATELIMIT_REDIS_URL` say otherwise.
//! Stops cleanly on Ctrl-C or SIGTERM, letting requests in flight finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use example_api_server::{app, load_config, spawn_invariant_checks};
use ratelimit_core::RateLimiter;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: api-server [--config FILE] [--listen ADDR]";

struct Args {
    config: Option<PathBuf>,
    listen: SocketAddr,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: None,
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" => {
                args.config = Some(it.next().ok_or("--config needs a file")?.into());
            }
            "--listen" => {
                let addr = it.next().ok_or("--listen needs an address")?;
                args.listen = addr.parse().map_err(|_| {
                    format!("--listen: `{addr}` is not an address like 127.0.0.1:8080")
                })?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let config = match load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("api-server: {e}");
            return ExitCode::from(2);
        }
    };
    // Connections open lazily: a Redis that is down at start does not keep the server down.
    let limiter = match RateLimiter::new_lazy(config) {
        Ok(limiter) => limiter,
        Err(e) => {
            eprintln!("api-server: {e}");
            return ExitCode::from(2);
        }
    };
    let backend = if limiter.uses_redis() {
        "redis"
    } else {
        "memory"
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("api-server: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %args.listen, backend, "api-server listening");
    spawn_invariant_checks(limiter.clone(), std::time::Duration::from_secs(30));
    let service = app(limiter).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, service)
        .with_graceful_shutdown(shutdown_signal())
        .await
    {
        eprintln!("api-server: {e}");
        return ExitCode::FAILURE;
    }
    tracing::info!("api-server stopped");
    ExitCode::SUCCESS
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
