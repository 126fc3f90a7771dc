//! A throwaway Redis Cluster made of local `redis-server` nodes.
//!
//! [`RedisCluster::start`] launches the nodes (each one a [`RedisServer`] whose
//! client port and bus port, `port + 10000`, are both free), joins them with
//! `redis-cli --cluster create`, and waits until every node reports
//! `cluster_state:ok`, replicas are linked to their masters and
//! `redis-cli --cluster check` confirms that all 16384 slots are covered.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::server::RedisServer;
use crate::tools;

/// Deadline for `redis-cli --cluster create`.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for the cluster to become healthy after creation.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Redis Cluster on 127.0.0.1. Dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    masters: usize,
    scratch: TempDir,
}

/// The replication role of a node, as reported by `ROLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Master,
    /// A replica and whether its link to the master is `connected`.
    Replica {
        linked: bool,
    },
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes, creates the cluster
    /// and waits (up to ~30 s) until it is healthy. Redis requires
    /// `masters >= 3`. Panics with diagnostics (redis-cli output, node logs)
    /// on failure.
    pub fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        assert!(
            masters >= 3,
            "Redis Cluster needs at least 3 masters (asked for {masters})"
        );
        tools::require_binary("redis-server");
        tools::require_binary("redis-cli");
        let total = masters * (1 + replicas_per_master);
        let nodes: Vec<RedisServer> = thread::scope(|s| {
            let handles: Vec<_> = (0..total)
                .map(|_| s.spawn(RedisServer::start_cluster_node))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let scratch = tempfile::Builder::new()
            .prefix("ratelimit-cluster-")
            .tempdir()
            .expect("cannot create a temporary directory for redis-cli");
        let cluster = RedisCluster {
            nodes,
            masters,
            scratch,
        };

        let mut create = Command::new("redis-cli");
        create
            .arg("--cluster")
            .arg("create")
            .args(cluster.addrs())
            .arg("--cluster-replicas")
            .arg(replicas_per_master.to_string())
            .arg("--cluster-yes");
        let out = tools::run_with_timeout(create, cluster.scratch.path(), CREATE_TIMEOUT);
        if !out.success() {
            panic!(
                "`redis-cli --cluster create` failed ({}):\n{}\n{}",
                out.status
                    .map_or_else(|| "timed out".to_owned(), |s| s.to_string()),
                out.output,
                cluster.node_logs()
            );
        }
        cluster.wait_healthy();
        cluster
    }

    /// Every node, masters and replicas, in creation order. Each is a full
    /// [`RedisServer`] handle: `port()`, `kill()`, `restart()`, ...
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `"127.0.0.1:<port>"` of every node.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::addr).collect()
    }

    /// `"redis://127.0.0.1:<port>"` of every node (seed nodes for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The running nodes that currently are masters (asked with `ROLE`, so
    /// this follows failovers).
    pub fn masters(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && role(n) == Some(Role::Master))
            .collect()
    }

    /// The running nodes that currently are replicas.
    pub fn replicas(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && matches!(role(n), Some(Role::Replica { .. })))
            .collect()
    }

    /// URLs of the current masters: what [`crate::keys_without_ttl`] and
    /// [`crate::all_keys`] want for a cluster.
    pub fn master_urls(&self) -> Vec<String> {
        self.masters().into_iter().map(RedisServer::url).collect()
    }

    /// A `redis::cluster::ClusterClient` seeded with every node.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.urls())
            .expect("cluster client from redis://127.0.0.1:<port> URLs")
    }

    /// Waits until every *running* node reports `cluster_state:ok` (e.g.
    /// after killing or restarting nodes); panics after `timeout`.
    pub fn wait_for_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let pending: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .filter(|n| !cluster_info(n).contains("cluster_state:ok"))
                .map(RedisServer::addr)
                .collect();
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster nodes {pending:?} did not reach cluster_state:ok within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Directory holding redis-cli scratch files.
    pub(crate) fn scratch_dir(&self) -> &std::path::Path {
        self.scratch.path()
    }

    /// Startup health check: all nodes ok and agreeing, replicas linked,
    /// `redis-cli --cluster check` clean.
    fn wait_healthy(&self) {
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        let total = self.nodes.len();
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.health_problem(total) {
                None => return,
                Some(problem) => last = problem,
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the redis cluster did not become healthy within {HEALTHY_TIMEOUT:?}: {last}\n{}",
            self.node_logs()
        );
    }

    /// `None` when healthy, otherwise a description of what is not yet right.
    fn health_problem(&self, total: usize) -> Option<String> {
        for node in &self.nodes {
            let info = cluster_info(node);
            let expected = [
                "cluster_state:ok".to_owned(),
                "cluster_slots_assigned:16384".to_owned(),
                format!("cluster_known_nodes:{total}"),
            ];
            if let Some(missing) = expected.iter().find(|e| !info.contains(e.as_str())) {
                return Some(format!(
                    "{} lacks `{missing}`; CLUSTER INFO:\n{info}",
                    node.addr()
                ));
            }
        }
        let roles: Vec<Option<Role>> = self.nodes.iter().map(role).collect();
        let masters = roles.iter().filter(|r| **r == Some(Role::Master)).count();
        if masters != self.masters {
            return Some(format!(
                "expected {} masters, roles are {roles:?}",
                self.masters
            ));
        }
        if roles
            .iter()
            .any(|r| *r == Some(Role::Replica { linked: false }) || r.is_none())
        {
            return Some(format!("not all replicas are linked: {roles:?}"));
        }
        let mut check = Command::new("redis-cli");
        check.args(["--cluster", "check"]).arg(self.nodes[0].addr());
        let out = tools::run_with_timeout(check, self.scratch.path(), Duration::from_secs(10));
        if !out.success() || !out.output.contains("[OK] All 16384 slots covered") {
            return Some(format!("`redis-cli --cluster check` says:\n{}", out.output));
        }
        None
    }

    fn node_logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- log of node {} ---\n{}", n.addr(), n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Kill everything first so no node spends time failing over.
        for node in &self.nodes {
            node.kill();
        }
    }
}

/// `CLUSTER INFO` of `node`, or an empty string if it cannot be reached.
fn cluster_info(node: &RedisServer) -> String {
    tools::query(&node.url(), redis::cmd("CLUSTER").arg("INFO")).unwrap_or_default()
}

/// The node's `ROLE`, or `None` if it cannot be reached.
fn role(node: &RedisServer) -> Option<Role> {
    let reply: Vec<redis::Value> = tools::query(&node.url(), &redis::cmd("ROLE")).ok()?;
    let kind: String = redis::from_redis_value_ref(reply.first()?).ok()?;
    match kind.as_str() {
        "master" => Some(Role::Master),
        "slave" => {
            let state: String = redis::from_redis_value_ref(reply.get(3)?).ok()?;
            Some(Role::Replica {
                linked: state == "connected",
            })
        }
        _ => None,
    }
}
