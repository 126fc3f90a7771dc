//! What a run measured, as plain data (serialised as JSON with `--json`) and as Markdown
//! tables ready to paste into `docs/Performance.md`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::instances::LimiterCounters;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run.
    pub setup: Setup,
    /// Requests sent in the measured phase (answered or failed).
    pub requests: u64,
    /// Length of the measured phase, from its first request to its last answer.
    pub seconds: f64,
    /// `requests / seconds`.
    pub requests_per_sec: f64,
    /// Answers by status.
    pub status: Statuses,
    /// Latency of answered requests.
    pub latency: Latency,
    /// Commands each Redis node ran during the measured phase (empty without Redis).
    pub redis: Vec<NodeCommands>,
    /// The instances and their resident memory.
    pub instances: Vec<InstanceMemory>,
    /// The limiters' own counters during the measured phase, summed over the instances.
    pub limiter: LimiterCounters,
    /// What went wrong: any answer but 200 or 429, any request without an answer, no request
    /// at all. A run with failures ends the tool with a non-zero status.
    pub failures: Vec<String>,
}

/// The parameters of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// Which Redis, in words.
    pub redis: String,
    /// api-server instances.
    pub instances: usize,
    /// Client connections, spread round-robin over the instances.
    pub connections: usize,
    /// Length of the measured phase asked for, in seconds.
    pub duration_secs: f64,
    /// Unmeasured load before it, in seconds.
    pub warmup_secs: f64,
    /// Distinct keys.
    pub keys: u64,
    /// Of which in the free tier (a small limit: mostly denied).
    pub free_keys: u64,
    /// Fixed arrival rate in requests a second, if one was asked for.
    pub rate: Option<u64>,
}

/// Answers by status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Statuses {
    /// `200 OK`: allowed.
    pub ok: u64,
    /// `429 Too Many Requests`: denied.
    pub too_many_requests: u64,
    /// Any other status, by code.
    pub other: BTreeMap<u16, u64>,
    /// Requests without an answer (connection refused or closed, timeout).
    pub errors: u64,
    /// A few of the errors' messages.
    pub error_samples: Vec<String>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Highest.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

/// What one Redis node ran during the measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct NodeCommands {
    /// The node's URL.
    pub node: String,
    /// Every command but `INFO`, counting those run inside scripts as Redis does.
    pub commands: u64,
    /// `commands / seconds`.
    pub commands_per_sec: f64,
    /// `EVALSHA` calls that succeeded: decisions made in Redis.
    pub evalsha: u64,
    /// `evalsha / seconds`.
    pub evalsha_per_sec: f64,
}

/// One instance and its resident memory.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceMemory {
    /// Where it listened.
    pub addr: String,
    /// Its process id.
    pub pid: u32,
    /// `VmRSS` once ready, before any load, in KiB (`None` where `/proc` cannot be read).
    pub rss_start_kib: Option<u64>,
    /// `VmRSS` after the measured phase, in KiB.
    pub rss_end_kib: Option<u64>,
}

impl Report {
    /// Answers of any kind (200, 429, other statuses), without the errors.
    pub fn answered(&self) -> u64 {
        self.status.ok + self.status.too_many_requests + self.status.other.values().sum::<u64>()
    }

    /// Commands of every Redis node together.
    pub fn redis_commands(&self) -> u64 {
        self.redis.iter().map(|n| n.commands).sum()
    }

