//! The Redis the instances share: a throwaway standalone server or 3-master cluster (from the
//! `ratelimit-tests` harness, killed when dropped or when this process dies), an existing one,
//! or none; the one server the measuring programs (`src/bin/`) run on; and the per-node command
//! counts of `INFO commandstats`.

use std::collections::BTreeMap;
use std::fmt;

use ratelimit_tests::{RedisCluster, RedisServer};
use serde::Serialize;

use crate::error::LoadError;

/// Which Redis the instances share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisChoice {
    /// No Redis: every instance decides in memory, on its own.
    None,
    /// A throwaway standalone `redis-server`, started and stopped by the tool.
    Standalone,
    /// A throwaway Redis Cluster of 3 masters and no replicas, started and stopped by the tool.
    Cluster,
    /// An existing server (one URL) or cluster (several), left running. Command counts are
    /// read from each URL given.
    Urls(Vec<String>),
}

impl fmt::Display for RedisChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none (in memory)"),
            Self::Standalone => f.write_str("standalone"),
            Self::Cluster => f.write_str("cluster (3 masters)"),
            Self::Urls(urls) if urls.len() == 1 => f.write_str("existing server"),
            Self::Urls(urls) => write!(f, "existing cluster ({} nodes)", urls.len()),
        }
    }
}

/// A running Redis (or none), and the nodes whose commands are counted.
pub(crate) struct RedisSetup {
    /// `RATELIMIT_REDIS_URL` for the instances; `None` for in memory.
    pub(crate) url: Option<String>,
    /// The nodes to read `INFO commandstats` from.
    pub(crate) nodes: Vec<String>,
    // Kept only to be dropped (which kills the processes) when the run ends.
    _standalone: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

impl RedisSetup {
    /// Starts what `choice` asks for.
    pub(crate) async fn start(choice: &RedisChoice) -> Result<Self, LoadError> {
        let mut setup = Self {
            url: None,
            nodes: Vec::new(),
            _standalone: None,
            _cluster: None,
        };
        match choice {
            RedisChoice::None => {}
            RedisChoice::Urls(urls) => {
                setup.url = Some(urls.join(","));
                setup.nodes = urls.clone();
            }
            RedisChoice::Standalone => {
                // The harness reports a failure to start by panicking, with the server's log.
                let server = tokio::task::spawn_blocking(RedisServer::start)
                    .await
                    .map_err(|e| LoadError::RedisStart(panic_message(e)))?;
                setup.url = Some(server.url());
                setup.nodes = vec![server.url()];
                setup._standalone = Some(server);
            }
            RedisChoice::Cluster => {
                let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
                    .await
                    .map_err(|e| LoadError::RedisStart(panic_message(e)))?;
                setup.url = Some(cluster.urls().join(","));
                setup.nodes = cluster.master_urls();
                setup._cluster = Some(cluster);
            }
        }
        Ok(setup)
    }

    /// `INFO commandstats` of every node, in the order of `nodes`.
    pub(crate) async fn command_counts(&self) -> Result<Vec<CommandCounts>, LoadError> {
        let mut counts = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            counts.push(CommandCounts::read(node).await?);
        }
        Ok(counts)
    }
}

/// The one standalone Redis a measuring program runs on: the server at a URL given (left
/// running), or a throwaway `redis-server` from the `ratelimit-tests` harness, killed when this
/// is dropped or when the process dies.
pub struct MeasuredRedis(RedisSetup);

impl MeasuredRedis {
    /// The server at `url`, or a throwaway one when `url` is `None`.
    pub async fn start(url: Option<String>) -> Result<Self, LoadError> {
        let choice = match url {
            Some(url) => RedisChoice::Urls(vec![url]),
            None => RedisChoice::Standalone,
        };
        RedisSetup::start(&choice).await.map(Self)
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        // `start` never makes a setup without a URL.
        self.0.url.as_deref().unwrap_or_default()
    }
}

/// One command's line of `INFO commandstats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStat {
    /// Every call, whatever its outcome.
    pub calls: u64,
    /// Calls that ran and returned an error (a script's `NOSCRIPT`, a `redis.error_reply`).
    pub failed_calls: u64,
    /// Calls refused before running (wrong arity, out of memory).
    pub rejected_calls: u64,
    /// Microseconds Redis spent in the calls (a script's: with the commands it ran).
    pub usec: u64,
}

/// `INFO commandstats` of the node at `url`, by lowercase command name (`evalsha`,
/// `script|load`). Redis counts the commands a script runs as well as the call that ran it.
pub async fn commandstats(url: &str) -> Result<BTreeMap<String, CommandStat>, LoadError> {
    let error = |source| LoadError::Redis {
        node: url.to_owned(),
        source,
    };
    let client = redis::Client::open(url).map_err(error)?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(error)?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .map_err(error)?;
    Ok(parse_commandstats(&info))
}

/// Reads lines like `cmdstat_evalsha:calls=12,usec=...,rejected_calls=0,failed_calls=1`.
fn parse_commandstats(info: &str) -> BTreeMap<String, CommandStat> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let stat = CommandStat {
                calls: field("calls"),
                failed_calls: field("failed_calls"),
                rejected_calls: field("rejected_calls"),
                usec: field("usec"),
            };
            Some((name.to_ascii_lowercase(), stat))
        })
        .collect()
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "the harness panicked".to_owned()),
        Err(e) => e.to_string(),
    }
}

/// Commands a node has run since it started, from `INFO commandstats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CommandCounts {
    /// Every command but `INFO` (the tool's own). Redis counts the commands a script runs
    /// (`ZADD`, `TIME`, ...) as well as the `EVALSHA` that ran it.
    pub total: u64,
    /// `EVALSHA` calls that succeeded: one a decision made in Redis. (A call refused with
    /// `NOSCRIPT`, answered by loading the script and calling again, is not counted.)
    pub evalsha: u64,
}

impl CommandCounts {
    /// The counts of the node at `url`, now.
    pub async fn read(url: &str) -> Result<Self, LoadError> {
        commandstats(url).await.map(|stats| Self::count(&stats))
    }

    fn count(stats: &BTreeMap<String, CommandStat>) -> Self {
        let mut counts = Self::default();
        for (name, stat) in stats {
            if name == "evalsha" {
                counts.evalsha += stat
                    .calls
                    .saturating_sub(stat.failed_calls)
                    .saturating_sub(stat.rejected_calls);
            }
            if name != "info" {
                counts.total += stat.calls;
            }
        }
        counts
    }

    /// The commands run between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            total: self.total.saturating_sub(earlier.total),
            evalsha: self.evalsha.saturating_sub(earlier.evalsha),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_count_every_command_but_info() {
        let info = "# Commandstats\r\n\
            cmdstat_evalsha:calls=1003,usec=5000,usec_per_call=5.00,rejected_calls=1,failed_calls=2\r\n\
            cmdstat_script|load:calls=4,usec=40,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_info:calls=7,usec=70,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_ping:calls=2,usec=1,usec_per_call=0.50,rejected_calls=0,failed_calls=0\r\n";
        let stats = parse_commandstats(info);
        assert_eq!(
            stats["script|load"],
            CommandStat {
                calls: 4,
                failed_calls: 0,
                rejected_calls: 0,
                usec: 40,
            }
        );
        assert_eq!(
            CommandCounts::count(&stats),
            CommandCounts {
                total: 1009,
                evalsha: 1000,
            }
        );
        let before = CommandCounts {
            total: 9,
            evalsha: 0,
        };
        assert_eq!(
            CommandCounts::count(&stats).since(before),
            CommandCounts {
                total: 1000,
                evalsha: 1000,
            }
        );
    }
}
