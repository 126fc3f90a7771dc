//! A throwaway Redis Cluster made of local `redis-server` nodes.
//!
//! [`RedisCluster::start`] launches the nodes (each one a [`RedisServer`] whose
//! client port and bus port, `port + 10000`, are both free), joins them with
//! `redis-cli --cluster create`, and waits until every node reports
//! `cluster_state:ok`, replicas are linked to their masters and
//! `redis-cli --cluster check` confirms that all 16384 slots are covered.
//!
//! A running cluster can then be reshaped the way operators do it, each step with
//! redis-cli and a deadline, panicking with redis-cli's output and the node logs on failure:
//! [`RedisCluster::add_node`] (`--cluster add-node`), [`RedisCluster::reshard`]
//! (`--cluster reshard`), [`RedisCluster::rebalance`] (`--cluster rebalance`). Who serves what
//! is read back with [`RedisCluster::slot_owners`], [`RedisCluster::owner`],
//! [`RedisCluster::slots_of`], [`RedisCluster::node_id`] and [`RedisCluster::replicas_of`];
//! failovers are followed with [`RedisCluster::is_master`] and
//! [`RedisCluster::wait_for_ok_except`]. [`RedisCluster::error_stats`] counts the redirections
//! (`MOVED`, `ASK`, `TRYAGAIN`) the nodes answered.

use std::collections::BTreeMap;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::server::{CLUSTER_NODE_TIMEOUT_MS, RedisServer};
use crate::tools;

