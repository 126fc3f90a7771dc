//! A throwaway `redis-server` process on a free loopback port.
//!
//! [`RedisServer`] runs a real redis with no persistence in its own temporary
//! directory, waits until it answers `PING`, and kills it when dropped. All
//! methods take `&self` (the process handle sits behind a mutex), so a server
//! can be shared between tests and tasks, stored in a static, or reached
//! through [`crate::RedisCluster::nodes`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::ports::{ports_are_free, release_port, reserve_port};
use crate::{reaper, tools};

/// How long a freshly spawned server gets to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports to try before giving up on starting a server.
const START_ATTEMPTS: usize = 8;
/// Cluster node timeout passed to cluster nodes, in milliseconds.
pub(crate) const CLUSTER_NODE_TIMEOUT_MS: u64 = 2000;

/// A `redis-server` child process bound to `127.0.0.1:<port>`.
///
/// Started with `--save "" --appendonly no`, so its data lives only in memory:
/// [`restart`](Self::restart) always comes back empty (cluster nodes keep their
/// `nodes.conf`, so they rejoin their cluster with the same identity).
/// Dropping it SIGKILLs the process; if the test binary dies first, the
/// process is killed anyway (see the [crate docs](crate)).
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    cluster: bool,
    extra_args: Vec<String>,
    dir: TempDir,
    child: Mutex<Option<Child>>,
}

/// Why a spawned server did not become ready.
enum NotReady {
    /// The process exited (typically: the port was taken after all).
    Exited(String),
    /// Still running but not answering `PING` by the deadline.
    Timeout,
}

impl RedisServer {
    /// Starts a standalone server on a free port and waits until it answers
    /// `PING`. Panics (with the server's log) if it cannot be started.
    pub fn start() -> RedisServer {
        Self::start_with_args(&[])
    }

