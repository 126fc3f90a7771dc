//! Spawning child processes so that they never outlive the process that
//! started them.
//!
//! Every process of the harness (redis servers, busy loops) is spawned here,
//! and so are those of the measuring tools in `load/` (api-server instances,
//! soak phases): from one dedicated thread that lives as long as the process.
//! Two independent safety nets make sure the children die with their parent,
//! even when a test panics or the binary is killed:
//!
//! * each child gets `PR_SET_PDEATHSIG = SIGKILL`. The kernel fires it when
//!   the *thread* that forked the child exits, which is why the forking is
//!   done by the long-lived spawner thread rather than by the (short-lived)
//!   thread that asked for the process;
//! * every child PID is kept in a global list, and a `libc::atexit` handler
//!   SIGKILLs whatever is still listed (libtest finishes through
//!   `std::process::exit`, which runs atexit handlers). The same handler
//!   removes the temporary directories of servers that are never dropped
//!   (the shared ones, stored in statics).

// This is the only module of the crate that needs `unsafe`: `pre_exec`,
// `prctl`, `atexit`, `kill` and `waitpid` are FFI calls with no safe wrapper
// in std. Each unsafe block is small and commented.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock, PoisonError};
use std::thread;

/// A spawn request: the command to run and where to send the result.
type Request = (Command, mpsc::Sender<io::Result<Child>>);

/// PIDs of live children, killed by the atexit handler.
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Directories removed by the atexit handler (belonging to never-dropped servers).
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Channel to the spawner thread.
static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
static ATEXIT: Once = Once::new();

/// Spawns `cmd` from the long-lived spawner thread, with `PR_SET_PDEATHSIG`
/// set to SIGKILL, and registers its PID for the atexit handler. Once the
/// child has been waited for, [`forget`] it (or let [`kill`] do both).
///
/// ```no_run
/// use std::process::Command;
///
/// let mut sleep = Command::new("sleep");
/// sleep.arg("60");
/// let mut child = ratelimit_tests::reaper::spawn(sleep)?;
/// // ... this process may now panic or be killed: `sleep` dies with it ...
/// ratelimit_tests::reaper::kill(&mut child);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn spawn(cmd: Command) -> io::Result<Child> {
    install_atexit();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("reaper-spawner".into())
            .spawn(move || spawner_loop(rx))
            .expect("failed to start the reaper's spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .expect("the reaper's spawner thread is gone");
    reply_rx
        .recv()
        .expect("the reaper's spawner thread dropped a request")
}

/// Body of the spawner thread. It never returns while the process lives: the
/// sender is kept in a static, so `recv` never fails.
fn spawner_loop(rx: mpsc::Receiver<Request>) {
    let parent = libc::pid_t::try_from(std::process::id()).expect("PID does not fit pid_t");
    while let Ok((mut cmd, reply)) = rx.recv() {
        // SAFETY: the closure runs in the forked child before `exec`; it only
        // calls `prctl` and `getppid`, which are async-signal-safe, and it
        // touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() != parent {
                    return Err(io::Error::other("parent died before exec"));
                }
                Ok(())
            });
        }
        let result = cmd.spawn();
        if let Ok(child) = &result {
            lock(&PIDS).push(child.id());
        }
        // The requester may have given up; nothing to do then (PDEATHSIG and
        // the atexit handler still cover the child).
        let _ = reply.send(result);
    }
}

/// Removes `pid` from the atexit list; call it once the child has been waited for.
pub fn forget(pid: u32) {
    lock(&PIDS).retain(|&p| p != pid);
}

/// SIGKILLs a child of [`spawn`], waits for it and [`forget`]s it. A child that already
/// exited is only reaped.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
    forget(child.id());
}

/// Registers a directory to delete when the process exits.
pub(crate) fn remove_at_exit(dir: PathBuf) {
    install_atexit();
    lock(&DIRS).push(dir);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn install_atexit() {
    ATEXIT.call_once(|| {
        // SAFETY: `kill_children` is an `extern "C" fn()` that never unwinds.
        let rc = unsafe { libc::atexit(kill_children) };
        assert_eq!(rc, 0, "libc::atexit failed to register the redis reaper");
    });
}

/// The atexit handler: SIGKILL and reap every registered child, then remove
/// the registered directories. Must not panic (it is called from C).
extern "C" fn kill_children() {
    let pids: Vec<u32> = match PIDS.try_lock() {
        Ok(g) => g.clone(),
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().clone(),
        // Another thread holds the lock at exit: PDEATHSIG still kills them.
        Err(std::sync::TryLockError::WouldBlock) => Vec::new(),
    };
    for &pid in &pids {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            continue;
        };
        // SAFETY: plain syscalls on PIDs of our own unreaped children (a PID
        // is removed from the list only after it has been waited for, so it
        // cannot have been reused by an unrelated process).
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    let dirs: Vec<PathBuf> = match DIRS.try_lock() {
        Ok(g) => g.clone(),
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().clone(),
        Err(std::sync::TryLockError::WouldBlock) => Vec::new(),
    };
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
