//! Spawning child processes that cannot outlive the load tool.
//!
//! Dropping an [`Instance`](crate::instances) kills its process, which covers a normal end, an
//! error and a panic that unwinds. For the rest (the tool killed by a signal it cannot catch,
//! an abort), every child is started with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills it
//! when the tool dies. The kernel fires that signal when the *thread* that forked the child
//! ends, not the process, so children are forked by one thread that lives as long as the
//! process (a runtime's blocking threads come and go). Each child also gets its own process
//! group, so a Ctrl-C in the terminal reaches only the tool, which then stops its children
//! in order.

// `pre_exec`, `prctl` and `getppid` have no safe wrapper in std; the one unsafe block is
// small and commented.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;

/// A spawn request: the command and where to send the result.
type Request = (Command, mpsc::Sender<io::Result<Child>>);

/// The channel to the spawner thread, started on first use.
static SPAWNER: OnceLock<io::Result<mpsc::Sender<Request>>> = OnceLock::new();

/// Spawns `cmd` in its own process group, to be killed if this process dies.
pub(crate) fn spawn(mut cmd: Command) -> io::Result<Child> {
    cmd.process_group(0);
    let spawner = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            thread::Builder::new()
                .name("ratelimit-load-spawner".into())
                .spawn(move || spawner_loop(rx))
                .map(|_| tx)
        })
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start the spawner thread: {e}")))?;
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread dropped a request"))?
}

/// Body of the spawner thread: it never returns while the process lives, because the sender
/// is kept in a static.
fn spawner_loop(rx: mpsc::Receiver<Request>) {
    let parent = std::process::id();
    while let Ok((mut cmd, reply)) = rx.recv() {
        #[cfg(target_os = "linux")]
        // SAFETY: the closure runs in the forked child before `exec`. It calls only `prctl` and
        // `getppid`, which are async-signal-safe, and touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then nobody would kill us.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::other("the load tool died before exec"));
                }
                Ok(())
            });
        }
        #[cfg(not(target_os = "linux"))]
        let _ = parent;
        // The requester may have given up; the child is then still killed when we die.
        let _ = reply.send(cmd.spawn());
    }
}
