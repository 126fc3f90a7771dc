//! Spreading one key's counter over sub-counters: never over the limit, what it costs in false
//! denials, and the decision still speaks of the whole policy.

use std::time::Duration;

use ratelimit_core::{Algorithm, Config, FakeClock, Policy, PolicyError, RateLimiter, Window};

fn limiter(clock: &FakeClock) -> RateLimiter {
    RateLimiter::new_lazy(Config::new(1_000, Duration::from_secs(60)).with_clock(clock.clone()))
        .expect("a valid config")
}

/// Whether one request of `key` under `policy` is admitted (the memory backend never fails).
async fn allowed(limiter: &RateLimiter, policy: &Policy, key: &str) -> bool {
    let decision = limiter.allow_with(policy, key, 1).await;
    decision.expect("memory").allowed()
}

/// A policy `name` of one `window` on `algorithm`, its counter spread over `spread`.
fn spread_policy(name: &str, window: Window, algorithm: Algorithm, spread: u32) -> Policy {
    Policy::new(name, [window])
        .with_algorithm(algorithm)
        .with_spread(spread)
}

#[tokio::test]
async fn a_spread_key_admits_exactly_its_limit() {
    let clock = FakeClock::new(1_000_000_000);
    let limiter = limiter(&clock);
    for algorithm in [Algorithm::TokenBucket, Algorithm::FixedWindow] {
        for spread in [2, 3, 4, 7] {
            let policy = spread_policy("spread", Window::per_hour(100), algorithm, spread);
            let key = format!("k-{algorithm}-{spread}");
            let mut admitted = 0;
            for _ in 0..300 {
                let decision = limiter.allow_with(&policy, &key, 1).await.expect("memory");
                assert_eq!(decision.limit(), 100, "the whole policy's limit");
                assert!(decision.remaining() <= 100);
                admitted += u64::from(decision.allowed());
            }
            assert_eq!(admitted, 100, "{algorithm} spread over {spread}");
        }
    }
}

#[tokio::test]
async fn under_the_limit_one_caller_is_never_denied() {
    // Requests take the sub-counters in turn, so a lone caller under its rate never meets an
    // empty sub-counter while another is full.
    let clock = FakeClock::new(1_000_000_000);
    let limiter = limiter(&clock);
    let policy = spread_policy("steady", Window::per_second(100), Algorithm::TokenBucket, 4);
    let mut denied = 0;
    for _ in 0..2_000 {
        clock.advance(Duration::from_millis(11)); // ~91 a second
        denied += u64::from(!allowed(&limiter, &policy, "k").await);
    }
    assert_eq!(denied, 0);
}

#[tokio::test]
async fn interleaved_keys_cost_few_false_denials() {
    // Many keys share the turn counter, so one key's requests meet its sub-counters in an
    // irregular order; the retry on the next sub-counter absorbs most of it. Measured against
    // the same traffic on a single counter (random arrivals deny some requests anyway).
    let mut rates = Vec::new();
    for spread in [1, 4, 8] {
        let clock = FakeClock::new(1_000_000_000);
        let limiter = limiter(&clock);
        let policy = spread_policy(
            "mixed",
            Window::per_second(40),
            Algorithm::TokenBucket,
            spread,
        );
        let (mut offered, mut denied) = (0u64, 0u64);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        // 10 keys in random order, each at ~95% of its rate, for 17 s.
        for _ in 0..6_400 {
            clock.advance(Duration::from_micros(2_632));
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let key = format!("user:{}", seed % 10);
            offered += 1;
            let decision = limiter.allow_with(&policy, &key, 1).await.expect("memory");
            denied += u64::from(!decision.allowed());
        }
        let rate = denied as f64 / offered as f64;
        println!(
            "spread {spread}, 10 keys at 95% of their rate: {denied}/{offered} denied ({:.2}%)",
            rate * 100.0
        );
        rates.push(rate);
    }
    assert!(rates[1] - rates[0] < 0.02, "spread 4 costs {:?}", rates);
    assert!(rates[2] - rates[0] < 0.05, "spread 8 costs {:?}", rates);
}

#[test]
fn spread_is_validated() {
    let base = Policy::new("p", [Window::per_second(10)]).with_algorithm(Algorithm::TokenBucket);
    assert_eq!(
        base.clone().with_spread(0).validate(),
        Err(PolicyError::Spread(0))
    );
    assert_eq!(
        base.clone().with_spread(65).validate(),
        Err(PolicyError::Spread(65))
    );
    assert!(matches!(
        base.clone().with_spread(11).validate(),
        Err(PolicyError::SpreadAboveLimit {
            spread: 11,
            limit: 10
        })
    ));
    assert!(matches!(
        base.clone().with_cost(3).with_spread(4).validate(),
        Err(PolicyError::SpreadAboveLimit { .. })
    ));
    assert_eq!(
        Policy::new("p", [Window::per_second(10)])
            .with_spread(2)
            .validate(),
        Err(PolicyError::SpreadAlgorithm)
    );
    assert!(base.with_spread(10).validate().is_ok());
}

#[test]
fn spread_is_read_from_yaml_and_errors_name_the_line() {
    let yaml = "rate_limiter:\n  algorithm: fixed_window\n  spread: 4\n  windows:\n    - max_requests: 100\n      duration: 1m\n";
    let config = Config::from_yaml_str(yaml).expect("valid");
    assert_eq!(config.policy().spread(), 4);
    let counter = yaml.replace("fixed_window", "sliding_counter");
    let error = Config::from_yaml_str(&counter).expect_err("only buckets and fixed windows spread");
    assert!(error.to_string().contains("rate_limiter.spread"), "{error}");
    let counter = counter.replace("  spread: 4\n", "");
    let config = Config::from_yaml_str(&counter).expect("sliding_counter is an algorithm");
    assert_eq!(config.policy().algorithm(), Algorithm::SlidingCounter);
    let broken = "rate_limiter:\n  windows:\n    - max_requests: 100\n      duration: 1m\n  rules:\n    - name: r\n      spread: 2\n";
    let error = Config::from_yaml_str(broken).expect_err("sliding window cannot spread");
    let text = error.to_string();
    assert!(text.contains("rules[0].spread"), "{text}");
    assert!(text.contains("line 7"), "{text}");
}

#[tokio::test]
async fn reset_clears_every_sub_counter() {
    let clock = FakeClock::new(1_000_000_000);
    let limiter = limiter(&clock);
    let policy = spread_policy("r", Window::per_hour(8), Algorithm::FixedWindow, 4);
    for _ in 0..8 {
        assert!(allowed(&limiter, &policy, "k").await);
    }
    assert!(!allowed(&limiter, &policy, "k").await);
    limiter.reset_with(&policy, "k").await.expect("memory");
    let mut admitted = 0;
    for _ in 0..20 {
        admitted += u64::from(allowed(&limiter, &policy, "k").await);
    }
    assert_eq!(admitted, 8);
}
