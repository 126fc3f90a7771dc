//! `/health` and `/ready` of the example server, and the invariant checker behind `/ready`.

use std::net::SocketAddr;
use std::time::Duration;

use ratelimit_core::{Config, FallbackConfig, FallbackMode, RateLimiter, RedisConfig};
use ratelimit_tests::{Backend, RedisServer, shared_cluster};

async fn serve(limiter: RateLimiter) -> SocketAddr {
    ratelimit_tests::serve(example_api_server::app(limiter)).await
}

async fn ready(addr: SocketAddr) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://{addr}/ready"))
        .await
        .expect("GET /ready");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

/// Plants a key without TTL under the limiter's prefix, then removes it, watching `/ready`;
/// `run` sends a command to the Redis under test (standalone or cluster).
async fn plant_and_remove(limiter: &RateLimiter, addr: SocketAddr, run: impl AsyncFn(redis::Cmd)) {
    let (status, body) = ready(addr).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["invariants"]["no_stuck_keys"]["ok"], true, "{body}");
    let stuck = format!("{}{{default:planted}}:sw", limiter.config().prefix());
    run(redis::cmd("SET").arg(&stuck).arg("x").clone()).await;
    // The scan is bounded and resumes where it stopped: a few checks cover the keyspace.
    let mut seen = false;
    for _ in 0..4 {
        let (status, body) = ready(addr).await;
        assert_eq!(
            status, 200,
            "a stuck key does not make the server unready: {body}"
        );
        if body["invariants"]["no_stuck_keys"]["ok"] == false {
            assert_eq!(
                body["invariants"]["no_stuck_keys"]["detail"],
                "1 keys without a TTL"
            );
            assert!(
                !body.to_string().contains("planted"),
                "keys are not echoed: {body}"
            );
            seen = true;
            break;
        }
    }
    assert!(seen, "the planted key without TTL was not found");
    run(redis::cmd("DEL").arg(&stuck).clone()).await;
    let mut cleared = false;
    for _ in 0..4 {
        let (_, body) = ready(addr).await;
        if body["invariants"]["no_stuck_keys"]["ok"] == true {
            cleared = true;
            break;
        }
    }
    assert!(
        cleared,
        "no_stuck_keys did not pass again once the key was gone"
    );
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
    let addr = serve(limiter.clone()).await;
    let client = redis.client();
    plant_and_remove(&limiter, addr, async |cmd: redis::Cmd| {
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
    let addr = serve(limiter.clone()).await;
    let client = cluster.client();
    plant_and_remove(&limiter, addr, async |cmd: redis::Cmd| {
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
        let addr = serve(limiter).await;
        let (status, body) = ready(addr).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["invariants"]["redis_healthy"]["ok"], true);
        redis.kill();
        let (status, body) = ready(addr).await;
        assert_eq!(body["invariants"]["redis_healthy"]["ok"], false, "{body}");
        assert_eq!(status == 200, ready_without_redis, "{mode}: {body}");
        let health = reqwest::get(format!("http://{addr}/health"))
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
    let addr = serve(limiter).await;
    let (status, body) = ready(addr).await;
    assert_eq!(status, 200);
    assert_eq!(body["backend"], "memory");
    for name in [
        "config_loaded",
        "redis_healthy",
        "breaker_closed",
        "no_stuck_keys",
    ] {
        assert_eq!(body["invariants"][name]["ok"], true, "{name}: {body}");
    }
}
