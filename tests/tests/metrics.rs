//! `/metrics` of the example server, parsed: every family of DESIGN is exported with the right
//! labels and values, no label value comes from a request, and every metric the Grafana
//! dashboard queries is one that is exported.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use ratelimit_core::Overrides;
use ratelimit_core::{Config, RateLimiter, RedisConfig};
use ratelimit_tests::RedisServer;

/// Samples of a text exposition: `name{labels}` to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn names(samples: &BTreeMap<String, f64>) -> BTreeSet<String> {
    samples
        .keys()
        .map(|series| series.split('{').next().unwrap_or(series).to_owned())
        .collect()
}

/// The public listener (the API) and the operator listener (`/metrics`).
async fn serve(limiter: RateLimiter) -> (SocketAddr, SocketAddr) {
    let server = example_api_server::server(limiter);
    (
        ratelimit_tests::serve(server.public).await,
        ratelimit_tests::serve(server.admin).await,
    )
}

async fn scrape(client: &reqwest::Client, addr: SocketAddr) -> String {
    let response = ratelimit_tests::http_get(client, format!("http://{addr}/metrics")).await;
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    response.text().await.expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_exported_with_its_labels() {
    let redis = RedisServer::start();
    // Appended to the `rate_limiter` block (no `\` continuation: it would eat the indent).
    let yaml = ratelimit_tests::hello_rule_config(100, 2)
        + "  cache:
    ttl: 200ms
    max_size: 1MB
  fallback:
    mode: local
    circuit_breaker_threshold: 1
    cool_down: 30s
";
    let config = Config::from_yaml_str_with(&yaml, None, &Overrides::default())
        .expect("config")
        .with_redis_config(
            RedisConfig::new([redis.url()]).with_timeout(Duration::from_millis(500)),
        );
    let limiter = RateLimiter::new(config).await.expect("limiter");
    limiter.metrics().config_reload(true);
    let (addr, admin) = serve(limiter).await;
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://{addr}{path}"))
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-evil", "{label=\"injected\"}")
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }
    };
    // Two allowed and a denial from Redis, then a denial from the cache.
    assert_eq!(get("/api/hello").await, 200);
    assert_eq!(get("/api/hello").await, 200);
    assert_eq!(get("/api/hello").await, 429);
    assert_eq!(get("/api/hello").await, 429);
    // The default rule, on another route.
    assert_eq!(get("/api/users/1").await, 200);
    // Redis dies: the breaker opens at the first failure and the local fallback answers.
    redis.kill();
    assert_eq!(get("/api/users/2").await, 200);
    assert_eq!(get("/api/users/3").await, 200);

    let text = scrape(&client, admin).await;
    let samples = samples(&text);
    let value = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    };
    assert_eq!(
        value(r#"ratelimiter_requests_total{result="allowed",window="1m",rule="hello"}"#),
        2.0
    );
    assert_eq!(
        value(r#"ratelimiter_requests_total{result="denied",window="1m",rule="hello"}"#),
        2.0
    );
    assert_eq!(
        value(r#"ratelimiter_requests_total{result="allowed",window="1m",rule="default"}"#),
        3.0
    );
    assert_eq!(value("ratelimiter_cache_hits_total"), 1.0);
    assert_eq!(
        value(r#"ratelimiter_fallback_events_total{mode="local"}"#),
        2.0
    );
    assert_eq!(value(r#"ratelimiter_circuit_state{state="open"}"#), 1.0);
    assert_eq!(value(r#"ratelimiter_circuit_state{state="closed"}"#), 0.0);
    assert!(value(r#"ratelimiter_redis_errors_total{kind="connection"}"#) >= 1.0);
    assert_eq!(
        value(r#"ratelimiter_config_reloads_total{result="ok"}"#),
        1.0
    );
    // Five calls went to Redis (four answered, one failed); the cached denial and the
    // fallback behind the open breaker did not.
    assert_eq!(
        value(r#"ratelimiter_redis_latency_seconds_count{operation="allow"}"#),
        5.0
    );
    assert!(
        value(r#"ratelimiter_redis_latency_seconds_bucket{le="+Inf",operation="allow"}"#) >= 5.0
    );
    // Nothing a client sent appears anywhere.
    for needle in ["6.6.6.6", "injected", "/api/"] {
        assert!(
            !text.contains(needle),
            "{needle} leaked into metrics:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../dashboards/ratelimiter.json"))
            .expect("dashboard is JSON");
    let mut queried = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(start) = rest.find("ratelimiter_") {
                let name: String = rest[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[start + name.len()..];
                queried.insert(name);
            }
        }
    }
    // Every family with at least one series: a Redis-backed limiter that decided, erred and
    // fell back, so that no family is empty.
    let redis = RedisServer::start();
    let config = Config::new(1, Duration::from_secs(60))
        .with_redis_config(RedisConfig::new([redis.url()]).with_timeout(Duration::from_millis(300)))
        .with_cache(ratelimit_core::CacheConfig::new(
            Duration::from_millis(100),
            1_000_000,
        ));
    let limiter = RateLimiter::new(config).await.expect("limiter");
    limiter.metrics().config_reload(false);
    for _ in 0..3 {
        limiter.allow("k").await.expect("allow");
    }
    redis.kill();
    limiter.allow("other").await.expect("allow");
    let (_, admin) = serve(limiter).await;
    let exported = names(&samples(&scrape(&reqwest::Client::new(), admin).await));
    let missing: Vec<&String> = queried.iter().filter(|q| !exported.contains(*q)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, exported: {exported:?}"
    );
    for family in [
        "ratelimiter_requests_total",
        "ratelimiter_redis_latency_seconds_bucket",
        "ratelimiter_cache_hits_total",
        "ratelimiter_fallback_events_total",
        "ratelimiter_circuit_state",
    ] {
        assert!(
            queried.contains(family),
            "the dashboard should show {family}"
        );
    }
}

/// `ratelimiter_redis_latency_seconds` holds the time each Redis call took: behind a link that
/// holds every chunk 40 ms each way, no call can be observed under 80 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_latency_is_the_time_each_call_took() {
    use ratelimit_tests::proxy::{Fault, FaultProxy};
    let server = RedisServer::start();
    let upstream: SocketAddr = server.addr().parse().expect("address");
    let proxy = FaultProxy::start(upstream);
    let limiter = RateLimiter::new(
        Config::new(100, Duration::from_secs(60))
            .with_prefix("latency:")
            .with_redis_config(
                RedisConfig::new([proxy.url()]).with_timeout(Duration::from_secs(5)),
            ),
    )
    .await
    .expect("limiter");
    proxy.set(Fault::Delay(Duration::from_millis(40)));
    for _ in 0..3 {
        assert!(limiter.allow("client").await.expect("allow").allowed());
    }
    let mut registry = prometheus_client::registry::Registry::default();
    limiter.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    let value = |series: &str| {
        samples(&text)
            .into_iter()
            .find(|(name, _)| name.starts_with(series) && name.contains(r#"operation="allow""#))
            .map(|(_, value)| value)
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    };
    assert_eq!(value("ratelimiter_redis_latency_seconds_count"), 3.0);
    let sum = value("ratelimiter_redis_latency_seconds_sum");
    assert!(
        sum >= 3.0 * 0.080,
        "3 calls through an 80 ms round trip took {sum} s in all"
    );
    let fast = text
        .lines()
        .filter(|line| line.starts_with("ratelimiter_redis_latency_seconds_bucket"))
        .filter(|line| line.contains(r#"operation="allow""#))
        .filter_map(|line| {
            let le = line
                .split("le=\"")
                .nth(1)?
                .split('"')
                .next()?
                .parse::<f64>()
                .ok()?;
            let count = line.rsplit_once(' ')?.1.parse::<f64>().ok()?;
            (le < 0.080).then_some(count)
        })
        .fold(0.0, f64::max);
    assert_eq!(fast, 0.0, "a call observed under 80 ms:\n{text}");
}
