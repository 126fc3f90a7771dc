//! Self-tests of the harness: the servers and clusters it starts really work,
//! restart/kill/stop behave as documented, the inspection helpers agree with
//! redis, and shared servers die with the test process.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use ratelimit_tests::{
    RedisCluster, RedisServer, all_keys, key_slot, keys_without_ttl, shared_cluster,
    shared_standalone,
};
use redis::AsyncCommands;

fn conn(server: &RedisServer) -> redis::Connection {
    server
        .client()
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("connect to the test server")
}

fn ping(server: &RedisServer) -> String {
    redis::cmd("PING")
        .query(&mut conn(server))
        .expect("PING the test server")
}

/// A synchronous connection to `cluster`.
fn cluster_connection(cluster: &RedisCluster) -> redis::cluster::ClusterConnection {
    cluster
        .client()
        .get_connection()
        .expect("sync cluster connection")
}

/// `CONFIG GET name` on `server`: the name and its value.
fn config_get(server: &RedisServer, name: &str) -> Vec<String> {
    redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query(&mut conn(server))
        .unwrap_or_else(|e| panic!("CONFIG GET {name}: {e}"))
}

/// Whether `pid` is gone (no /proc entry) or a zombie waiting to be reaped.
fn process_is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.trim_start().chars().next());
            matches!(state, Some('Z' | 'X'))
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn standalone_starts_and_answers_ping() {
    let server = RedisServer::start();
    assert!(server.is_running());
    assert!((20000..30000).contains(&server.port()));
    assert_eq!(server.addr(), format!("127.0.0.1:{}", server.port()));
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(ping(&server), "PONG");
    // No persistence configured.
    let save = config_get(&server, "save");
    assert_eq!(save, ["save", ""]);
}

#[test]
fn start_with_args_passes_extra_arguments() {
    let server = RedisServer::start_with_args(&["--maxmemory", "12mb"]);
    let reply = config_get(&server, "maxmemory");
    assert_eq!(reply, ["maxmemory", "12582912"]);
}

#[test]
fn restart_keeps_the_port_and_empties_the_data() {
    let server = RedisServer::start();
    let port = server.port();
    let old_pid = server.pid().expect("running server has a pid");
    let mut c = conn(&server);
    redis::cmd("SET")
        .arg("survives?")
        .arg("no")
        .exec(&mut c)
        .expect("SET");

    server.restart();

    assert_eq!(server.port(), port);
    assert!(server.is_running());
    assert_ne!(server.pid(), Some(old_pid));
    assert!(process_is_dead(old_pid));
    assert_eq!(ping(&server), "PONG");
    let value: Option<String> = redis::cmd("GET")
        .arg("survives?")
        .query(&mut conn(&server))
        .expect("GET");
    assert_eq!(value, None);
    assert!(all_keys(&[server.url()]).is_empty());
}

/// A server started and then ended by `end`: not running, its process gone.
fn ended_by(end: impl FnOnce(&RedisServer)) -> RedisServer {
    let server = RedisServer::start();
    let pid = server.pid().expect("running server has a pid");
    end(&server);
    assert!(!server.is_running());
    assert!(process_is_dead(pid));
    server
}

#[test]
fn kill_makes_the_server_unreachable_and_restart_revives_it() {
    let server = ended_by(RedisServer::kill);
    assert_eq!(server.pid(), None);
    assert!(
        server
            .client()
            .get_connection_with_timeout(Duration::from_millis(500))
            .is_err(),
        "a killed server must refuse connections"
    );
    server.kill(); // idempotent
    server.restart();
    assert_eq!(ping(&server), "PONG");
}

#[test]
fn stop_shuts_down_gracefully() {
    let server = ended_by(RedisServer::stop);
    assert!(std::net::TcpStream::connect(server.addr()).is_err());
}

#[test]
fn drop_kills_the_process() {
    let server = RedisServer::start();
    let pid = server.pid().expect("running server has a pid");
    drop(server);
    assert!(process_is_dead(pid));
}

