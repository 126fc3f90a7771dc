//! The api-server instances under load: started on free loopback ports (one for the API, one
//! for the operator routes) with the load configuration and the shared Redis, watched until
//! ready, measured (resident memory, the limiter's own counters from `/metrics`), and killed
//! when dropped.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use ratelimit_tests::reaper;
use serde::Serialize;

use crate::error::LoadError;
use crate::http::get_once;
use crate::resident::Resident;

/// How long an instance gets to answer `/health` after it is spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many fresh ports to try when an instance cannot listen on the one it was given.
const START_ATTEMPTS: usize = 5;

/// How to start the instances.
pub(crate) struct Launch<'a> {
    pub(crate) program: &'a Path,
    pub(crate) config: &'a Path,
    /// `RATELIMIT_REDIS_URL`, or `None` for in-memory instances.
    pub(crate) redis_url: Option<&'a str>,
    /// Where the instances' stdout and stderr go.
    pub(crate) log_dir: &'a Path,
}

/// One running api-server process.
pub(crate) struct Instance {
    index: usize,
    addr: SocketAddr,
    /// The operator listener: `/ready`, `/metrics`.
    admin: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Instance {
    /// Starts instance `index` and waits until it answers `/health` and `/ready` says it uses
    /// the backend it was given.
    pub(crate) async fn start(index: usize, launch: &Launch<'_>) -> Result<Self, LoadError> {
        let mut last = None;
        for attempt in 0..START_ATTEMPTS {
            let port = || {
                free_port().map_err(|source| LoadError::Io {
                    what: "finding a free loopback port".into(),
                    source,
                })
            };
            let (addr, admin) = (port()?, port()?);
            let log = launch
                .log_dir
                .join(format!("api-server-{index}.{attempt}.log"));
            let mut instance = Self::spawn(index, (addr, admin), &log, launch)?;
            match instance.wait_ready(launch.redis_url.is_some()).await {
                Ok(()) => return Ok(instance),
                // Another process took the port between our check and the bind: try another.
                Err(e) if instance.exited() && instance.log().contains("cannot listen") => {
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| LoadError::InvalidOptions("no start attempt".into())))
    }

    fn spawn(
        index: usize,
        (addr, admin): (SocketAddr, SocketAddr),
        log: &Path,
        launch: &Launch<'_>,
    ) -> Result<Self, LoadError> {
        let io = |what: &str| {
            let what = format!("{what} {}", log.display());
            move |source| LoadError::Io { what, source }
        };
        let stdout = File::create(log).map_err(io("creating"))?;
        let stderr = stdout.try_clone().map_err(io("opening"))?;
        let mut cmd = Command::new(launch.program);
        cmd.arg("--config")
            .arg(launch.config)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        match launch.redis_url {
            Some(url) => cmd.env("RATELIMIT_REDIS_URL", url),
            None => cmd.env_remove("RATELIMIT_REDIS_URL"),
        };
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        // Its own process group: a Ctrl-C in the terminal reaches only the tool, which then
        // stops its instances in order. The reaper kills it if the tool dies some other way.
        cmd.process_group(0);
        let child = reaper::spawn(cmd).map_err(|source| LoadError::Spawn {
            program: launch.program.to_path_buf(),
            source,
        })?;
        Ok(Self {
            index,
            addr,
            admin,
            child,
            log: log.to_path_buf(),
        })
    }

    async fn wait_ready(&mut self, redis: bool) -> Result<(), LoadError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.exited() {
                return Err(self.error("exited before it was ready".into()));
            }
            if let Ok((StatusCode::OK, _)) = get_once(self.addr, "/health").await {
                break;
            }
            if Instant::now() >= deadline {
                return Err(self.error(format!("no answer on /health within {READY_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, body) = get_once(self.admin, "/ready")
            .await
            .map_err(|e| self.error(format!("/ready: {e}")))?;
        let ready: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.error(format!("/ready did not answer JSON: {e}")))?;
        let expected = if redis { "redis" } else { "memory" };
        if ready["backend"] != expected {
            return Err(self.error(format!(
                "expected the {expected} backend, /ready says {ready}"
            )));
        }
        Ok(())
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB (`VmRSS`), if it can be read.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        Resident::of(self.pid()).map(|r| r.rss_kib)
    }

    /// The limiter's counters, from its `/metrics`.
    pub(crate) async fn counters(&self) -> Result<LimiterCounters, LoadError> {
        let (status, body) = get_once(self.admin, "/metrics")
            .await
            .map_err(|e| self.error(format!("/metrics: {e}")))?;
        if status != StatusCode::OK {
            return Err(self.error(format!("/metrics answered {status}")));
        }
        Ok(LimiterCounters::parse(&String::from_utf8_lossy(&body)))
    }

    /// Whether the process has ended.
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// An error about this instance, with its log.
    pub(crate) fn error(&self, message: String) -> LoadError {
        LoadError::Instance {
            index: self.index,
            addr: self.addr,
            message,
            log: self.log(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SIGKILL: nothing of a limiter's state lives only in the process (Redis holds it).
        reaper::kill(&mut self.child);
    }
}

/// A loopback address that nobody listens on right now.
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()
}

/// Counters of a limiter, read from its Prometheus metrics (all label values summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LimiterCounters {
    /// Decisions answered by the local cache (`ratelimiter_cache_hits_total`).
    pub cache_hits: u64,
    /// Decisions made by the fallback because Redis did not answer
    /// (`ratelimiter_fallback_events_total`).
    pub fallback_decisions: u64,
    /// Failed Redis calls (`ratelimiter_redis_errors_total`).
    pub redis_errors: u64,
}

impl LimiterCounters {
    fn parse(text: &str) -> Self {
        Self {
            cache_hits: sum_samples(text, "ratelimiter_cache_hits_total"),
            fallback_decisions: sum_samples(text, "ratelimiter_fallback_events_total"),
            redis_errors: sum_samples(text, "ratelimiter_redis_errors_total"),
        }
    }

    /// What was counted between `earlier` and `self`.
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            cache_hits: self.cache_hits.saturating_sub(earlier.cache_hits),
            fallback_decisions: self
                .fallback_decisions
                .saturating_sub(earlier.fallback_decisions),
            redis_errors: self.redis_errors.saturating_sub(earlier.redis_errors),
        }
    }

    /// Both counted together.
    pub(crate) fn plus(self, other: Self) -> Self {
        Self {
            cache_hits: self.cache_hits + other.cache_hits,
            fallback_decisions: self.fallback_decisions + other.fallback_decisions,
            redis_errors: self.redis_errors + other.redis_errors,
        }
    }
}

/// The sum of every sample of the metric `name` in the text exposition format.
fn sum_samples(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // `name{labels} value` or `name value`; not a longer name sharing the prefix.
            let value = match rest.chars().next()? {
                '{' => rest.rsplit_once('}')?.1,
                ' ' => rest,
                _ => return None,
            };
            let value: f64 = value.split_whitespace().next()?.parse().ok()?;
            // Counters are whole numbers; the format writes them as such or as floats.
            Some(value.max(0.0).round() as u64)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_every_label_set_and_skip_longer_names() {
        let text = "\
# HELP ratelimiter_cache_hits_total Decisions answered by the cache.
# TYPE ratelimiter_cache_hits counter
ratelimiter_cache_hits_total 42
ratelimiter_cache_hits_total_extra 1000
ratelimiter_fallback_events_total{mode=\"local\"} 3
ratelimiter_fallback_events_total{mode=\"open\"} 4
ratelimiter_redis_errors_total{kind=\"timeout\"} 1.0
# EOF
";
        let counters = LimiterCounters::parse(text);
        assert_eq!(
            counters,
            LimiterCounters {
                cache_hits: 42,
                fallback_decisions: 7,
                redis_errors: 1,
            }
        );
        assert_eq!(counters.since(counters), LimiterCounters::default());
    }
}
