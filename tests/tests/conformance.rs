//! One behaviour, three backends: every test here runs unchanged against the in-memory backend,
//! a standalone Redis and a 3-master Redis Cluster (see `for_each_backend!`).

use std::time::Duration;

use ratelimit_core::{Algorithm, Config, Error, FakeClock, Policy, RateLimiter, Source, Window};
use ratelimit_tests::{
    Backend, concurrent_allows, for_each_backend, key_slot, window_starting_now,
};

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::SlidingWindow,
    Algorithm::TokenBucket,
    Algorithm::FixedWindow,
    Algorithm::SlidingCounter,
];

/// Long windows, so that no refill or boundary happens while a test runs. Fixed windows and
/// sliding counters are aligned to the epoch: theirs is a day long and began two seconds ago,
/// whatever the hour the suite runs at (see `window_starting_now`).
fn long_window(max_requests: u64, algorithm: Algorithm) -> Window {
    match algorithm {
        Algorithm::FixedWindow | Algorithm::SlidingCounter => {
            window_starting_now(max_requests, Duration::from_secs(86_400))
        }
        _ => Window::per_hour(max_requests),
    }
}

fn expected_source(backend: Backend) -> Source {
    match backend {
        Backend::Memory => Source::Memory,
        _ => Source::Redis,
    }
}

/// 1000 concurrent callers on one key with a limit of 100: exactly 100 pass, for every
/// algorithm, single- and multi-window.
async fn exactly_the_limit_under_1000_concurrent_callers(backend: Backend) {
    let prefix = Backend::unique_prefix("concurrent");
    for algorithm in ALGORITHMS {
        for multi in [false, true] {
            let mut config =
                Config::new(100, long_window(100, algorithm).duration()).with_algorithm(algorithm);
            if multi {
                // Twice an epoch-aligned window: its period ends a window from now at the soonest.
                let short = long_window(100, algorithm).duration();
                config = config.with_window(Window::new(1000, 2 * short));
            }
            let limiter = backend.limiter(config, &prefix).await;
            let key = format!("hot:{algorithm}:{multi}");
            let mut allowed = 0;
            let context = format!("{backend:?} {algorithm}");
            for decision in concurrent_allows(&limiter, &key, 1000, &context).await {
                // A hot key's denials may come from the hot-key shield, never its admissions.
                if decision.allowed() || backend == Backend::Memory {
                    assert_eq!(decision.source(), expected_source(backend));
                } else {
                    assert!(
                        matches!(decision.source(), Source::Redis | Source::Cache),
                        "{backend:?} {algorithm}: {:?}",
                        decision.source()
                    );
                }
                allowed += u32::from(decision.allowed());
            }
            assert_eq!(
                allowed, 100,
                "{backend:?} {algorithm} multi={multi}: allowed {allowed} of 1000"
            );
            let after = limiter.peek(&key).await.expect("peek");
            assert_eq!(after.remaining(), 0);
            assert!(!after.allowed());
        }
    }
    backend.assert_every_key_expires(&prefix);
}

/// `allow_n` takes all or nothing, `peek` takes nothing, `reset` gives everything back.
async fn allow_n_peek_and_reset_behave_as_documented(backend: Backend) {
    let prefix = Backend::unique_prefix("ops");
    for algorithm in ALGORITHMS {
        let window = long_window(10, algorithm);
        let limiter = backend
            .limiter(
                Config::new(10, window.duration()).with_algorithm(algorithm),
                &prefix,
            )
            .await;
        documented_operations(&limiter, algorithm, window, &format!("{backend:?}")).await;
    }
    backend.assert_every_key_expires(&prefix);
}

/// The same operations in memory with the clock placed at every hour of the day (and the
/// minutes around the hours that once failed), under a day-long window aligned to midnight UTC
/// as it is, not one chosen to begin now: the assertions hold at any phase of the window.
#[tokio::test]
async fn documented_operations_hold_at_every_hour() {
    let midnight = 20_424 * 86_400 * 1_000_000u64; // 2025-12-02T00:00:00Z
    let mut offsets: Vec<u64> = (0..24).map(|h| h * 3600).collect();
    offsets.extend([3 * 3600 + 58 * 60, 4 * 3600 - 1, 86_399, 86_400 - 120, 1]);
    for offset in offsets {
        for micros in [0, 999_999] {
            let at = midnight + offset * 1_000_000 + micros;
            for algorithm in ALGORITHMS {
                let window = Window::new(10, Duration::from_secs(86_400));
                let limiter = RateLimiter::new(
                    Config::new(10, window.duration())
                        .with_algorithm(algorithm)
                        .with_clock(FakeClock::new(at)),
                )
                .await
                .expect("limiter");
                documented_operations(&limiter, algorithm, window, &format!("at {at} µs")).await;
            }
        }
    }
}

