//! Small process and protocol helpers shared by the server and cluster code:
//! locating the redis binaries, running `redis-cli` with a deadline, and
//! talking to a node with short timeouts.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Panics with instructions if `name` is not an executable on `PATH`.
pub(crate) fn require_binary(name: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| is_executable(&dir.join(name))));
    assert!(
        found,
        "`{name}` was not found on PATH. The integration tests need a real Redis \
         (redis-server and redis-cli): run `scripts/test.sh`, which installs the \
         `redis-server` and `redis-tools` packages and then runs the tests."
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Output of a command run with [`run_with_timeout`].
pub(crate) struct CmdOutput {
    /// Exit status; `None` if the command was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// Captured stdout and stderr, concatenated.
    pub output: String,
}

impl CmdOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `cmd` with stdout/stderr captured in files under `scratch`, killing
/// it if it has not finished within `timeout`.
pub(crate) fn run_with_timeout(mut cmd: Command, scratch: &Path, timeout: Duration) -> CmdOutput {
    let out_path = scratch.join(format!("cmd-{}.out", unique_suffix()));
    let out = File::create(&out_path).expect("cannot create a file for command output");
    let err = out
        .try_clone()
        .expect("cannot clone the command output file");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    CmdOutput { status, output }
}

fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Sends an inline command (e.g. `PING`) over a fresh TCP connection and
/// returns the first reply chunk, or `None` if the node is unreachable.
pub(crate) fn raw_command(port: u16, line: &str) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(250)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(format!("{line}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Whether the node on `port` answers `PING` with `+PONG`.
pub(crate) fn answers_ping(port: u16) -> bool {
    // A server that requires AUTH answers with -NOAUTH: it is up all the same.
    raw_command(port, "PING").is_some_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
}

/// Opens a synchronous connection with short connect/read/write timeouts.
pub(crate) fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(url)?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(conn)
}

/// Runs one command on the node at `url` over a fresh connection.
pub(crate) fn query<T: redis::FromRedisValue>(
    url: &str,
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    cmd.query(&mut connect(url)?)
}
