//! Run by the harness self-test `shared_servers_die_with_the_test_process`: starts the shared
//! servers from a thread that then exits, checks they survive it, prints their PIDs, and panics.
//! The test then checks that every one of them died with this process.

use std::time::Duration;

use ratelimit_tests::{shared_cluster, shared_standalone};

fn main() {
    std::thread::spawn(|| {
        shared_standalone();
        shared_cluster();
    })
    .join()
    .expect("starting the shared servers");
    // PDEATHSIG is tied to the forking thread: the servers must outlive the thread that asked.
    std::thread::sleep(Duration::from_millis(500));
    let mut connection = shared_standalone()
        .client()
        .get_connection()
        .expect("connect to the shared standalone server");
    let pong: String = redis::cmd("PING")
        .query(&mut connection)
        .expect("PING the shared standalone server");
    assert_eq!(pong, "PONG");
    shared_cluster().wait_for_ok(Duration::from_secs(5));
    let mut pids = vec![shared_standalone().pid().expect("pid")];
    pids.extend(
        shared_cluster()
            .nodes()
            .iter()
            .map(|n| n.pid().expect("pid")),
    );
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("SHARED_PIDS={}", pids.join(","));
    panic!("intentional panic: shared servers must still be cleaned up");
}