#[tokio::test]
async fn shared_standalone_is_started_once_and_works_async() {
    let a = shared_standalone();
    let b = shared_standalone();
    assert!(std::ptr::eq(a, b));
    let mut c = a
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("async connect");
    let () = c.set("harness:shared-async", "v").await.expect("SET");
    let v: String = c.get("harness:shared-async").await.expect("GET");
    assert_eq!(v, "v");
}

#[tokio::test]
async fn shared_cluster_is_ok_and_serves_keys_on_every_master() {
    let cluster = shared_cluster();
    assert!(std::ptr::eq(cluster, shared_cluster()));
    assert_eq!(cluster.nodes().len(), 3);
    assert_eq!(cluster.masters().len(), 3);
    assert_eq!(cluster.addrs().len(), 3);
    for url in cluster.urls() {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query(
                &mut redis::Client::open(url.as_str())
                    .expect("url")
                    .get_connection()
                    .expect("connect"),
            )
            .expect("CLUSTER INFO");
        assert!(info.contains("cluster_state:ok"), "{url}: {info}");
    }

    let mut c = cluster
        .client()
        .get_async_connection()
        .await
        .expect("cluster connection");
    let keys: Vec<String> = (0..30)
        .map(|i| format!("harness:cluster-set:{i}"))
        .collect();
    let slots: BTreeSet<u16> = keys.iter().map(|k| key_slot(k)).collect();
    assert!(
        slots.len() > 20,
        "keys should hash to many slots: {slots:?}"
    );
    for (i, k) in keys.iter().enumerate() {
        let () = c
            .set_ex(k, i, 60)
            .await
            .expect("SET through the cluster client");
    }
    for (i, k) in keys.iter().enumerate() {
        let v: usize = c.get(k).await.expect("GET through the cluster client");
        assert_eq!(v, i);
    }
    // The keys really are spread over all three masters.
    for master in cluster.masters() {
        let here = all_keys(&[master.url()]);
        assert!(
            keys.iter().any(|k| here.contains(k)),
            "master {} holds none of the test keys",
            master.addr()
        );
    }
}

#[test]
fn sync_cluster_client_works_too() {
    let mut c = cluster_connection(shared_cluster());
    for tag in ["a", "b", "c", "d", "e", "f"] {
        let key = format!("harness:{{{tag}}}:sync");
        redis::cmd("SET")
            .arg(&key)
            .arg(tag)
            .arg("EX")
            .arg(60)
            .exec(&mut c)
            .expect("SET");
        let v: String = redis::cmd("GET").arg(&key).query(&mut c).expect("GET");
        assert_eq!(v, tag);
    }
}

#[test]
fn key_slot_matches_cluster_keyslot() {
    let node = &shared_cluster().nodes()[0];
    let mut c = conn(node);
    let keys = [
        "",
        "a",
        "foo",
        "bar",
        "123456789",
        "user:1000",
        "{user1000}.following",
        "{user1000}.followers",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "{}",
        "{",
        "}",
        "}{",
        "a{b",
        "rl:{tenant-42}:sliding:/api/v1",
        "rl:{tenant-42}:gcra",
        "ratelimit:{ip:10.0.0.1}:window:1700000000",
        "ünïcødé-ключ",
        "{ünï}tail",
        "spaces in key",
    ];
    for key in keys {
        let expected: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .expect("CLUSTER KEYSLOT");
        assert_eq!(key_slot(key), expected, "slot of {key:?}");
    }
    assert_eq!(key_slot("123456789"), 12739);
    assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
}