    /// The report as Markdown: a heading naming the setup, then tables.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_markdown(&mut out);
        out
    }

    fn write_markdown(&self, out: &mut String) -> std::fmt::Result {
        let s = &self.setup;
        let rate = match s.rate {
            Some(rate) => format!(", fixed rate {rate} req/s"),
            None => String::new(),
        };
        writeln!(
            out,
            "#### {} api-server instance{}, Redis {}: {} connections, {} s{rate}, {} keys ({} free tier)\n",
            s.instances,
            if s.instances == 1 { "" } else { "s" },
            s.redis,
            s.connections,
            s.duration_secs,
            s.keys,
            s.free_keys,
        )?;
        let other: u64 = self.status.other.values().sum();
        writeln!(
            out,
            "| requests/s | requests | 200 | 429 | other | errors | p50 | p99 | p99.9 | max |"
        )?;
        writeln!(
            out,
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        writeln!(
            out,
            "| {:.0} | {} | {} ({}) | {} ({}) | {other} | {} | {} | {} | {} | {} |",
            self.requests_per_sec,
            self.requests,
            self.status.ok,
            percent(self.status.ok, self.requests),
            self.status.too_many_requests,
            percent(self.status.too_many_requests, self.requests),
            self.status.errors,
            micros(self.latency.p50_us),
            micros(self.latency.p99_us),
            micros(self.latency.p999_us),
            micros(self.latency.max_us),
        )?;
        if !self.redis.is_empty() {
            writeln!(
                out,
                "\n| Redis node | commands/s (with those run by scripts) | EVALSHA/s |"
            )?;
            writeln!(out, "| --- | ---: | ---: |")?;
            for node in &self.redis {
                writeln!(
                    out,
                    "| {} | {:.0} | {:.0} |",
                    node.node, node.commands_per_sec, node.evalsha_per_sec
                )?;
            }
            if self.redis.len() > 1 {
                let commands: f64 = self.redis.iter().map(|n| n.commands_per_sec).sum();
                let evalsha: f64 = self.redis.iter().map(|n| n.evalsha_per_sec).sum();
                writeln!(out, "| all | {commands:.0} | {evalsha:.0} |")?;
            }
        }
        writeln!(out, "\n| instance | RSS at start | RSS at end |")?;
        writeln!(out, "| --- | ---: | ---: |")?;
        for instance in &self.instances {
            writeln!(
                out,
                "| {} (pid {}) | {} | {} |",
                instance.addr,
                instance.pid,
                kib(instance.rss_start_kib),
                kib(instance.rss_end_kib),
            )?;
        }
        writeln!(out)?;
        if !self.redis.is_empty() {
            let evalsha: u64 = self.redis.iter().map(|n| n.evalsha).sum();
            writeln!(
                out,
                "Decisions made in Redis (EVALSHA) per request: {:.3}.",
                ratio(evalsha, self.requests)
            )?;
        }
        writeln!(
            out,
            "Answered by the local cache: {} ({}); by the fallback: {}; Redis errors: {}.",
            self.limiter.cache_hits,
            percent(self.limiter.cache_hits, self.requests),
            self.limiter.fallback_decisions,
            self.limiter.redis_errors,
        )?;
        if !self.failures.is_empty() {
            writeln!(out, "\n**Failures:**\n")?;
            for failure in &self.failures {
                writeln!(out, "- {failure}")?;
            }
        }
        Ok(())
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn percent(part: u64, whole: u64) -> String {
    format!("{:.1}%", 100.0 * ratio(part, whole))
}

/// `412 µs` below a millisecond, `1.23 ms` above.
fn micros(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else {
        format!("{:.2} ms", us as f64 / 1000.0)
    }
}

fn kib(value: Option<u64>) -> String {
    match value {
        Some(kib) => format!("{:.1} MiB", kib as f64 / 1024.0),
        None => "n/a".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_has_every_table_and_the_failures() {
        let report = Report {
            setup: Setup {
                redis: "standalone".into(),
                instances: 2,
                connections: 8,
                duration_secs: 2.0,
                warmup_secs: 0.0,
                keys: 100,
                free_keys: 10,
                rate: None,
            },
            requests: 1000,
            seconds: 2.0,
            requests_per_sec: 500.0,
            status: Statuses {
                ok: 900,
                too_many_requests: 99,
                other: BTreeMap::from([(500, 1)]),
                ..Statuses::default()
            },
            latency: Latency {
                p50_us: 412,
                p99_us: 1234,
                p999_us: 5000,
                max_us: 9000,
                mean_us: 500.0,
            },
            redis: vec![NodeCommands {
                node: "redis://127.0.0.1:6379".into(),
                commands: 900,
                commands_per_sec: 450.0,
                evalsha: 890,
                evalsha_per_sec: 445.0,
            }],
            instances: vec![InstanceMemory {
                addr: "127.0.0.1:4000".into(),
                pid: 42,
                rss_start_kib: Some(10240),
                rss_end_kib: None,
            }],
            limiter: LimiterCounters::default(),
            failures: vec!["1 answer with status 500".into()],
        };
        let md = report.to_markdown();
        assert!(md.contains("| 500 | 1000 | 900 (90.0%) | 99 (9.9%) | 1 | 0 | 412 µs | 1.23 ms | 5.00 ms | 9.00 ms |"), "{md}");
        assert!(
            md.contains("| redis://127.0.0.1:6379 | 450 | 445 |"),
            "{md}"
        );
        assert!(
            md.contains("| 127.0.0.1:4000 (pid 42) | 10.0 MiB | n/a |"),
            "{md}"
        );
        assert!(
            md.contains("Decisions made in Redis (EVALSHA) per request: 0.890"),
            "{md}"
        );
        assert!(md.contains("- 1 answer with status 500"), "{md}");
        assert_eq!(report.answered(), 1000);
    }
}
