//! Resident memory of a process, from `/proc/<pid>/status` (Linux): what the load tool reports
//! of each api-server instance and what the soak program watches in itself.

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resident {
    /// Now (`VmRSS`).
    pub rss_kib: u64,
    /// At its peak so far (`VmHWM`).
    pub hwm_kib: u64,
}

impl Resident {
    /// This process's, if it can be read.
    pub fn own() -> Option<Self> {
        Self::read("/proc/self/status")
    }

    /// Process `pid`'s, if it can be read (it may have exited).
    pub fn of(pid: u32) -> Option<Self> {
        Self::read(&format!("/proc/{pid}/status"))
    }

    fn read(path: &str) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(path).ok()?)
    }

    /// Reads the text of `/proc/<pid>/status`.
    fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        Some(Self {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_and_vm_hwm_are_read_in_kib() {
        let status =
            "Name:\tapi-server\nVmPeak:\t  200000 kB\nVmHWM:\t   23456 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(
            Resident::parse(status),
            Some(Resident {
                rss_kib: 12345,
                hwm_kib: 23456
            })
        );
        assert_eq!(Resident::parse("Name:\tx\n"), None);
        assert!(Resident::own().is_some_and(|r| r.rss_kib > 0 && r.hwm_kib >= r.rss_kib));
    }
}
