//! Operator surfaces of the example server are not the public's: `/metrics`, `/admin/*` and the
//! detailed `/ready` live on the operator listener; hot keys are reported by digest unless the
//! operator asks for the raw keys; and no request to `/ready` starts Redis work (it used to run
//! a keyspace `SCAN` and a `PING` each: 5,756 of each for 5,756 requests in 3 s from 4
//! clients).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ratelimit_core::Overrides;
use ratelimit_core::{Config, HotKeyConfig, RateLimiter};
use ratelimit_tests::{RedisServer, command_calls};

/// The two listeners of a served example app, and its checker.
struct Served {
    public: SocketAddr,
    admin: SocketAddr,
    readiness: example_api_server::Readiness,
    checks: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.checks.abort();
    }
}

async fn serve(limiter: RateLimiter, period: Duration) -> Served {
    let server = example_api_server::server(limiter);
    let checks = server.spawn_checks(period);
    let readiness = server.readiness.clone();
    Served {
        public: ratelimit_tests::serve(server.public).await,
        admin: ratelimit_tests::serve(server.admin).await,
        readiness,
        checks,
    }
}

/// Waits for the checker's first check.
async fn first_check(served: &Served) {
    let started = Instant::now();
    while served.readiness.latest().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no readiness check ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn get(client: &reqwest::Client, url: String) -> (u16, String) {
    let response = client.get(&url).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

const API_KEYS: &str = r#"
rate_limiter:
  windows: [{ max_requests: 1000, duration: 1m }]
  key: header:x-api-key
  rules:
    - name: hello
      match: { path: /api/hello, methods: [GET] }
      windows: [{ max_requests: 5, duration: 1m }]
"#;

fn config(yaml: &str) -> Config {
    Config::from_yaml_str_with(yaml, None, &Overrides::default()).expect("valid config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_routes_are_served_on_the_admin_listener_only() {
    let limiter = RateLimiter::new(config(API_KEYS)).await.expect("limiter");
    let served = serve(limiter, Duration::from_millis(100)).await;
    first_check(&served).await;
    let client = reqwest::Client::new();
    let (public, admin) = (served.public, served.admin);

    for path in ["/metrics", "/admin/hot-keys", "/admin/hot-keys?raw=true"] {
        let (status, body) = get(&client, format!("http://{public}{path}")).await;
        assert_eq!(status, 404, "{path} on the public listener: {body}");
        let (status, _) = get(&client, format!("http://{admin}{path}")).await;
        assert_eq!(status, 200, "{path} on the admin listener");
    }
    // The public probes: a status and a word, no invariant, no reload error, no backend.
    assert_eq!(
        get(&client, format!("http://{public}/ready")).await,
        (200, "ready\n".to_owned())
    );
    assert_eq!(
        get(&client, format!("http://{public}/health")).await,
        (200, "ok".to_owned())
    );
    // The details are the operator's.
    let (status, detailed) = get(&client, format!("http://{admin}/ready")).await;
    assert_eq!(status, 200);
    let detailed: serde_json::Value = serde_json::from_str(&detailed).expect("json");
    assert_eq!(detailed["ready"], true);
    assert_eq!(detailed["backend"], "memory");
    assert_eq!(detailed["invariants"]["config_loaded"]["ok"], true);
    // The API is not served to operators, nor the operator routes to clients.
    let (status, _) = get(&client, format!("http://{admin}/api/hello")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_are_reported_by_digest_unless_raw_keys_are_asked_for() {
    let config = config(API_KEYS).with_hot_keys(HotKeyConfig::default().with_sample_every(1));
    let limiter = RateLimiter::new(config).await.expect("limiter");
    let served = serve(limiter, Duration::from_secs(3600)).await;
    let client = reqwest::Client::new();
    let secret = "sk-live-0123456789abcdef";
    for _ in 0..20 {
        client
            .get(format!("http://{}/api/hello", served.public))
            .header("x-api-key", secret)
            .send()
            .await
            .expect("GET /api/hello");
    }

    let (status, report) = get(&client, format!("http://{}/admin/hot-keys", served.admin)).await;
    assert_eq!(status, 200);
    assert!(!report.contains(secret), "the key leaked: {report}");
    let report: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(report["raw"], false);
    let top = &report["keys"][0];
    assert_eq!(top["policy"], "hello", "{report}");
    assert_eq!(top["hot"], true, "{report}");
    assert!(top.get("key").is_none(), "{report}");
    let digest = top["digest"].as_str().expect("a digest");
    assert!(
        !digest.is_empty() && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "{digest}"
    );

    let (status, raw) = get(
        &client,
        format!("http://{}/admin/hot-keys?raw=true", served.admin),
    )
    .await;
    assert_eq!(status, 200);
    let raw: serde_json::Value = serde_json::from_str(&raw).expect("json");
    assert_eq!(raw["raw"], true);
    assert_eq!(raw["keys"][0]["key"], secret, "{raw}");
    assert_eq!(
        raw["keys"][0]["digest"], digest,
        "the same key, the same digest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_requests_start_no_redis_work() {
    let redis = RedisServer::start();
    let config = config(API_KEYS).with_redis_config(
        ratelimit_core::RedisConfig::new([redis.url()]).with_timeout(Duration::from_secs(2)),
    );
    let limiter = RateLimiter::new(config).await.expect("limiter");
    // One check when the checker starts, then none for the length of the test.
    let served = serve(limiter, Duration::from_secs(3600)).await;
    first_check(&served).await;
    let before = command_calls(&redis.url());
    assert!(
        before.get("scan").is_some_and(|&calls| calls >= 1),
        "the checker scans: {before:?}"
    );

    // 4 clients, 100 requests each, half to the public probe and half to the operator's.
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            let addr = if i % 2 == 0 {
                served.public
            } else {
                served.admin
            };
            tokio::spawn(async move {
                for _ in 0..100 {
                    let (status, _) = get(&client, format!("http://{addr}/ready")).await;
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }

    let after = command_calls(&redis.url());
    let mut grown: Vec<(String, u64)> = after
        .iter()
        .map(|(name, &calls)| (name.clone(), calls - before.get(name).copied().unwrap_or(0)))
        .filter(|(name, delta)| *delta > 0 && name != "info")
        .collect();
    grown.sort();
    assert!(
        grown.is_empty(),
        "400 requests to /ready made Redis work: {grown:?}"
    );
    // The only INFO since is ours (a command is counted once it has run).
    assert_eq!(
        after.get("info").copied(),
        Some(before.get("info").copied().unwrap_or(0) + 1)
    );
}