/// Deadline for `redis-cli --cluster create`.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for the cluster to become healthy after creation.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for `redis-cli --cluster add-node`.
const ADD_NODE_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline for `redis-cli --cluster reshard` and `rebalance` (they move keys slot by slot).
const RESHARD_TIMEOUT: Duration = Duration::from_secs(120);
/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

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
        self.wait_for_ok_except(&[], timeout);
    }

    /// The `cluster-node-timeout` every node runs with: how long a node may be unreachable
    /// before the others mark it failed and one of its replicas takes over.
    pub const NODE_TIMEOUT: Duration = Duration::from_millis(CLUSTER_NODE_TIMEOUT_MS);

    /// Waits until every running node except those in `down` (paused ones, say: they would
    /// never answer) reports `cluster_state:ok`; panics with the node logs after `timeout`.
    pub fn wait_for_ok_except(&self, down: &[&RedisServer], timeout: Duration) {
        self.wait_for_nodes(
            timeout,
            |n| {
                !down.iter().any(|d| d.port() == n.port())
                    && !cluster_info(n).contains("cluster_state:ok")
            },
            |pending| {
                format!(
                    "cluster nodes {pending:?} did not reach cluster_state:ok within {timeout:?}"
                )
            },
        );
    }

    /// The address of a running node, for redis-cli to reach the cluster through; panics with
    /// `need` (what needs one) if every node is down.
    fn running_node_addr(&self, need: &str) -> String {
        let running = self.nodes.iter().find(|n| n.is_running());
        running.expect(need).addr()
    }

    /// Polls every 100 ms until no running node is `lagging`; panics after `timeout` with
    /// `failure` (given the addresses of the nodes still lagging) and the node logs.
    fn wait_for_nodes(
        &self,
        timeout: Duration,
        lagging: impl Fn(&RedisServer) -> bool,
        failure: impl Fn(&[String]) -> String,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let pending: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| n.is_running() && lagging(n))
                .map(RedisServer::addr)
                .collect();
            if pending.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!("{}\n{}", failure(&pending), self.node_logs());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node's cluster id (`CLUSTER MYID`), what `--cluster-from`/`--cluster-to` and
    /// `CLUSTER NODES` name it by. Panics if the node does not answer.
    pub fn node_id(&self, node: &RedisServer) -> String {
        tools::query(&node.url(), redis::cmd("CLUSTER").arg("MYID"))
            .unwrap_or_else(|e| panic!("CLUSTER MYID on {} failed: {e}", node.addr()))
    }

    /// Whether `node` answers `ROLE` with `master` (false when it cannot be reached; do not
    /// ask a paused node: the question waits for the read timeout).
    pub fn is_master(&self, node: &RedisServer) -> bool {
        role(node) == Some(Role::Master)
    }

    /// The running nodes whose `ROLE` says they replicate `master`.
    pub fn replicas_of(&self, master: &RedisServer) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.port() != master.port())
            .filter(|n| replica_of(n) == Some(master.port()))
            .collect()
    }

    /// Which master serves each of the 16384 slots, as the first node that answers
    /// `CLUSTER SLOTS` sees it: `owners[slot]` is the master's port, `None` for an unserved
    /// slot. Panics if no running node answers.
    pub fn slot_owners(&self) -> Vec<Option<u16>> {
        let mut failures = Vec::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            match slot_owners_seen_by(node) {
                Ok(owners) => return owners,
                Err(e) => failures.push(format!("{}: {e}", node.addr())),
            }
        }
        panic!("no cluster node answered CLUSTER SLOTS: {failures:?}")
    }

    /// The node serving `slot`, per [`slot_owners`](Self::slot_owners). Panics if the slot is
    /// unserved or served by a node this handle does not know.
    pub fn owner(&self, slot: u16) -> &RedisServer {
        let port = self.slot_owners()[usize::from(slot)]
            .unwrap_or_else(|| panic!("slot {slot} is served by no node"));
        self.node_on(port)
    }

    /// The slots `node` serves, ascending, per [`slot_owners`](Self::slot_owners).
    pub fn slots_of(&self, node: &RedisServer) -> Vec<u16> {
        (0u16..)
            .zip(self.slot_owners())
            .filter(|(_, owner)| *owner == Some(node.port()))
            .map(|(slot, _)| slot)
            .collect()
    }

    /// Starts one more cluster-enabled node, joins it to the cluster as an empty master with
    /// `redis-cli --cluster add-node`, and waits until every node knows it and reports
    /// `cluster_state:ok`. Returns the new node (also in [`nodes`](Self::nodes) from now on).
    pub fn add_node(&mut self) -> &RedisServer {
        let node = RedisServer::start_cluster_node();
        let seed = self.running_node_addr("add_node needs a running node to join");
        let mut add = Command::new("redis-cli");
        add.args(["--cluster", "add-node"])
            .arg(node.addr())
            .arg(&seed);
        let out = tools::run_with_timeout(add, self.scratch.path(), ADD_NODE_TIMEOUT);
        self.nodes.push(node);
        self.masters += 1;
        if !out.success() {
            panic!(
                "`redis-cli --cluster add-node` failed ({}):\n{}\n{}",
                describe(&out),
                out.output,
                self.node_logs()
            );
        }
        let known = format!("cluster_known_nodes:{}", self.nodes.len());
        self.wait_for_nodes(
            HEALTHY_TIMEOUT,
            |n| {
                let info = cluster_info(n);
                !info.contains("cluster_state:ok") || !info.contains(&known)
            },
            |pending| {
                format!(
                    "after add-node, {pending:?} lack `cluster_state:ok` or `{known}` \
                     within {HEALTHY_TIMEOUT:?}"
                )
            },
        );
        self.nodes.last().expect("the node was just pushed")
    }

    /// Moves `slots` slots from master `from` to master `to` with
    /// `redis-cli --cluster reshard` (their keys are migrated with `MIGRATE`; clients meanwhile
    /// get `ASK` and then `MOVED`), then checks the cluster. redis-cli takes the lowest-numbered
    /// slots of `from`. Panics with redis-cli's output and the node logs on failure.
    pub fn reshard(&self, from: &RedisServer, to: &RedisServer, slots: usize) {
        let mut reshard = Command::new("redis-cli");
        reshard
            .args(["--cluster", "reshard"])
            .arg(from.addr())
            .arg("--cluster-from")
            .arg(self.node_id(from))
            .arg("--cluster-to")
            .arg(self.node_id(to))
            .arg("--cluster-slots")
            .arg(slots.to_string())
            .arg("--cluster-yes");
        self.run_cli("reshard", reshard);
    }

    /// Spreads the slots over every master, empty ones included, with
    /// `redis-cli --cluster rebalance --cluster-use-empty-masters` (what follows
    /// [`add_node`](Self::add_node) in operations), then checks the cluster. Each master gets a
    /// share of the slots proportional to its weight: 1 unless listed in `weights` (a node
    /// weighted 0.25 among three of weight 1 ends up with 0.25 / 3.25 of the slots, fewer to
    /// move). Panics with redis-cli's output and the node logs on failure.
    pub fn rebalance(&self, weights: &[(&RedisServer, f64)]) {
        let seed = self.running_node_addr("rebalance needs a running node");
        let mut rebalance = Command::new("redis-cli");
        rebalance
            .args(["--cluster", "rebalance"])
            .arg(seed)
            .arg("--cluster-use-empty-masters");
        if !weights.is_empty() {
            rebalance.arg("--cluster-weight");
            for (node, weight) in weights {
                rebalance.arg(format!("{}={weight}", self.node_id(node)));
            }
        }
        self.run_cli("rebalance", rebalance);
    }

    /// `INFO errorstats` summed over every node that answers: error prefix (`MOVED`, `ASK`,
    /// `TRYAGAIN`, `CLUSTERDOWN`, `NOSCRIPT`, ...) to the number of such replies sent. A node
    /// that was killed or restarted has lost its counts.
    pub fn error_stats(&self) -> BTreeMap<String, u64> {
        let mut totals = BTreeMap::new();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let info: String =
                tools::query(&node.url(), redis::cmd("INFO").arg("errorstats")).unwrap_or_default();
            for (name, count) in info.lines().filter_map(parse_errorstat) {
                *totals.entry(name).or_insert(0) += count;
            }
        }
        totals
    }

    /// The node of this cluster listening on `port` (ports outlive roles: a handle to find a
    /// node again after a failover or an [`add_node`](Self::add_node)). Panics if none does.
    pub fn node_on(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node of this cluster listens on port {port}"))
    }

    /// Runs a `redis-cli --cluster <what>` command, then `--cluster check`; panics with
    /// their output and the node logs if either fails.
    fn run_cli(&self, what: &str, cmd: Command) {
        let out = tools::run_with_timeout(cmd, self.scratch.path(), RESHARD_TIMEOUT);
        if !out.success() {
            panic!(
                "`redis-cli --cluster {what}` failed ({}):\n{}\n{}",
                describe(&out),
                out.output,
                self.node_logs()
            );
        }
        // redis-cli has told every node where the slots went; give the odd straggler a
        // moment to agree before calling it a failure.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut problem = self.check_problem();
        while problem.is_some() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            problem = self.check_problem();
        }
        if let Some(problem) = problem {
            panic!(
                "after `redis-cli --cluster {what}`: {problem}\n--- {what} output ---\n{}\n{}",
                out.output,
                self.node_logs()
            );
        }
    }

    /// `None` when `redis-cli --cluster check` finds every slot covered and none open.
    fn check_problem(&self) -> Option<String> {
        let seed = self.nodes.iter().find(|n| n.is_running())?.addr();
        let mut check = Command::new("redis-cli");
        check.args(["--cluster", "check"]).arg(seed);
        let out = tools::run_with_timeout(check, self.scratch.path(), Duration::from_secs(10));
        let clean = out.success()
            && out
                .output
                .contains("[OK] All nodes agree about slots configuration.")
            && out.output.contains("[OK] All 16384 slots covered")
            && !out.output.contains("[WARNING]")
            && !out.output.contains("[ERR]");
        (!clean).then(|| format!("`redis-cli --cluster check` says:\n{}", out.output))
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

/// How a redis-cli run ended, for messages.
fn describe(out: &tools::CmdOutput) -> String {
    out.status
        .map_or_else(|| "timed out".to_owned(), |s| s.to_string())
}

/// `errorstat_MOVED:count=12` as `("MOVED", 12)`.
fn parse_errorstat(line: &str) -> Option<(String, u64)> {
    let (name, rest) = line.strip_prefix("errorstat_")?.split_once(':')?;
    let count = rest
        .strip_prefix("count=")?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some((name.to_owned(), count))
}

/// The slot map as `node` sees it (`CLUSTER SLOTS`): the master's port for each slot.
fn slot_owners_seen_by(node: &RedisServer) -> Result<Vec<Option<u16>>, String> {
    let ranges: Vec<redis::Value> =
        tools::query(&node.url(), redis::cmd("CLUSTER").arg("SLOTS")).map_err(|e| e.to_string())?;
    let mut owners = vec![None; SLOTS];
    for range in ranges {
        let fields: Vec<redis::Value> =
            redis::from_redis_value(range).map_err(|e| format!("a CLUSTER SLOTS range: {e}"))?;
        let [start, end, master, ..] = fields.as_slice() else {
            return Err(format!(
                "a CLUSTER SLOTS range with too few fields: {fields:?}"
            ));
        };
        let start: usize = redis::from_redis_value_ref(start).map_err(|e| e.to_string())?;
        let end: usize = redis::from_redis_value_ref(end).map_err(|e| e.to_string())?;
        let master: Vec<redis::Value> =
            redis::from_redis_value_ref(master).map_err(|e| e.to_string())?;
        let port: u16 = master
            .get(1)
            .ok_or_else(|| format!("a CLUSTER SLOTS master without a port: {master:?}"))
            .and_then(|p| redis::from_redis_value_ref(p).map_err(|e| e.to_string()))?;
        for owner in owners
            .get_mut(start..=end)
            .ok_or_else(|| format!("CLUSTER SLOTS range {start}-{end} out of bounds"))?
        {
            *owner = Some(port);
        }
    }
    Ok(owners)
}

/// The port of the master `node` replicates, per its `ROLE`; `None` for a master or an
/// unreachable node.
fn replica_of(node: &RedisServer) -> Option<u16> {
    let reply: Vec<redis::Value> = tools::query(&node.url(), &redis::cmd("ROLE")).ok()?;
    let kind: String = redis::from_redis_value_ref(reply.first()?).ok()?;
    if kind != "slave" {
        return None;
    }
    redis::from_redis_value_ref(reply.get(2)?).ok()
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
