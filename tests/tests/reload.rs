//! Hot reload of the example server: new limits and rules apply to new requests atomically, a
//! broken file keeps the running configuration, and requests never fail because of a reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use example_api_server::{Reloader, Server, load_config};
use ratelimit_core::RateLimiter;
use ratelimit_tests::{http_get, http_json, http_text};

/// A default far above any test's traffic and a `hello` rule of `limit` a minute, then `extra`.
fn config(limit: u64, extra: &str) -> String {
    ratelimit_tests::hello_rule_config(100_000, limit) + extra
}

fn write(path: &Path, text: &str) {
    // Replace the file as editors and ConfigMaps do: write aside, then rename over it.
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text).expect("write config");
    std::fs::rename(&aside, path).expect("replace config");
}

/// A temporary directory holding `config.yaml` of [`config`]`(limit, "")`, and that file's path
/// (the directory goes when dropped).
fn config_file(limit: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    write(&path, &config(limit, ""));
    (dir, path)
}

/// The public listener, the operator listener (`/ready`, `/metrics`), and the server.
async fn start(path: &Path) -> (SocketAddr, SocketAddr, Server) {
    let limiter = RateLimiter::new(load_config(Some(path)).expect("config"))
        .await
        .expect("limiter");
    let server = example_api_server::server(limiter);
    // `/ready` answers from the periodic check: one has run before the test starts.
    let _checks = server.spawn_checks(Duration::from_millis(200));
    while !server.readiness.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addr = ratelimit_tests::serve(server.public.clone()).await;
    let admin = ratelimit_tests::serve(server.admin.clone()).await;
    (addr, admin, server)
}

async fn policy_header(client: &reqwest::Client, addr: SocketAddr) -> String {
    let response = http_get(client, format!("http://{addr}/api/hello")).await;
    response
        .headers()
        .get("ratelimit-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_under_load_fail_no_request() {
    let (_dir, path) = config_file(100_000);
    let (addr, admin, server) = start(&path).await;
    let reloader = Reloader::new(&path, &server);
    let client = reqwest::Client::new();

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop, sent, failed) =
                (client.clone(), stop.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let ok = match client.get(format!("http://{addr}/api/hello")).send().await {
                        Ok(response) => response.status() == 200,
                        Err(_) => false,
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    for i in 0..20u64 {
        let limit = 100_000 + i;
        write(&path, &config(limit, ""));
        reloader.reload().expect("reload");
        assert_eq!(
            policy_header(&client, addr).await,
            format!("\"hello-1m\";q={limit};w=60"),
            "reload {i}: the new limit applies to the next request"
        );
        if i == 10 {
            // A broken file: refused, reported, and the running configuration stays.
            write(
                &path,
                "rate_limiter:\n  windows:\n    - max_requests: 0\n      duration: 1m\n",
            );
            let error = reloader.reload().expect_err("a broken file is refused");
            assert!(error.contains("config.yaml:3"), "{error}");
            assert!(error.contains("max_requests"), "{error}");
            assert_eq!(server.status.last_error().as_deref(), Some(error.as_str()));
            assert_eq!(
                policy_header(&client, addr).await,
                format!("\"hello-1m\";q={limit};w=60")
            );
            let ready: serde_json::Value =
                http_json(&client, format!("http://{admin}/ready")).await;
            assert_eq!(ready["ready"], true);
            assert!(
                ready["last_reload_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("max_requests"))
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }
    let metrics = http_text(&client, format!("http://{admin}/metrics")).await;
    assert!(
        metrics.contains("ratelimiter_config_reloads_total{result=\"ok\"} 20"),
        "{metrics}"
    );
    assert!(metrics.contains("ratelimiter_config_reloads_total{result=\"failed\"} 1"));
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(sent > 100, "the load ran ({sent} requests)");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during reloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_reload_that_keeps_the_backend() {
    let (_dir, path) = config_file(3);
    let (addr, _admin, server) = start(&path).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        http_get(&client, format!("http://{addr}/api/hello")).await;
    }
    write(&path, &config(5, ""));
    Reloader::new(&path, &server).reload().expect("reload");
    let response = http_get(&client, format!("http://{addr}/api/hello")).await;
    assert_eq!(
        response
            .headers()
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok()),
        Some("2"),
        "the two earlier requests still count under the new limit of 5"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_picked_up_by_the_watcher() {
    let (_dir, path) = config_file(10);
    let (addr, _admin, server) = start(&path).await;
    let _watcher = Reloader::new(&path, &server)
        .watch(Duration::from_millis(50))
        .expect("watch");
    let client = reqwest::Client::new();
    assert_eq!(policy_header(&client, addr).await, "\"hello-1m\";q=10;w=60");
    // A new rule set, too: the rule's policy changes and a new exempt rule appears.
    let exempt = "    - name: users
      match:
        path: /api/users/{id}
      exempt: true
";
    write(&path, &config(42, exempt));
    let started = Instant::now();
    loop {
        if policy_header(&client, addr).await == "\"hello-1m\";q=42;w=60" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the watcher did not reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let users = http_get(&client, format!("http://{addr}/api/users/1")).await;
    assert!(
        users.headers().get("ratelimit").is_none(),
        "the new exempt rule applies"
    );
}
