//! The `api-server` binary keeps operator routes off the public listener: `/metrics`,
//! `/admin/*` and the detailed `/ready` answer on `--admin-listen` only; the public listener
//! has the API, `/health` and a bare `/ready`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

fn wait_for(addr: SocketAddr) {
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing listens on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Status line and body of `GET path`.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
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
    let (public, admin) = (free_addr(), free_addr());
    let child = Command::new(env!("CARGO_BIN_EXE_api-server"))
        .args(["--listen", &public.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--check-interval", "1"])
        .env_remove("RATELIMIT_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start api-server");
    let _running = Running { child };
    wait_for(public);
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

    let child = Command::new(env!("CARGO_BIN_EXE_api-server"))
        .args(["--listen", &public.to_string()])
        .args(["--admin-listen", "none"])
        .env_remove("RATELIMIT_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start api-server");
    let _running = Running { child };
    wait_for(public);
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