#[test]
fn keys_without_ttl_on_a_standalone_server() {
    let server = RedisServer::start();
    let mut c = conn(&server);
    redis::cmd("SET")
        .arg("forever")
        .arg(1)
        .exec(&mut c)
        .expect("SET");
    redis::cmd("SET")
        .arg("expiring")
        .arg(1)
        .arg("PX")
        .arg(60_000)
        .exec(&mut c)
        .expect("SET PX");
    redis::cmd("HSET")
        .arg("hash-forever")
        .arg("f")
        .arg(1)
        .exec(&mut c)
        .expect("HSET");
    let urls = [server.url()];
    assert_eq!(keys_without_ttl(&urls), ["forever", "hash-forever"]);
    assert_eq!(all_keys(&urls), ["expiring", "forever", "hash-forever"]);
    // Many keys: SCAN must page through all of them.
    let mut pipe = redis::pipe();
    for i in 0..2500 {
        pipe.cmd("SET")
            .arg(format!("bulk:{i}"))
            .arg(i)
            .arg("EX")
            .arg(60)
            .ignore();
    }
    pipe.exec(&mut c).expect("bulk SET");
    assert_eq!(all_keys(&urls).len(), 2503);
    assert_eq!(keys_without_ttl(&urls), ["forever", "hash-forever"]);
}

#[test]
fn keys_without_ttl_on_the_cluster() {
    let cluster = shared_cluster();
    let mut c = cluster_connection(cluster);
    let prefix = "harness:ttl-scan";
    let mut forever = Vec::new();
    let mut expiring = Vec::new();
    for i in 0..12 {
        let k = format!("{prefix}:forever:{i}");
        redis::cmd("SET").arg(&k).arg(i).exec(&mut c).expect("SET");
        forever.push(k);
        let k = format!("{prefix}:expiring:{i}");
        redis::cmd("SET")
            .arg(&k)
            .arg(i)
            .arg("EX")
            .arg(60)
            .exec(&mut c)
            .expect("SET EX");
        expiring.push(k);
    }
    let found: Vec<String> = keys_without_ttl(&cluster.master_urls())
        .into_iter()
        .filter(|k| k.starts_with(prefix))
        .collect();
    forever.sort();
    assert_eq!(found, forever);
    let all = all_keys(&cluster.master_urls());
    assert!(expiring.iter().all(|k| all.contains(k)));
    // Clean up: the shared cluster is reused by other tests.
    for k in &forever {
        redis::cmd("DEL").arg(k).exec(&mut c).expect("DEL");
    }
}

#[test]
fn cluster_with_replicas_fails_over_and_a_restarted_node_rejoins() {
    let cluster = RedisCluster::start(3, 1);
    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.masters().len(), 3);
    assert_eq!(cluster.replicas().len(), 3);
    let ports: BTreeSet<u16> = cluster.nodes().iter().map(RedisServer::port).collect();
    assert_eq!(ports.len(), 6);

    let victim = cluster.masters()[0];
    let victim_port = victim.port();
    victim.kill();
    wait_until("a replica to be promoted", Duration::from_secs(30), || {
        cluster.masters().len() == 3
    });
    cluster.wait_for_ok(Duration::from_secs(30));
    assert!(cluster.masters().iter().all(|m| m.port() != victim_port));

    victim.restart();
    assert_eq!(victim.port(), victim_port);
    wait_until(
        "the restarted node to rejoin as a replica",
        Duration::from_secs(30),
        || cluster.replicas().iter().any(|r| r.port() == victim_port),
    );
    cluster.wait_for_ok(Duration::from_secs(30));

    let mut c = cluster_connection(&cluster);
    for i in 0..20 {
        redis::cmd("SET")
            .arg(format!("after-failover:{i}"))
            .arg(i)
            .exec(&mut c)
            .expect("SET");
    }
    assert_eq!(all_keys(&cluster.master_urls()).len(), 20);
}

#[test]
fn shared_servers_die_with_the_test_process() {
    // A separate process that starts the shared servers, prints their PIDs and panics.
    let out = Command::new(env!("CARGO_BIN_EXE_harness-child"))
        .output()
        .expect("run the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "the helper should have panicked:\n{stdout}"
    );
    let pids: Vec<u32> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SHARED_PIDS="))
        .unwrap_or_else(|| {
            panic!(
                "no SHARED_PIDS line in the helper's output:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .split(',')
        .map(|p| p.parse().expect("numeric pid"))
        .collect();
    assert_eq!(pids.len(), 4);
    wait_until("the shared servers to die", Duration::from_secs(5), || {
        pids.iter().all(|&pid| process_is_dead(pid))
    });
}
