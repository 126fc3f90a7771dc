//! The `api-server` binary itself: it starts on the demo configuration, reloads its file on
//! SIGHUP, and on SIGTERM stops accepting, finishes what is in flight and exits cleanly.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Running, get};

/// The binary on free ports (public and operator listeners: see `common::start_on`).
fn start(args: &[&str]) -> Running {
    common::start(args)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn the_demo_configuration_limits_hello_at_ten_a_minute() {
    let server = start(&[]);
    for i in 0..10 {
        let response = get(server.addr, "/api/hello");
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "request {i}: {response}"
        );
    }
    let denied = get(server.addr, "/api/hello");
    assert!(denied.starts_with("HTTP/1.1 429"), "{denied}");
    assert!(
        denied.contains("ratelimit-policy: \"hello-1m\";q=10;w=60"),
        "{denied}"
    );
    assert!(get(server.addr, "/health").starts_with("HTTP/1.1 200"));
}

#[test]
fn sighup_reloads_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    let config = |limit: u32| {
        format!("rate_limiter:\n  windows:\n    - max_requests: {limit}\n      duration: 1h\n")
    };
    std::fs::write(&path, config(7)).expect("write");
    let server = start(&["--config", path.to_str().expect("utf-8 path")]);
    assert!(get(server.addr, "/api/hello").contains("q=7;w=3600"));
    // Written in place, so only SIGHUP (not the directory watcher's rename events) is sure to
    // be the trigger; either way the new limit must arrive.
    std::fs::write(&path, config(9)).expect("write");
    signal(&server.child, "HUP");
    let started = Instant::now();
    while !get(server.addr, "/api/hello").contains("q=9;w=3600") {
        assert!(started.elapsed() < Duration::from_secs(10), "not reloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_drains_and_exits_cleanly_within_the_deadline() {
    let mut server = start(&["--shutdown-timeout", "5"]);
    // A client holding a keep-alive connection open must not keep the server alive past the
    // deadline, and a request answered before the signal is complete.
    let mut idle = TcpStream::connect(server.addr).expect("connect");
    write!(idle, "GET /health HTTP/1.1\r\nHost: test\r\n\r\n").expect("send");
    let mut buffer = [0u8; 512];
    let read = idle.read(&mut buffer).expect("read");
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));

    let asked = Instant::now();
    signal(&server.child, "TERM");
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(8),
            "still running after the deadline"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "still accepting after exit"
    );
}
