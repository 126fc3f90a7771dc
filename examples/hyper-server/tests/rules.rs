//! The `hyper-server` binary over real HTTP: the demo configuration's `rules:` apply in a plain
//! hyper + tower stack (they used to be silently ignored there: every request got the
//! top-level 60 a minute).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Running {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Running {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let child = Command::new(env!("CARGO_BIN_EXE_hyper-server"))
        .args(["--listen", &addr.to_string()])
        .env_remove("RATELIMIT_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hyper-server");
    let running = Running { child, addr };
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "hyper-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

/// Status and headers of `method target`, sent byte for byte.
fn send(addr: SocketAddr, method: &str, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read");
    let head = raw
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw:?}"));
    (status, head)
}

fn policy(head: &str) -> Option<&str> {
    head.lines()
        .find_map(|line| line.strip_prefix("ratelimit-policy: "))
}

#[test]
fn the_demo_rules_apply_in_a_plain_hyper_stack() {
    let server = start();
    // `hello`: 10 a minute, GET and HEAD alike.
    for i in 0..6 {
        let (status, head) = send(server.addr, "GET", "/api/hello");
        assert_eq!(status, 200, "request {i}: {head}");
        assert_eq!(policy(&head), Some("\"hello-1m\";q=10;w=60"), "{head}");
    }
    for i in 0..4 {
        let (status, head) = send(server.addr, "HEAD", "/api/hello");
        assert_eq!(status, 200, "HEAD {i}: {head}");
    }
    let (status, head) = send(server.addr, "HEAD", "/api/hello");
    assert_eq!(status, 429, "{head}");
    let (status, _) = send(server.addr, "GET", "/api/hello");
    assert_eq!(status, 429);

    // `users`: two windows; a percent-encoded id is still one segment.
    let (status, head) = send(server.addr, "GET", "/api/users/%37");
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        policy(&head),
        Some("\"users-1m\";q=30;w=60, \"users-1h\";q=500;w=3600"),
        "{head}"
    );

    // `orders`: POST only, cost 2 of 10 permits: 5 requests, counted in requests.
    let (status, head) = send(server.addr, "POST", "/api/orders");
    assert_eq!(status, 201, "{head}");
    assert_eq!(policy(&head), Some("\"orders-1m\";q=5;w=60"), "{head}");
    assert!(head.contains("x-ratelimit-limit: 5"), "{head}");
    assert!(head.contains("x-ratelimit-remaining: 4"), "{head}");

    // Anything else: the top-level 60 a minute, 404s included.
    let (status, head) = send(server.addr, "GET", "/api/hello/");
    assert_eq!(status, 404, "{head}");
    assert_eq!(policy(&head), Some("\"default-1m\";q=60;w=60"), "{head}");
}