async fn documented_operations(
    limiter: &RateLimiter,
    algorithm: Algorithm,
    window: Window,
    context: &str,
) {
    let key = format!("ops:{algorithm}");
    let fresh = limiter.peek(&key).await.expect("peek");
    assert!(fresh.allowed());
    assert_eq!(fresh.remaining(), 10);
    assert_eq!(fresh.limit(), 10);

    let d = limiter.allow_n(&key, 4).await.expect("allow_n");
    assert!(d.allowed(), "{context} {algorithm}");
    assert_eq!(d.remaining(), 6, "{context} {algorithm}");
    assert_eq!(d.retry_after(), None);
    // A sliding counter's count still weighs during the next window.
    let longest_reset = match algorithm {
        Algorithm::SlidingCounter => 2 * window.duration(),
        _ => window.duration(),
    };
    assert!(
        d.reset_after() > Duration::ZERO && d.reset_after() <= longest_reset,
        "{context} {algorithm}: {d:?}"
    );

    let peeked = limiter.peek(&key).await.expect("peek");
    assert!(peeked.allowed());
    assert_eq!(
        peeked.remaining(),
        6,
        "{context} {algorithm}: peek must not consume"
    );

    let too_many = limiter.allow_n(&key, 7).await.expect("allow_n");
    assert!(!too_many.allowed(), "{context} {algorithm}");
    assert_eq!(
        too_many.remaining(),
        6,
        "{context} {algorithm}: a denied request takes nothing"
    );
    let retry = too_many.retry_after().expect("a denial says when to retry");
    // A spent sliding counter can wait for the end of this window and most of the next one.
    assert!(
        retry > Duration::ZERO && retry <= longest_reset,
        "{context} {algorithm}: retry after {retry:?}"
    );

    let rest = limiter.allow_n(&key, 6).await.expect("allow_n");
    assert!(rest.allowed());
    assert_eq!(rest.remaining(), 0);
    let empty = limiter.allow(&key).await.expect("allow");
    assert!(!empty.allowed());
    assert_eq!(empty.remaining(), 0);

    let reset = limiter.reset(&key).await.expect("reset");
    assert!(reset.allowed());
    assert_eq!(reset.remaining(), 10);
    assert_eq!(limiter.peek(&key).await.expect("peek").remaining(), 10);
    assert_eq!(
        limiter.allow(&key).await.expect("allow").remaining(),
        9,
        "{context} {algorithm}: usable again after reset"
    );

    match limiter.allow_n(&key, 11).await {
        Err(Error::CostAboveLimit {
            cost: 11,
            limit: 10,
        }) => {}
        other => panic!("{context} {algorithm}: a cost above the limit is an error, got {other:?}"),
    }
    let zero = limiter.allow_n(&key, 0).await.expect("allow_n(0)");
    assert!(zero.allowed());
    assert_eq!(
        zero.remaining(),
        9,
        "{context} {algorithm}: a zero cost takes nothing"
    );
}

/// Several windows are all or nothing: a request one window refuses is recorded in none.
async fn multi_window_is_all_or_nothing(backend: Backend) {
    let prefix = Backend::unique_prefix("multi");
    for algorithm in ALGORITHMS {
        let short = long_window(3, algorithm);
        let long = Window::new(5, short.duration() * 2);
        let both = Policy::new("aon", [short, long]).with_algorithm(algorithm);
        // The same name and algorithm with only the long window reads the same state.
        let long_only = Policy::new("aon", [long]).with_algorithm(algorithm);
        let limiter = backend
            .limiter(Config::with_policy(both.clone()), &prefix)
            .await;
        let key = "tenant:1";

        let first = limiter.allow_with(&both, key, 2).await.expect("allow");
        assert!(first.allowed());
        assert_eq!(
            first.window_index(),
            0,
            "{algorithm}: the short window binds"
        );
        assert_eq!((first.limit(), first.remaining()), (3, 1));

        let refused = limiter.allow_with(&both, key, 2).await.expect("allow");
        assert!(!refused.allowed(), "{algorithm}");
        assert_eq!(refused.window_index(), 0);
        assert_eq!(
            remaining(&limiter, &long_only, key).await,
            3,
            "{algorithm}: the refused request must not count in the long window"
        );

        let last = limiter.allow_with(&both, key, 1).await.expect("allow");
        assert!(last.allowed());
        assert_eq!(remaining(&limiter, &long_only, key).await, 2);
        // Now the long window binds once the short one is reset.
        limiter
            .reset_with(&short_only(&both), key)
            .await
            .expect("reset");
        let d = limiter.peek_with(&both, key).await.expect("peek");
        if algorithm == Algorithm::SlidingWindow {
            // A sliding log is one log for all windows: resetting it resets both.
            assert_eq!(d.remaining(), 3);
        } else {
            assert_eq!((d.window_index(), d.remaining()), (1, 2), "{algorithm}");
        }
    }
    backend.assert_every_key_expires(&prefix);
}

fn short_only(policy: &Policy) -> Policy {
    Policy::new(policy.name().to_owned(), [policy.windows()[0]]).with_algorithm(policy.algorithm())
}

