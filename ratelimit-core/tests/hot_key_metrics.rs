//! The hot-key metrics: how many keys are hot and their shares, never a key.

use std::time::Duration;

use prometheus_client::registry::Registry;
use ratelimit_core::{Config, HotKeyConfig};

/// The metrics name how many keys are hot and their shares, never the key.
#[tokio::test]
async fn hot_key_metrics_carry_no_key() {
    let config = Config::new(1_000, Duration::from_secs(60))
        .with_hot_keys(HotKeyConfig::default().with_sample_every(1));
    let limiter = ratelimit_core::RateLimiter::new(config)
        .await
        .expect("memory");
    let mut registry = Registry::default();
    limiter.metrics().register(&mut registry);
    for i in 0..300 {
        limiter.allow("secret-tenant-42").await.expect("memory");
        limiter
            .allow(format!("user:{}", i % 50))
            .await
            .expect("memory");
    }
    assert_eq!(limiter.hot_keys()[0].key, "secret-tenant-42");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains("ratelimiter_hot_keys 1"), "{text}");
    let top = text
        .lines()
        .find(|l| l.starts_with("ratelimiter_hot_key_share{rank=\"1\"}"))
        .expect("the top share");
    let share: f64 = top
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!((0.45..=0.55).contains(&share), "{top}");
    assert!(!text.contains("secret-tenant"), "no key in metrics");
    assert!(!text.contains("user:"), "no key in metrics");
}
