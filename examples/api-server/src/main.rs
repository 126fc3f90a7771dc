//! `api-server [--config FILE] [--listen ADDR] [--admin-listen ADDR|none]`: the example API
//! server.
//!
//! Serves `GET /api/hello`, `GET /api/users/{id}`, `POST /api/orders` (rate-limited),
//! `GET /health` and a bare `GET /ready` on `127.0.0.1:8080` by default, and the operator
//! routes (`GET /metrics`, `GET /admin/hot-keys`, the detailed `GET /ready`) on a separate
//! admin listener, `127.0.0.1:9090` by default (`none` turns it off). The demo configuration
//! runs in memory unless `--config` or `RATELIMIT_REDIS_URL` say otherwise. Readiness is
//! checked every `--check-interval` seconds (default 5), never on request. Stops cleanly on
//! Ctrl-C or SIGTERM, letting requests in flight finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use example_api_server::{DEFAULT_CHECK_PERIOD, Reloader, load_config, server};
use ratelimit_core::RateLimiter;

const USAGE: &str = "usage: api-server [--config FILE] [--listen ADDR] \
[--admin-listen ADDR|none] [--check-interval SECONDS] [--shutdown-timeout SECONDS]

  --listen ADDR          the public listener: the API, /health, /ready (default 127.0.0.1:8080)
  --admin-listen ADDR    the operator listener: /metrics, /admin/*, the detailed /ready
                         (default 127.0.0.1:9090; `none` for no operator listener)";

struct Args {
    config: Option<PathBuf>,
    listen: SocketAddr,
    admin_listen: Option<SocketAddr>,
    check_interval: Duration,
    shutdown_timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: None,
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        check_interval: DEFAULT_CHECK_PERIOD,
        shutdown_timeout: Duration::from_secs(10),
    };
    let seconds = |flag: &str, value: Option<String>| -> Result<Duration, String> {
        let value = value.ok_or(format!("{flag} needs seconds"))?;
        match value.parse::<u64>() {
            Ok(secs) => Ok(Duration::from_secs(secs)),
            Err(_) => Err(format!("{flag}: `{value}` is not whole seconds")),
        }
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
            "--admin-listen" => {
                let addr = it
                    .next()
                    .ok_or("--admin-listen needs an address or `none`")?;
                args.admin_listen = match addr.as_str() {
                    "none" => None,
                    _ => Some(addr.parse().map_err(|_| {
                        format!(
                            "--admin-listen: `{addr}` is not an address like 127.0.0.1:9090, \
                             nor `none`"
                        )
                    })?),
                };
            }
            "--check-interval" => {
                args.check_interval = seconds("--check-interval", it.next())?;
                if args.check_interval.is_zero() {
                    return Err("--check-interval: at least 1 second".to_owned());
                }
            }
            "--shutdown-timeout" => {
                args.shutdown_timeout = seconds("--shutdown-timeout", it.next())?;
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if args.admin_listen == Some(args.listen) {
        return Err(format!(
            "--admin-listen is --listen ({}): operator routes never share the public listener",
            args.listen
        ));
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = example_api_server::telemetry::init();
    // Signal handlers are installed before anything can be asked of the server: a signal that
    // arrives before its handler would take the default action (end the process).
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("api-server: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    let admin_listener = match args.admin_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                eprintln!(
                    "api-server: cannot listen on {addr} for the operator routes: {e} \
                     (choose another with --admin-listen ADDR, or --admin-listen none)"
                );
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    tracing::info!(
        listen = %args.listen,
        admin = %args.admin_listen.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        backend,
        "api-server listening"
    );
    let server = server(limiter);
    let _checks = server.spawn_checks(args.check_interval);
    // Hot reload: the file is watched, and SIGHUP reloads it too.
    let _watcher = match &args.config {
        Some(path) => {
            let reloader = Reloader::new(path, &server);
            spawn_sighup_reload(reloader.clone(), signals.hangup);
            match reloader.watch(Duration::from_millis(200)) {
                Ok(watcher) => Some(watcher),
                Err(e) => {
                    tracing::warn!(%e, "cannot watch the configuration file; SIGHUP still reloads");
                    None
                }
            }
        }
        None => None,
    };
    let public = server
        .public
        .into_make_service_with_connect_info::<SocketAddr>();
    let admin = server.admin.into_make_service();
    // On SIGTERM or Ctrl-C: stop accepting, let requests in flight finish, and give up on
    // connections still open after the deadline. Decisions hold no local state that Redis
    // lacks (leases are recorded in Redis when taken), so nothing needs flushing.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut stop_rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop_rx.wait_for(|stopped| *stopped).await;
    };
    let serve_public = axum::serve(listener, public)
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future();
    let serve_admin = {
        let stop = stopped(stop_rx.clone());
        async move {
            match admin_listener {
                Some(listener) => {
                    axum::serve(listener, admin)
                        .with_graceful_shutdown(stop)
                        .await
                }
                None => Ok(()),
            }
        }
    };
    tokio::spawn(async move {
        shutdown_signal(signals.terminate).await;
        let _ = stop_tx.send(true);
    });
    let deadline = async move {
        stopped(stop_rx).await;
        tokio::time::sleep(args.shutdown_timeout).await;
    };
    tokio::select! {
        result = async { tokio::try_join!(serve_public, serve_admin) } => {
            if let Err(e) = result {
                eprintln!("api-server: {e}");
                return ExitCode::FAILURE;
            }
            tracing::info!("api-server stopped");
        }
        () = deadline => {
            tracing::warn!("shutdown deadline passed; closing the connections still open");
        }
    }
    ExitCode::SUCCESS
}

/// The signals the server acts on, registered once at start.
struct Signals {
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(not(unix))]
    hangup: (),
    #[cfg(not(unix))]
    terminate: (),
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                hangup: signal(SignalKind::hangup())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {
            hangup: (),
            terminate: (),
        })
    }
}

/// Reloads on every SIGHUP.
#[cfg(unix)]
fn spawn_sighup_reload(reloader: Reloader, mut hangups: tokio::signal::unix::Signal) {
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let _ = reloader.reload();
        }
    });
}

#[cfg(not(unix))]
fn spawn_sighup_reload(_reloader: Reloader, _hangups: ()) {}

/// Ctrl-C or SIGTERM.
#[cfg(unix)]
async fn shutdown_signal(mut terminate: tokio::signal::unix::Signal) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        _ = terminate.recv() => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Ctrl-C.
#[cfg(not(unix))]
async fn shutdown_signal(_terminate: ()) {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down: finishing requests in flight");
}
