//! The connection to a standalone Redis: the handshake it makes (database, protocol), and what
//! it does when the server closes it or answers in pieces.

use std::time::Duration;

use ratelimit_core::{Config, Decision, RateLimiter, RedisConfig, Source};
use ratelimit_tests::RedisServer;

async fn limiter(url: String, limit: u64) -> RateLimiter {
    RateLimiter::new(
        Config::new(limit, Duration::from_secs(60))
            .with_redis_config(RedisConfig::new([url]).with_timeout(Duration::from_secs(2))),
    )
    .await
    .expect("a limiter on the test's Redis")
}

/// `n` concurrent `allow`s on `key`, each a task of its own; their decisions.
async fn concurrently(limiter: &RateLimiter, n: usize, key: &'static str) -> Vec<Decision> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.allow(key).await })
        })
        .collect();
    let mut decisions = Vec::with_capacity(n);
    for call in calls {
        decisions.push(call.await.expect("the caller's task").expect("decided"));
    }
    decisions
}

async fn keys_in(server: &RedisServer, db: i64) -> usize {
    let mut connection = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("the test's redis-server answers");
    redis::cmd("SELECT")
        .arg(db)
        .query_async::<()>(&mut connection)
        .await
        .expect("SELECT");
    redis::cmd("DBSIZE")
        .query_async(&mut connection)
        .await
        .expect("DBSIZE")
}

/// A database named in the address (`redis://host/3`) is where the limiter's keys go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_of_the_address_holds_the_keys() {
    let server = RedisServer::start();
    let limiter = limiter(format!("{}/3", server.url()), 5).await;
    for _ in 0..3 {
        let decision = limiter.allow("user:1").await.expect("Redis answers");
        assert_eq!(decision.source(), Source::Redis);
    }
    assert_eq!(keys_in(&server, 3).await, 1, "the key in database 3");
    assert_eq!(keys_in(&server, 0).await, 0, "nothing in database 0");
}

/// The server closes every client connection between decisions (`CLIENT KILL`, as a restart or
/// an idle timeout would): each next decision is still Redis's, on a new connection, and the
/// count stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_opened_again() {
    let server = RedisServer::start();
    let limiter = limiter(server.url(), 5).await;
    let admin = server.client();
    let mut allowed = 0;
    for i in 0..12 {
        let mut connection = admin
            .get_multiplexed_async_connection()
            .await
            .expect("the test's redis-server answers");
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut connection)
            .await
            .expect("CLIENT KILL");
        if i > 0 {
            assert!(killed >= 1, "round {i}: the limiter's connection was open");
        }
        let decision = limiter.allow("user:1").await.expect("decided");
        assert_eq!(decision.source(), Source::Redis, "round {i}");
        allowed += u32::from(decision.allowed());
    }
    assert_eq!(allowed, 5);
}

/// RESP3 asked for in the address: the redis crate's connection serves it, with the same
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_is_served_as_well() {
    let server = RedisServer::start();
    let limiter = limiter(format!("{}?protocol=resp3", server.url()), 2).await;
    let mut allowed = 0;
    for _ in 0..4 {
        let decision = limiter.allow("user:1").await.expect("Redis answers");
        assert_eq!(decision.source(), Source::Redis);
        allowed += u32::from(decision.allowed());
    }
    assert_eq!(allowed, 2);
    // Concurrent calls go out as pipelines on the redis crate's connection too.
    let decisions = concurrently(&limiter, 50, "user:2").await;
    assert_eq!(decisions.iter().filter(|d| d.allowed()).count(), 2);
    // Other commands than the scripts (`DEL`) go on the same connection.
    limiter.reset("user:1").await.expect("reset");
    assert!(limiter.allow("user:1").await.expect("allow").allowed());
}

/// 200 concurrent callers on one connection: their calls go out as pipelines, whose replies
/// arrive in pieces of any size; every caller gets its own answer, exactly the limit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_arrive_in_pieces_are_read_whole() {
    let server = RedisServer::start();
    let limiter = RateLimiter::new(
        Config::new(100, Duration::from_secs(60)).with_redis_config(
            RedisConfig::new([server.url()])
                .with_pool_size(1)
                .with_timeout(Duration::from_secs(2)),
        ),
    )
    .await
    .expect("a limiter on the test's Redis");
    let mut allowed = 0;
    for decision in concurrently(&limiter, 200, "one-key").await {
        // Denials past the limit may come from the exact cache; every admission is Redis's.
        if decision.allowed() {
            assert_eq!(decision.source(), Source::Redis);
            allowed += 1;
        } else {
            assert!(matches!(decision.source(), Source::Redis | Source::Cache));
        }
    }
    assert_eq!(allowed, 100);
    assert!(limiter.stats().pipelines > 0, "the calls went out together");
}

/// A limiter built on one runtime (its connections opened there) and used on another, while the
/// first stays alive and idle: nothing drives the first runtime's sockets, so every decision
/// would wait out its timeout there. Each connection is opened again on the runtime that uses it.
#[test]
fn a_limiter_built_on_one_runtime_decides_on_another() {
    let server = RedisServer::start();
    let building = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let limiter = building.block_on(limiter(server.url(), 5));
    let serving = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let allowed = serving.block_on(async {
        let mut allowed = 0;
        for i in 0..10 {
            let decision = limiter.allow("user:1").await.expect("decided");
            assert_eq!(decision.source(), Source::Redis, "call {i}");
            allowed += u32::from(decision.allowed());
        }
        allowed
    });
    assert_eq!(allowed, 5);
    drop(building);
}