/// Policies keep apart: the same identity under two policy names has two quotas.
async fn policies_do_not_share_state(backend: Backend) {
    let prefix = Backend::unique_prefix("policies");
    let limiter = backend
        .limiter(Config::new(2, Duration::from_secs(3600)), &prefix)
        .await;
    let other = Policy::new("other", [Window::per_hour(1)]);
    assert!(limiter.allow("same").await.expect("allow").allowed());
    assert!(limiter.allow("same").await.expect("allow").allowed());
    assert!(!limiter.allow("same").await.expect("allow").allowed());
    assert!(
        limiter
            .allow_with(&other, "same", 1)
            .await
            .expect("allow")
            .allowed()
    );
    assert!(
        !limiter
            .allow_with(&other, "same", 1)
            .await
            .expect("allow")
            .allowed()
    );
    backend.assert_every_key_expires(&prefix);
}

/// Permits `policy` has left for `key`, peeked (nothing taken).
async fn remaining(limiter: &RateLimiter, policy: &Policy, key: &str) -> u64 {
    let decision = limiter.peek_with(policy, key).await;
    decision.expect("peek").remaining()
}

/// Identities with braces, 10 KB, or binary bytes work, are counted apart, and never choose a
/// key's shape or slot.
async fn hostile_identities_are_hashed(backend: Backend) {
    let prefix = Backend::unique_prefix("hostile");
    let policy = Policy::new(
        "hostile",
        [
            Window::per_hour(1),
            Window::new(5, Duration::from_secs(7200)),
        ],
    )
    .with_algorithm(Algorithm::TokenBucket);
    let limiter = backend
        .limiter(Config::with_policy(policy.clone()), &prefix)
        .await;
    let identities: Vec<Vec<u8>> = vec![
        b"{slot-1}".to_vec(),
        b"a}b{c".to_vec(),
        vec![b'x'; 10 * 1024],
        [b'x'; 10 * 1024].iter().chain(b"y").copied().collect(),
        vec![0, 255, 1, 254, b'{', b'\n'],
        "ключ".as_bytes().to_vec(),
        b"plain:user".to_vec(),
    ];
    for id in &identities {
        assert!(limiter.allow(id).await.expect("allow").allowed());
        assert!(
            !limiter.allow(id).await.expect("allow").allowed(),
            "each identity has its own quota"
        );
    }
    if backend == Backend::Memory {
        return;
    }
    let keys = backend.keys_under(&prefix);
    // Two keys a decision (one bucket a window), one decision an identity.
    assert_eq!(keys.len(), 2 * identities.len(), "{keys:?}");
    for key in &keys {
        assert!(
            key.len() <= prefix.len() + 120,
            "a hostile identity made a large key: {key}"
        );
        assert_eq!(key.matches('{').count(), 1, "{key}");
        assert_eq!(key.matches('}').count(), 1, "{key}");
        assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{key:?}");
    }
    assert!(keys.iter().any(|k| k.contains("{hostile:plain:user}")));
    assert_eq!(
        keys.iter().filter(|k| k.contains("{hostile:#")).count(),
        2 * (identities.len() - 1),
        "every identity but the plain one is hashed"
    );
    // Every key of one decision lands in one slot (the script ran without CROSSSLOT, too).
    for pair in keys.chunks(2) {
        let base = |k: &str| k[..k.find('}').unwrap_or(k.len())].to_owned();
        assert_eq!(base(&pair[0]), base(&pair[1]));
        assert_eq!(key_slot(&pair[0]), key_slot(&pair[1]), "{pair:?}");
    }
    backend.assert_every_key_expires(&prefix);
}

/// A denied request is answered with when to come back, and coming back then succeeds.
async fn retry_after_is_honest(backend: Backend) {
    let prefix = Backend::unique_prefix("retry");
    for algorithm in ALGORITHMS {
        let window = Window::new(2, Duration::from_millis(400));
        let limiter = backend
            .limiter(
                Config::with_policy(Policy::new("retry", [window]).with_algorithm(algorithm)),
                &prefix,
            )
            .await;
        let key = "retry:1";
        // The denial that ends the burst is the one read: one more call could fall in the next
        // window (a 400 ms window turns over during a slow run) and be allowed.
        let denied = loop {
            let decision = limiter.allow(key).await.expect("allow");
            if !decision.allowed() {
                break decision;
            }
        };
        let retry = denied.retry_after().expect("retry_after");
        // A spent sliding counter waits for the next window and for enough of this one to
        // slide out of it.
        let longest_wait = match algorithm {
            Algorithm::SlidingCounter => 2 * window.duration(),
            _ => window.duration(),
        };
        assert!(retry <= longest_wait, "{algorithm}: {retry:?}");
        if backend == Backend::Memory {
            // The system clock moves on its own; no fake clock here.
        }
        tokio::time::sleep(retry + Duration::from_millis(5)).await;
        assert!(
            limiter.allow(key).await.expect("allow").allowed(),
            "{algorithm}: allowed after retry_after"
        );
    }
    backend.assert_every_key_expires(&prefix);
}

for_each_backend!(
    exactly_the_limit_under_1000_concurrent_callers,
    allow_n_peek_and_reset_behave_as_documented,
    multi_window_is_all_or_nothing,
    policies_do_not_share_state,
    hostile_identities_are_hashed,
    retry_after_is_honest,
);

/// The limiter is meant to be shared: cheap to clone, and usable from any task.
#[test]
fn limiter_is_send_sync_and_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<RateLimiter>();
}
