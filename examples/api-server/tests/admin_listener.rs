//! The `api-server` binary keeps operator routes off the public listener: `/metrics`,
//! `/admin/*` and the detailed `/ready` answer on `--admin-listen` only; the public listener
//! has the API, `/health` and a bare `/ready`.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_addr, wait_for};

/// Status line and body of `GET path`.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = common::get(addr, path);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn operator_routes_answer_on_the_admin_listener_only() {
    let admin = free_addr();
    let running = common::start(&[
        "--admin-listen",
        &admin.to_string(),
        "--check-interval",
        "1",
    ]);
    let public = running.addr;
    wait_for(admin);

    assert_eq!(get(public, "/api/hello").0, 200);
    assert_eq!(get(public, "/health").0, 200);
    for path in ["/metrics", "/admin/hot-keys", "/admin/hot-keys?raw=true"] {
        assert_eq!(get(public, path).0, 404, "{path} on the public listener");
        assert_eq!(get(admin, path).0, 200, "{path} on the admin listener");
    }
    // The public probe: ready once the first check ran, and nothing but that.
    let started = Instant::now();
    let (status, body) = loop {
        let reply = get(public, "/ready");
        if reply.0 == 200 || started.elapsed() > Duration::from_secs(10) {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, detailed) = get(admin, "/ready");
    assert_eq!(status, 200);
    assert!(detailed.contains("\"invariants\""), "{detailed}");
    // The API is not on the admin listener.
    assert_eq!(get(admin, "/api/hello").0, 404);
}

#[test]
fn the_admin_listener_can_be_turned_off_and_never_shares_the_public_port() {
    let public = free_addr();
    let same = Command::new(env!("CARGO_BIN_EXE_api-server"))
        .args(["--listen", &public.to_string()])
        .args(["--admin-listen", &public.to_string()])
        .env_remove("RATELIMIT_REDIS_URL")
        .output()
        .expect("run api-server");
    assert_eq!(same.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&same.stderr).contains("never share"));

    let _running = common::start_on(public, &["--admin-listen", "none"]);
    assert_eq!(get(public, "/api/hello").0, 200);
    assert_eq!(get(public, "/metrics").0, 404);
}

#[test]
fn the_default_operator_port_is_not_the_public_one() {
    let help = Command::new(env!("CARGO_BIN_EXE_api-server"))
        .arg("--help")
        .output()
        .expect("run api-server --help");
    let usage = String::from_utf8_lossy(&help.stderr);
    assert!(usage.contains("default 127.0.0.1:8080"), "{usage}");
    assert!(usage.contains("default 127.0.0.1:9090"), "{usage}");
}
