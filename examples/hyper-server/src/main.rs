//! `hyper-server [--listen ADDR] [--config FILE]`: plain hyper 1.x and a tower `ServiceBuilder`
//! stack, no framework (see the library, `src/lib.rs`).
//!
//! Serves `GET /api/hello`, `GET /api/users/{id}`, `POST /api/orders` and `GET /health` on
//! `127.0.0.1:8081` by default, limited by the rules of `examples/config.yaml` (or of
//! `--config FILE`), keyed by client IP; `RATELIMIT_REDIS_URL` switches it to Redis. Stops on
//! Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use example_hyper_server::{DEMO_CONFIG, serve};
use ratelimit_core::Config;
use ratelimit_tower::RateLimitLayer;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: hyper-server [--listen ADDR] [--config FILE]";

struct Args {
    listen: SocketAddr,
    config: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
        config: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--listen" => {
                let addr = it.next().ok_or("--listen needs an address")?;
                args.listen = addr.parse().map_err(|_| {
                    format!("--listen: `{addr}` is not an address like 127.0.0.1:8081")
                })?;
            }
            "--config" => args.config = Some(it.next().ok_or("--config needs a file")?.into()),
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
    let config = match &args.config {
        Some(path) => Config::from_yaml_file(path),
        None => Config::from_yaml_str(DEMO_CONFIG),
    };
    // The rules of the configuration apply: this is not an axum feature.
    let layer = match config
        .map_err(ratelimit_core::Error::from)
        .and_then(RateLimitLayer::try_new)
    {
        Ok(layer) => layer,
        Err(e) => {
            eprintln!("hyper-server: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("hyper-server: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %args.listen, "hyper-server listening");
    let shutdown = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    if let Err(e) = serve(listener, layer, shutdown).await {
        eprintln!("hyper-server: {e}");
        return ExitCode::FAILURE;
    }
    tracing::info!("hyper-server stopped");
    ExitCode::SUCCESS
}