    /// Like [`start`](Self::start), appending `args` to the command line
    /// (e.g. `&["--maxmemory", "10mb"]`).
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        Self::launch(args.iter().map(|a| (*a).to_owned()).collect(), false)
    }

    /// Starts a cluster-enabled node (its port and bus port are both free).
    pub(crate) fn start_cluster_node() -> RedisServer {
        Self::launch(Vec::new(), true)
    }

    fn launch(extra_args: Vec<String>, cluster: bool) -> RedisServer {
        tools::require_binary("redis-server");
        let mut failures = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("ratelimit-redis-")
                .tempdir()
                .expect("cannot create a temporary directory for redis-server");
            let server = RedisServer {
                port: reserve_port(cluster),
                cluster,
                extra_args: extra_args.clone(),
                dir,
                child: Mutex::new(None),
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                // Most likely another process took the port between our check
                // and redis binding it: drop this attempt, try a fresh port.
                Err(NotReady::Exited(status)) => {
                    failures.push_str(&format!(
                        "--- attempt on port {} {status}; log:\n{}\n",
                        server.port,
                        server.log()
                    ));
                }
                Err(NotReady::Timeout) => panic!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}\n\
                     --- server log ---\n{}",
                    server.port,
                    server.log()
                ),
            }
        }
        panic!("redis-server failed to start {START_ATTEMPTS} times:\n{failures}")
    }

    /// The TCP port the server listens on (fixed for the server's lifetime).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1:<port>"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `"redis://127.0.0.1:<port>"`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A `redis::Client` for this server (connections are opened lazily).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a redis://127.0.0.1:<port> URL is always valid")
    }

    /// The PID of the running process, or `None` after [`kill`](Self::kill)/[`stop`](Self::stop).
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// The server's temporary directory (its `--dir`: log, `nodes.conf`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far (all runs, including restarts), for diagnostics.
    pub fn log(&self) -> String {
        let mut log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let stdio = std::fs::read_to_string(self.stdio_path()).unwrap_or_default();
        if !stdio.trim().is_empty() {
            log.push_str("--- stdout/stderr ---\n");
            log.push_str(&stdio);
        }
        log
    }

    /// Whether the process is still alive (it may have been killed or crashed).
    pub fn is_running(&self) -> bool {
        let mut child = self.child();
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                if let Some(c) = child.take() {
                    reaper::forget(c.id());
                }
                false
            }
            None => false,
        }
    }

    /// SIGKILLs the process and waits for it to exit. No-op if not running.
    pub fn kill(&self) {
        if let Some(mut c) = self.child().take() {
            reaper::kill(&mut c);
        }
    }

    /// Stops the process gracefully (`SHUTDOWN NOSAVE`), falling back to
    /// SIGKILL after 5 s. No-op if not running.
    pub fn stop(&self) {
        let Some(mut c) = self.child().take() else {
            return;
        };
        let _ = tools::raw_command(self.port, "SHUTDOWN NOSAVE");
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        reaper::kill(&mut c);
    }

    /// Freezes the process with SIGSTOP: it keeps its port and its data, the kernel still
    /// accepts connections on its behalf, but it answers nothing (neither clients nor the
    /// cluster bus) until [`resume`](Self::resume). This is what a stalled host or a long GC
    /// pause looks like to the rest of the cluster. Panics if the server is not running.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP, "SIGSTOP");
    }

    /// Lets a process frozen by [`pause`](Self::pause) run again (SIGCONT). Panics if the
    /// server is not running.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT, "SIGCONT");
    }

    /// Sends `signal` to the running process.
    // Besides the reaper, the only `unsafe` of the crate: `kill(2)` has no wrapper in std.
    #[allow(unsafe_code)]
    fn signal(&self, signal: libc::c_int, name: &str) {
        let child = self.child();
        let pid = child.as_ref().map(Child::id).unwrap_or_else(|| {
            panic!(
                "cannot send {name} to redis-server on port {}: not running",
                self.port
            )
        });
        let pid = libc::pid_t::try_from(pid).expect("a child PID fits pid_t");
        // SAFETY: a plain syscall on the PID of our own child, which cannot have been reaped
        // (and its PID reused) while we hold the lock on its handle.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "{name} to redis-server on port {} (pid {pid}) failed: {}",
            self.port,
            std::io::Error::last_os_error()
        );
    }

    /// Kills the process (if running) and starts a new one on the same port
    /// with the same arguments and no data. Waits until the port is free and
    /// the new process answers `PING`; panics with the log otherwise.
    pub fn restart(&self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            while !ports_are_free(self.port, self.cluster) {
                assert!(
                    Instant::now() < deadline,
                    "port {} (or its cluster bus port) did not become free within {READY_TIMEOUT:?}; \
                     cannot restart redis-server on it",
                    self.port
                );
                thread::sleep(Duration::from_millis(50));
            }
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(NotReady::Exited(_)) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(NotReady::Exited(status)) => panic!(
                    "restarted redis-server on port {} {status}\n--- server log ---\n{}",
                    self.port,
                    self.log()
                ),
                Err(NotReady::Timeout) => panic!(
                    "restarted redis-server on port {} did not answer PING within {READY_TIMEOUT:?}\n\
                     --- server log ---\n{}",
                    self.port,
                    self.log()
                ),
            }
        }
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn stdio_path(&self) -> PathBuf {
        self.dir.path().join("stdio.log")
    }

    /// The command line for this server.
    fn command(&self) -> Command {
        let dir = self.dir.path();
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(self.log_path());
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(dir.join(format!("nodes-{}.conf", self.port)))
                .arg("--cluster-node-timeout")
                .arg(CLUSTER_NODE_TIMEOUT_MS.to_string());
        }
        cmd.args(&self.extra_args);
        cmd
    }

    /// Spawns the process (via the reaper's spawner thread) and waits until it
    /// answers `PING`, it exits, or [`READY_TIMEOUT`] passes (then it is killed).
    fn spawn_and_wait(&self) -> Result<(), NotReady> {
        let mut cmd = self.command();
        let stdio = File::options()
            .create(true)
            .append(true)
            .open(self.stdio_path())
            .expect("cannot create redis-server's stdio log");
        let stderr = stdio.try_clone().expect("cannot clone a file handle");
        cmd.stdin(Stdio::null()).stdout(stdio).stderr(stderr);
        let child = reaper::spawn(cmd).unwrap_or_else(|e| {
            panic!("failed to spawn redis-server: {e} (run scripts/test.sh to install it)")
        });
        *self.child() = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if tools::answers_ping(self.port) {
                // Make sure it is *our* process that answered, not a squatter.
                if self.is_running() {
                    return Ok(());
                }
            }
            {
                let mut guard = self.child();
                let Some(child) = guard.as_mut() else {
                    return Err(NotReady::Exited("exited".into()));
                };
                if let Ok(Some(status)) = child.try_wait() {
                    reaper::forget(child.id());
                    *guard = None;
                    return Err(NotReady::Exited(format!("exited with {status}")));
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(NotReady::Timeout);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        release_port(self.port);
    }
}
