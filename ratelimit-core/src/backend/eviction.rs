//! Whether Redis keeps what the limiter gives it.
//!
//! A Redis with `maxmemory` set and an eviction policy that may pick our keys (every
//! `allkeys-*` policy, and every `volatile-*` one, since each of our keys carries a TTL) drops
//! counts under memory pressure, and a dropped count is a client's quota handed back: a silent
//! fail-open. This reads, on every primary, `maxmemory`, `maxmemory-policy` and the
//! `evicted_keys` counter of `INFO stats`, so that the limiter can say so at start and in its
//! invariants. A managed Redis that refuses `CONFIG GET` is reported as unknown, not as safe.

use std::collections::HashMap;

use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};

use super::connection::Connection;
use super::redis::RedisBackend;
use crate::error::Error;

/// What one primary says about evictions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEviction {
    /// The node (`host:port`; empty for a standalone server).
    pub node: String,
    /// `maxmemory-policy`, or `None` when `CONFIG GET` was refused.
    pub policy: Option<String>,
    /// `maxmemory` in bytes (0: no limit), or `None` when refused.
    pub maxmemory: Option<u64>,
    /// `evicted_keys` since the server started, from `INFO stats`.
    pub evicted_keys: Option<u64>,
}

impl NodeEviction {
    /// Whether this node may evict the limiter's keys: `Some(true)` when it can, `Some(false)`
    /// when it cannot (`noeviction`, or no `maxmemory`), `None` when its settings are unknown.
    pub fn may_evict(&self) -> Option<bool> {
        match (&self.policy, self.maxmemory) {
            (Some(policy), Some(maxmemory)) => Some(maxmemory > 0 && policy != "noeviction"),
            (Some(policy), None) => Some(policy != "noeviction"),
            _ => None,
        }
    }
}

impl RedisBackend {
    /// Reads the eviction settings and counter of every primary (one for a standalone server).
    pub async fn evictions(&self) -> Result<Vec<NodeEviction>, Error> {
        let mut connection = self.connector().get().await?;
        let policies = self
            .on_every_primary(&mut connection, {
                let mut cmd = redis::cmd("CONFIG");
                cmd.arg("GET").arg("maxmemory*");
                cmd
            })
            .await?;
        let infos = self
            .on_every_primary(&mut connection, {
                let mut cmd = redis::cmd("INFO");
                cmd.arg("stats");
                cmd
            })
            .await?;
        let mut nodes: Vec<NodeEviction> = infos
            .into_iter()
            .map(|(node, info)| NodeEviction {
                evicted_keys: info.ok().and_then(|v| info_field(&v, "evicted_keys")),
                policy: None,
                maxmemory: None,
                node,
            })
            .collect();
        for (node, reply) in policies {
            let settings = reply.ok().map(|v| config_pairs(&v)).unwrap_or_default();
            if let Some(entry) = nodes.iter_mut().find(|n| n.node == node) {
                entry.policy = settings.get("maxmemory-policy").cloned();
                entry.maxmemory = settings.get("maxmemory").and_then(|m| m.parse().ok());
            }
        }
        Ok(nodes)
    }

    /// Runs `cmd` on every primary; each node's reply or error, by node name.
    async fn on_every_primary(
        &self,
        connection: &mut Connection,
        cmd: redis::Cmd,
    ) -> Result<Vec<(String, Result<redis::Value, redis::RedisError>)>, Error> {
        self.bounded(async {
            Ok(match connection {
                Connection::Cluster(cluster) => {
                    let routing =
                        RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                    match cluster.route_command(cmd, routing).await {
                        Ok(redis::Value::Map(replies)) => replies
                            .into_iter()
                            .map(|(node, reply)| {
                                let node = match node {
                                    redis::Value::BulkString(b) => {
                                        String::from_utf8_lossy(&b).into_owned()
                                    }
                                    other => format!("{other:?}"),
                                };
                                (node, Ok(reply))
                            })
                            .collect(),
                        Ok(other) => vec![(
                            String::new(),
                            Err(redis::RedisError::from((
                                redis::ErrorKind::Parse,
                                "unexpected reply",
                                format!("{other:?}"),
                            ))),
                        )],
                        Err(e) => vec![(String::new(), Err(e))],
                    }
                }
                standalone => {
                    vec![(
                        String::new(),
                        cmd.query_async::<redis::Value>(standalone).await,
                    )]
                }
            })
        })
        .await
    }
}

/// `CONFIG GET` pairs as a map.
fn config_pairs(value: &redis::Value) -> HashMap<String, String> {
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match value {
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|pair| Some((text(pair.first()?)?, text(pair.get(1)?)?)))
            .collect(),
        redis::Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        _ => HashMap::new(),
    }
}

/// A numeric field of an `INFO` reply.
fn info_field(value: &redis::Value, field: &str) -> Option<u64> {
    let text = match value {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text.clone(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_noeviction_or_no_maxmemory_keeps_every_key() {
        let node = |policy: Option<&str>, maxmemory: Option<u64>| NodeEviction {
            node: String::new(),
            policy: policy.map(str::to_owned),
            maxmemory,
            evicted_keys: Some(0),
        };
        assert_eq!(
            node(Some("noeviction"), Some(1 << 20)).may_evict(),
            Some(false)
        );
        assert_eq!(node(Some("allkeys-lru"), Some(0)).may_evict(), Some(false));
        for policy in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-ttl",
        ] {
            assert_eq!(node(Some(policy), Some(1 << 20)).may_evict(), Some(true));
        }
        assert_eq!(node(None, None).may_evict(), None);
    }

    #[test]
    fn info_fields_are_read() {
        let info = redis::Value::BulkString(
            b"# Stats\r\nexpired_keys:3\r\nevicted_keys:1646\r\n".to_vec(),
        );
        assert_eq!(info_field(&info, "evicted_keys"), Some(1646));
        assert_eq!(info_field(&info, "missing"), None);
        // RESP3 servers answer INFO as a verbatim or simple string.
        let verbatim = redis::Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text: "evicted_keys:7\r\n".to_owned(),
        };
        assert_eq!(info_field(&verbatim, "evicted_keys"), Some(7));
        let simple = redis::Value::SimpleString("evicted_keys:8".to_owned());
        assert_eq!(info_field(&simple, "evicted_keys"), Some(8));
        assert_eq!(info_field(&redis::Value::Nil, "evicted_keys"), None);
    }

    #[test]
    fn config_pairs_are_read_from_arrays_and_maps() {
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let expected = HashMap::from([
            ("maxmemory".to_owned(), "0".to_owned()),
            ("maxmemory-policy".to_owned(), "noeviction".to_owned()),
        ]);
        // RESP2: a flat array of names and values; an odd trailing name is dropped.
        let array = redis::Value::Array(vec![
            bulk("maxmemory"),
            bulk("0"),
            bulk("maxmemory-policy"),
            redis::Value::SimpleString("noeviction".to_owned()),
            bulk("dangling"),
        ]);
        assert_eq!(config_pairs(&array), expected);
        // RESP3: a map.
        let map = redis::Value::Map(vec![
            (bulk("maxmemory"), bulk("0")),
            (bulk("maxmemory-policy"), bulk("noeviction")),
            (bulk("ignored"), redis::Value::Int(1)),
        ]);
        assert_eq!(config_pairs(&map), expected);
        assert!(config_pairs(&redis::Value::Nil).is_empty());
    }
}
