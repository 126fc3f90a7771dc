//! Hot keys on real Redis: found and their denials shielded from Redis when the cache is off; and a spread key's counter split over slots while
//! staying exact under 1000 concurrent callers.

use std::collections::BTreeSet;
use std::time::Duration;

use ratelimit_core::{Algorithm, Config, HotKeyConfig, Policy, Source};
use ratelimit_tests::{
    Backend, concurrent_allows, evalsha_calls, for_each_backend, key_slot, shared_standalone,
};

/// An abusive client on a spent key: with the detector on, its denials stop reaching Redis
/// once it is hot, though the cache is off; with it off, every request is a script call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_denied_keys_are_answered_locally_without_the_cache() {
    let url = shared_standalone().url();
    let mut calls = Vec::new();
    for enabled in [true, false] {
        let prefix = Backend::unique_prefix("shield");
        let hot_keys = if enabled {
            HotKeyConfig::default().with_sample_every(1)
        } else {
            HotKeyConfig::disabled()
        };
        let config = Backend::Standalone
            .configure(Config::new(5, Duration::from_secs(60)), &prefix)
            .with_hot_keys(hot_keys);
        assert!(!config.cache().enabled(), "the cache stays off");
        let limiter = Backend::Standalone.limiter(config, &prefix).await;
        // Background traffic, so the abuser is hot by share and not by being alone.
        for i in 0..40 {
            limiter
                .allow(format!("user:{i}"))
                .await
                .expect("Redis answers");
        }
        let before = evalsha_calls(&url);
        let (mut allowed, mut local) = (0, 0);
        for _ in 0..500 {
            let decision = limiter.allow("abuser").await.expect("Redis answers");
            allowed += u32::from(decision.allowed());
            local += u32::from(decision.source() == Source::Cache);
        }
        let made = evalsha_calls(&url) - before;
        assert_eq!(allowed, 5, "exactly the limit either way");
        if enabled {
            assert!(local >= 450, "answered locally: {local} of 500");
            let hot = limiter.hot_keys();
            assert_eq!(hot[0].key, "abuser");
            assert!(hot[0].hot && hot[0].denied_share > 0.9, "{:?}", hot[0]);
        } else {
            assert_eq!(local, 0);
            assert!(limiter.hot_keys().is_empty());
        }
        calls.push(made);
        Backend::Standalone.assert_every_key_expires(&prefix);
    }
    println!(
        "500 requests on a spent key: {} script calls with the shield, {} without",
        calls[0], calls[1]
    );
    // INFO counts every client of the shared server: other tests add a little noise.
    assert!(
        calls[0] * 5 < calls[1],
        "script calls with the shield {} vs without {}",
        calls[0],
        calls[1]
    );
    assert!(calls[1] >= 500);
}

/// One key spread over 8 sub-counters: exactly its limit under 1000 concurrent callers, its
/// Redis keys in 8 slots (on several cluster masters), each with a TTL.
async fn a_spread_key_is_exact_and_lands_on_several_slots(backend: Backend) {
    let prefix = Backend::unique_prefix("spread");
    for algorithm in [Algorithm::TokenBucket, Algorithm::FixedWindow] {
        // A fixed window is epoch aligned: this one began just now, whatever the hour.
        let window = ratelimit_tests::window_starting_now(100, Duration::from_secs(86_400));
        let policy = Policy::new("spread", [window])
            .with_algorithm(algorithm)
            .with_spread(8);
        let limiter = backend
            .limiter(Config::with_policy(policy.clone()), &prefix)
            .await;
        let key = format!("celebrity:{algorithm}");
        let mut allowed = 0;
        let context = format!("{backend:?} {algorithm}");
        for decision in concurrent_allows(&limiter, &key, 1000, &context).await {
            assert_eq!(decision.limit(), 100);
            allowed += u32::from(decision.allowed());
        }
        assert_eq!(allowed, 100, "{backend:?} {algorithm}");
        if backend != Backend::Memory {
            let keys: Vec<String> = backend
                .keys_under(&prefix)
                .into_iter()
                .filter(|k| k.contains(&key))
                .collect();
            assert_eq!(keys.len(), 8, "one Redis key a sub-counter: {keys:?}");
            let slots: BTreeSet<u16> = keys.iter().map(|k| key_slot(k)).collect();
            assert!(slots.len() >= 6, "sub-counters share slots: {slots:?}");
        }
        if backend == Backend::Cluster {
            let urls = backend.redis_urls();
            let without = urls
                .iter()
                .filter(|url| {
                    !ratelimit_tests::all_keys(std::slice::from_ref(url))
                        .iter()
                        .any(|k| k.contains(&key))
                })
                .count();
            assert!(
                without < urls.len() - 1,
                "the sub-counters sit on at least two masters"
            );
        }
    }
    backend.assert_every_key_expires(&prefix);
}

for_each_backend!(a_spread_key_is_exact_and_lands_on_several_slots);

/// The example server's `/admin/hot-keys?raw=true`, on its operator listener, names the hot
/// client and its rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_route_reports_the_hot_client() {
    let config = example_api_server::load_config(None)
        .expect("the demo config")
        .with_hot_keys(HotKeyConfig::default().with_sample_every(1));
    let limiter = ratelimit_core::RateLimiter::new(config)
        .await
        .expect("memory");
    let server = example_api_server::server(limiter);
    let addr = ratelimit_tests::serve(server.public).await;
    let admin = ratelimit_tests::serve(server.admin).await;
    let client = reqwest::Client::new();
    let mut denied = 0;
    for _ in 0..60 {
        let response = ratelimit_tests::http_get(&client, format!("http://{addr}/api/hello")).await;
        denied += u32::from(response.status() == 429);
    }
    assert_eq!(denied, 50, "the demo's hello rule allows 10 a minute");
    let report: serde_json::Value =
        ratelimit_tests::http_json(&client, format!("http://{admin}/admin/hot-keys?raw=true"))
            .await;
    assert_eq!(report["enabled"], true);
    let top = &report["keys"][0];
    assert_eq!(top["key"], "127.0.0.1", "{report}");
    assert_eq!(top["policy"], "hello", "{report}");
    assert_eq!(top["hot"], true, "{report}");
    let denied_share = top["denied_share"].as_f64().expect("a number");
    assert!((0.8..=0.85).contains(&denied_share), "{report}");
}
