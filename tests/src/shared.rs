//! Servers shared by all tests of one test binary.
//!
//! Starting redis takes tens of milliseconds and a cluster a few seconds, so
//! tests that only need *a* server reuse these: each is started the first
//! time it is asked for and lives until the test binary exits (the reaper's
//! PDEATHSIG and atexit handler kill it then, even after a panic). Tests
//! sharing them run concurrently: use unique key names (e.g. prefixed with
//! the test name) and never kill, stop or restart a shared server; start a
//! private [`RedisServer`]/[`RedisCluster`] for that.

use std::sync::OnceLock;

use crate::cluster::RedisCluster;
use crate::reaper;
use crate::server::RedisServer;

static STANDALONE: OnceLock<RedisServer> = OnceLock::new();
static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();

/// The standalone server shared by this test binary (started on first use).
pub fn shared_standalone() -> &'static RedisServer {
    STANDALONE.get_or_init(|| {
        let server = RedisServer::start();
        reaper::remove_at_exit(server.dir().to_path_buf());
        server
    })
}

/// The cluster (3 masters, no replicas) shared by this test binary (started
/// on first use).
pub fn shared_cluster() -> &'static RedisCluster {
    CLUSTER.get_or_init(|| {
        let cluster = RedisCluster::start(3, 0);
        for node in cluster.nodes() {
            reaper::remove_at_exit(node.dir().to_path_buf());
        }
        reaper::remove_at_exit(cluster.scratch_dir().to_path_buf());
        cluster
    })
}
