//! `/health` and `/ready` of the example server, and the invariant checker behind `/ready`.
//!
//! Readiness comes from the periodic checker (every 100 ms here), never from the request: the
//! tests ask the operator listener's detailed `/ready` until the checker has seen what they
//! did.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ratelimit_core::{Config, FallbackConfig, FallbackMode, RateLimiter, RedisConfig};
use ratelimit_tests::{Backend, RedisServer, shared_cluster};

/// The two listeners of a served example app.
struct Served {
    public: SocketAddr,
    admin: SocketAddr,
    checks: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.checks.abort();
    }
}

async fn serve(limiter: RateLimiter) -> Served {
    let server = example_api_server::server(limiter);
    let checks = server.spawn_checks(Duration::from_millis(100));
    Served {
        public: ratelimit_tests::serve(server.public).await,
        admin: ratelimit_tests::serve(server.admin).await,
        checks,
    }
}

async fn ready(addr: SocketAddr) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://{addr}/ready"))
        .await
        .expect("GET /ready");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

/// The detailed `/ready` once `until` holds for it (the checker runs every 100 ms); panics
/// with the last answer if it does not within 20 s.
async fn ready_once(
    addr: SocketAddr,
    until: impl Fn(u16, &serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let started = Instant::now();
    loop {
        let (status, body) = ready(addr).await;
        if until(status, &body) {
            return (status, body);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "/ready never got there: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn invariant(body: &serde_json::Value, name: &str) -> serde_json::Value {
    body["invariants"][name]["ok"].clone()
}

/// Plants a key without TTL under the limiter's prefix, then removes it, watching `/ready`;
/// `run` sends a command to the Redis under test (standalone or cluster).
async fn plant_and_remove(limiter: &RateLimiter, addr: SocketAddr, run: impl AsyncFn(redis::Cmd)) {
    let (_, body) = ready_once(addr, |status, body| {
        status == 200 && invariant(body, "no_stuck_keys") == true
    })
    .await;
    assert_eq!(body["ready"], true, "{body}");
    let stuck = format!("{}{{default:planted}}:sw", limiter.config().prefix());
    run(redis::cmd("SET").arg(&stuck).arg("x").clone()).await;
    // The scan is bounded and resumes where it stopped: a few checks cover the keyspace.
    let (status, body) =
        ready_once(addr, |_, body| invariant(body, "no_stuck_keys") == false).await;
    assert_eq!(
        status, 200,
        "a stuck key does not make the server unready: {body}"
    );
    assert_eq!(
        body["invariants"]["no_stuck_keys"]["detail"],
        "1 keys without a TTL"
    );
    assert!(
        !body.to_string().contains("planted"),
        "keys are not echoed: {body}"
    );
    run(redis::cmd("DEL").arg(&stuck).clone()).await;
    ready_once(addr, |_, body| invariant(body, "no_stuck_keys") == true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_ttl_fails_no_stuck_keys_until_it_is_gone() {
    let redis = RedisServer::start();
    let prefix = Backend::unique_prefix("health");
    let config = Config::new(10, Duration::from_secs(60))
        .with_prefix(&prefix)
        .with_redis_config(RedisConfig::new([redis.url()]).with_timeout(Duration::from_secs(2)));
    let limiter = RateLimiter::new(config).await.expect("limiter");
    limiter.allow("someone").await.expect("allow");
    let served = serve(limiter.clone()).await;
    let client = redis.client();
    plant_and_remove(&limiter, served.admin, async |cmd: redis::Cmd| {
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        cmd.exec_async(&mut c).await.expect("plant or remove");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_scans_every_cluster_primary() {
    let cluster = shared_cluster();
    let prefix = Backend::unique_prefix("health-cluster");
    let config = Config::new(10, Duration::from_secs(60))
        .with_prefix(&prefix)
        .with_redis_config(
            RedisConfig::new(cluster.urls())
                .with_mode(ratelimit_core::RedisMode::Cluster)
                .with_timeout(Duration::from_secs(2)),
        );
    let limiter = RateLimiter::new(config).await.expect("limiter");
    let served = serve(limiter.clone()).await;
    let client = cluster.client();
    plant_and_remove(&limiter, served.admin, async |cmd: redis::Cmd| {
        let mut c = client.get_async_connection().await.expect("connect");
        cmd.exec_async(&mut c).await.expect("plant or remove");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_and_the_fallback_mode() {
    for (mode, ready_without_redis) in [
        (FallbackMode::Local, true),
        (FallbackMode::Open, true),
        (FallbackMode::Closed, false),
    ] {
        let redis = RedisServer::start();
        let config = Config::new(10, Duration::from_secs(60))
            .with_redis_config(
                RedisConfig::new([redis.url()]).with_timeout(Duration::from_millis(200)),
            )
            .with_fallback(FallbackConfig::new(mode, 1));
        let limiter = RateLimiter::new(config).await.expect("limiter");
        let served = serve(limiter).await;
        ready_once(served.admin, |status, body| {
            status == 200 && invariant(body, "redis_healthy") == true
        })
        .await;
        redis.kill();
        let (status, body) = ready_once(served.admin, |_, body| {
            invariant(body, "redis_healthy") == false
        })
        .await;
        assert_eq!(status == 200, ready_without_redis, "{mode}: {body}");
        // The public probe says the same, with nothing else.
        let public = reqwest::get(format!("http://{}/ready", served.public))
            .await
            .expect("GET /ready");
        assert_eq!(public.status() == 200, ready_without_redis, "{mode}");
        let text = public.text().await.expect("body");
        assert!(text == "ready\n" || text == "not ready\n", "{text}");
        let health = reqwest::get(format!("http://{}/health", served.public))
            .await
            .expect("GET /health");
        assert_eq!(
            health.status(),
            200,
            "the process lives whatever Redis does"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_server_is_ready() {
    let limiter = RateLimiter::new(Config::new(10, Duration::from_secs(60)))
        .await
        .expect("limiter");
    let served = serve(limiter).await;
    let (_, body) = ready_once(served.admin, |status, _| status == 200).await;
    assert_eq!(body["backend"], "memory");
    for name in [
        "config_loaded",
        "redis_healthy",
        "breaker_closed",
        "no_stuck_keys",
    ] {
        assert_eq!(invariant(&body, name), true, "{name}: {body}");
    }
}
