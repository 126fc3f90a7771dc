//! Keeps the load tool working: a 2-second run of two instances against a throwaway Redis,
//! checked for a consistent report and for no process left behind.
//!
//! The instances must be separate processes (each has its own memory, and they share only
//! Redis), but a package's tests are given the path of that package's own binaries only. So
//! this test binary is also the server: started as
//! `smoke --config FILE --listen ADDR --admin-listen ADDR`, the argument shape the tool gives an
//! api-server, it serves the example app through its library (`example_api_server`) instead of
//! testing. Hence `harness = false`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ratelimit_load::{Options, RedisChoice, run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--config") {
        return serve(&args);
    }
    if args.iter().any(|a| a == "--list") {
        println!("smoke: test");
        return ExitCode::SUCCESS;
    }
    if !selected(&args) {
        println!("running 0 tests");
        return ExitCode::SUCCESS;
    }
    smoke();
    println!("test smoke ... ok");
    ExitCode::SUCCESS
}

/// Whether the libtest-style arguments (`cargo test -- ARGS`) select the one test, `smoke`.
fn selected(args: &[String]) -> bool {
    const TAKES_VALUE: [&str; 6] = [
        "--test-threads",
        "--format",
        "--color",
        "--logfile",
        "--shuffle-seed",
        "-Z",
    ];
    let exact = args.iter().any(|a| a == "--exact");
    let matches = |filter: &str| {
        if exact {
            filter == "smoke"
        } else {
            "smoke".contains(filter)
        }
    };
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--skip" => skips.extend(it.next()),
            // Only ignored tests are asked for, and this one is not ignored.
            "--ignored" => return false,
            a if TAKES_VALUE.contains(&a) => {
                it.next();
            }
            a if a.starts_with('-') => {}
            filter => filters.push(filter),
        }
    }
    (filters.is_empty() || filters.iter().any(|f| matches(f)))
        && !skips.iter().any(|s| "smoke".contains(s.as_str()))
}

#[tokio::main]
async fn smoke() {
    let server = match std::env::current_exe() {
        Ok(path) => path,
        Err(e) => panic!("cannot find this test binary: {e}"),
    };
    let started = Instant::now();
    let options = Options::default()
        .with_redis(RedisChoice::Standalone)
        .with_server_bin(server)
        .with_instances(2)
        .with_connections(8)
        .with_warmup(Duration::ZERO)
        .with_duration(Duration::from_secs(2))
        .with_keys(40)
        .with_free_share(0.25);
    let report = match run(&options).await {
        Ok(report) => report,
        Err(e) => panic!("the load run failed: {e}"),
    };
    println!("{}", report.to_markdown());

    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.requests > 0);
    assert_eq!(
        report.requests,
        report.answered() + report.status.errors,
        "every request is counted once"
    );
    assert!(report.status.ok > 0, "the paid keys are allowed");
    assert!(
        report.status.too_many_requests > 0,
        "the free keys are denied"
    );
    assert!(
        report.latency.p50_us <= report.latency.p99_us
            && report.latency.p99_us <= report.latency.p999_us
            && report.latency.p999_us <= report.latency.max_us
            && report.latency.p50_us > 0
    );
    // Every decision is made in Redis (one EVALSHA, or two after a retry), by the local cache,
    // or, if Redis was slower than its timeout on a busy machine, by the fallback.
    assert_eq!(report.redis.len(), 1);
    let evalsha = report.redis[0].evalsha;
    assert!(evalsha > 0 && report.redis[0].commands > evalsha);
    assert!(
        report.limiter.cache_hits > 0,
        "the free keys' denials are cached"
    );
    assert!(
        evalsha + report.limiter.cache_hits + report.limiter.fallback_decisions
            >= report.answered(),
        "{report:?}"
    );
    assert_eq!(report.instances.len(), 2);
    for instance in &report.instances {
        assert!(instance.rss_start_kib.is_some_and(|kib| kib > 0));
        assert!(instance.rss_end_kib.is_some_and(|kib| kib > 0));
        // Reaped, not merely killed: no process, not even a zombie, is left.
        assert!(
            !std::path::Path::new(&format!("/proc/{}", instance.pid)).exists(),
            "instance {} (pid {}) outlived the run",
            instance.addr,
            instance.pid
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the smoke run took {:?}",
        started.elapsed()
    );
}

/// The example api-server's app, as `api-server --config FILE --listen ADDR` would serve it.
#[tokio::main]
async fn serve(args: &[String]) -> ExitCode {
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let (Some(config), Some(listen), Some(admin_listen)) = (
        value("--config"),
        value("--listen"),
        value("--admin-listen"),
    ) else {
        eprintln!("usage: smoke --config FILE --listen ADDR --admin-listen ADDR");
        return ExitCode::from(2);
    };
    let (Ok(listen), Ok(admin_listen)) = (
        listen.parse::<SocketAddr>(),
        admin_listen.parse::<SocketAddr>(),
    ) else {
        eprintln!("--listen {listen} --admin-listen {admin_listen}: not addresses");
        return ExitCode::from(2);
    };
    let limiter = match example_api_server::load_config(Some(config.as_ref()))
        .map_err(|e| e.to_string())
        .and_then(|c| ratelimit_core::RateLimiter::new_lazy(c).map_err(|e| e.to_string()))
    {
        Ok(limiter) => limiter,
        Err(e) => {
            eprintln!("smoke server: {e}");
            return ExitCode::from(2);
        }
    };
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            // The tool looks for these words to retry on other ports.
            eprintln!("smoke server: cannot listen on {addr}: {e}");
            ExitCode::FAILURE
        })
    };
    let (listener, admin_listener) = match (bind(listen).await, bind(admin_listen).await) {
        (Ok(listener), Ok(admin)) => (listener, admin),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let server = example_api_server::server(limiter);
    let _checks = server.spawn_checks(example_api_server::DEFAULT_CHECK_PERIOD);
    let public = server
        .public
        .into_make_service_with_connect_info::<SocketAddr>();
    let admin = server.admin.into_make_service();
    match tokio::try_join!(
        axum::serve(listener, public).into_future(),
        axum::serve(admin_listener, admin).into_future()
    ) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smoke server: {e}");
            ExitCode::FAILURE
        }
    }
}
