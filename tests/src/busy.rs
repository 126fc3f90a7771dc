//! Processes that keep the CPUs busy, so a test can show that a guarantee holds on a loaded
//! machine and not only on a quiet one.

use std::process::{Child, Command};

use crate::reaper;

/// `n` shell processes spinning in a busy loop, competing with the test for the CPUs; killed
/// when dropped (and with the test binary, like every process of the harness).
///
/// ```no_run
/// let _hogs = ratelimit_tests::BusyLoops::start(2);
/// // ... the burst under test ...
/// ```
#[derive(Debug)]
pub struct BusyLoops {
    children: Vec<Child>,
}

impl BusyLoops {
    /// Starts `n` busy loops.
    pub fn start(n: usize) -> Self {
        let children = (0..n)
            .map(|_| {
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg("while :; do :; done");
                reaper::spawn(cmd).expect("starting a busy loop")
            })
            .collect();
        Self { children }
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        for child in &mut self.children {
            reaper::kill(child);
        }
    }
}
