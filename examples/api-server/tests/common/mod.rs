//! What the tests of the `api-server` binary share: free ports, the binary started and waited
//! for (and killed when dropped), and one raw HTTP/1.1 request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary, running until dropped.
pub struct Running {
    pub child: Child,
    /// The public listener.
    pub addr: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An address nothing listens on (bound, then released).
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Waits up to 10 s for something to listen on `addr`.
pub fn wait_for(addr: SocketAddr) {
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing listens on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the binary on a free public address with `args`, without Redis, and waits for it.
pub fn start(args: &[&str]) -> Running {
    // A port just released can be handed out again at once: never an address `args` name.
    let public = loop {
        let candidate = free_addr().to_string();
        if !args.contains(&candidate.as_str()) {
            break candidate;
        }
    };
    start_on(public.parse().expect("an address"), args)
}

/// [`start`] on the public address `addr`. Unless `args` say where, the operator listener
/// takes a free port too: its default, `127.0.0.1:9090`, would be shared by tests running at
/// once, and all but the first server would fail to start.
pub fn start_on(addr: SocketAddr, args: &[&str]) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_api-server"));
    command.args(["--listen", &addr.to_string()]);
    if !args.contains(&"--admin-listen") {
        // A port just released can be handed out again at once: never the public one.
        let admin = loop {
            let candidate = free_addr();
            if candidate != addr {
                break candidate;
            }
        };
        command.args(["--admin-listen", &admin.to_string()]);
    }
    let child = command
        .args(args)
        .env_remove("RATELIMIT_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start api-server");
    let running = Running { child, addr };
    wait_for(addr);
    running
}

/// One HTTP/1.1 request; the raw response.
pub fn get(addr: SocketAddr, path: &str) -> String {
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
    response
}
