//! Exactness: Redis decisions checked against a reference sliding-log model under real time,
//! the in-memory twins against Redis step by step, clocks that lie, the documented 2x of fixed
//! windows at a boundary, and a TTL on every key.
//!
//! Randomized tests print their seed; set `EXACTNESS_SEED` to replay one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ratelimit_core::{
    Algorithm, Config, Decision, FakeClock, Identity, KeyBuilder, Policy, RateLimiter, Window,
};
use ratelimit_tests::{
    Backend, all_keys, keys_without_ttl, shared_cluster, shared_standalone, spawn_allows,
    window_starting_now,
};

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::SlidingWindow,
    Algorithm::TokenBucket,
    Algorithm::FixedWindow,
    Algorithm::SlidingCounter,
];

const SECOND_US: u64 = 1_000_000;

/// The seed of a randomized test: `EXACTNESS_SEED` when set, random otherwise.
fn seed() -> u64 {
    ratelimit_tests::seed_from_env("EXACTNESS_SEED")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).expect("duration fits in u64 microseconds")
}

/// This machine's wall clock, in µs since the epoch.
fn wall_micros() -> u64 {
    micros(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("wall clock after the epoch"),
    )
}

/// A connection to the shared standalone server, apart from any limiter's, for reading `TIME`.
async fn time_connection() -> redis::aio::MultiplexedConnection {
    shared_standalone()
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connecting to read TIME")
}

/// Redis `TIME`, in µs since the epoch: the clock every script reads.
async fn redis_time(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (secs, us): (u64, u64) = redis::cmd("TIME").query_async(conn).await.expect("TIME");
    secs * SECOND_US + us
}

// ---------------------------------------------------------------------------------------------
// 1. The sliding window against a reference sliding log, in real (Redis) time.
// ---------------------------------------------------------------------------------------------

/// Drives `windows` on standalone Redis with a seeded random schedule, bracketing each call's
/// script time between two `TIME` reads, and checks every answer the model is sure about.
async fn sliding_window_matches_the_model(name: &str, windows: &[Window]) {
    const REQUESTS: usize = 300;
    let seed = seed();
    eprintln!("{name}: seed {seed} (EXACTNESS_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let backend = Backend::Standalone;
    let prefix = Backend::unique_prefix(name);
    let policy = Policy::new("model", windows.iter().copied());
    let limiter = backend.limiter(Config::with_policy(policy), &prefix).await;
    let mut time = time_connection().await;
    let key = "model:1";
    let longest = windows
        .iter()
        .map(|w| micros(w.duration()))
        .max()
        .expect("at least one window");

    // One entry a permit admitted by Redis, with the bracket its script time lies in.
    let mut log: Vec<(u64, u64)> = Vec::new();
    let (mut ambiguous, mut allowed, mut denied, mut widest) = (0usize, 0usize, 0usize, 0u64);
    for step in 0..REQUESTS {
        let gap = if rng.random_bool(0.5) {
            0
        } else {
            rng.random_range(1..=60)
        };
        if gap > 0 {
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
        let cost: u64 = rng.random_range(1..=2);

        let a = redis_time(&mut time).await;
        let decision = limiter
            .allow_n(key, cost)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}, {name}, step {step}: {e}"));
        let b = redis_time(&mut time).await;
        assert!(a <= b, "seed {seed}: Redis TIME went backwards ({a} > {b})");
        widest = widest.max(b - a);
        // Entries that can no longer count in any window, now or later.
        log.retain(|&(_, hi)| hi + longest > a);

        let mut certainly_allowed = true;
        let mut certainly_denied = false;
        // Bounds of the binding window's `remaining` if the request is admitted.
        let (mut remaining_low, mut remaining_high) = (u64::MAX, u64::MAX);
        let mut counts = Vec::new();
        for w in windows {
            let len = micros(w.duration());
            // At most: every entry that may still be inside; at least: every entry surely inside.
            let most = log.iter().filter(|&&(_, hi)| hi + len > a).count() as u64;
            let least = log.iter().filter(|&&(lo, _)| lo + len > b).count() as u64;
            counts.push((least, most));
            if most + cost > w.max_requests() {
                certainly_allowed = false;
            }
            if least + cost > w.max_requests() {
                certainly_denied = true;
            }
            remaining_low = remaining_low.min(w.max_requests().saturating_sub(most + cost));
            remaining_high = remaining_high.min(w.max_requests().saturating_sub(least + cost));
        }
        let context = || {
            format!(
                "seed {seed}, {name}, step {step}: cost {cost}, TIME bracket [{a}, {b}], \
                 (least, most) in each window {counts:?}, decision {decision:?}"
            )
        };
        if certainly_allowed {
            assert!(decision.allowed(), "false denial: {}", context());
        } else if certainly_denied {
            assert!(
                !decision.allowed(),
                "admitted over the limit: {}",
                context()
            );
        } else {
            ambiguous += 1;
        }

        if decision.allowed() {
            allowed += 1;
            assert!(
                (remaining_low..=remaining_high).contains(&decision.remaining()),
                "remaining {} outside [{remaining_low}, {remaining_high}]: {}",
                decision.remaining(),
                context()
            );
            assert_eq!(decision.retry_after(), None, "{}", context());
            log.extend(std::iter::repeat_n((a, b), cost as usize));
        } else {
            denied += 1;
            let retry = decision.retry_after().expect("a denial says when to retry");
            assert!(
                retry > Duration::ZERO && micros(retry) <= longest,
                "retry_after {retry:?}: {}",
                context()
            );
        }
    }
    eprintln!(
        "{name}: seed {seed}: {allowed} allowed, {denied} denied, {ambiguous} ambiguous of \
         {REQUESTS} ({:.1}%), widest TIME bracket {widest} µs",
        100.0 * ambiguous as f64 / REQUESTS as f64
    );
    assert!(
        ambiguous * 10 < REQUESTS,
        "seed {seed}, {name}: {ambiguous} of {REQUESTS} requests were ambiguous (widest bracket \
         {widest} µs): the check is too weak"
    );
    assert!(
        allowed >= 5 && denied >= 5,
        "seed {seed}, {name}: {allowed} allowed, {denied} denied: the schedule tested nothing"
    );
    backend.assert_every_key_expires(&prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sliding_window_single_matches_reference_log() {
    sliding_window_matches_the_model(
        "model-single",
        &[Window::new(5, Duration::from_millis(700))],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sliding_window_multi_matches_reference_log() {
    sliding_window_matches_the_model(
        "model-multi",
        &[
            Window::new(4, Duration::from_millis(400)),
            Window::new(7, Duration::from_millis(1500)),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. The in-memory twins answer as the scripts do, standalone and cluster.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Op {
    Allow(usize, u64),
    Peek(usize),
    Reset(usize),
    /// Resets only the first window (same policy name and algorithm).
    ResetFirst(usize),
}

fn twin_policy(algorithm: Algorithm, multi: bool) -> Policy {
    // Long enough that nothing refills or crosses a boundary while the test runs; fixed windows
    // and sliding counters are epoch aligned, so theirs begin now, whatever the hour.
    let (first, second) = match algorithm {
        Algorithm::FixedWindow | Algorithm::SlidingCounter => {
            let day = window_starting_now(10, Duration::from_secs(86_400)).duration();
            (day, 2 * day)
        }
        _ => (Duration::from_secs(3_600), Duration::from_secs(3 * 3_600)),
    };
    let mut windows = vec![Window::new(10, first)];
    if multi {
        windows.push(Window::new(16, second));
    }
    Policy::new(format!("twins-{}", usize::from(multi) + 1), windows).with_algorithm(algorithm)
}

async fn apply(limiter: &RateLimiter, first_only: &Policy, op: Op) -> Decision {
    let result = match op {
        Op::Allow(k, cost) => limiter.allow_n(format!("twin:{k}"), cost).await,
        Op::Peek(k) => limiter.peek(format!("twin:{k}")).await,
        Op::Reset(k) => limiter.reset(format!("twin:{k}")).await,
        Op::ResetFirst(k) => limiter.reset_with(first_only, format!("twin:{k}")).await,
    };
    result.unwrap_or_else(|e| panic!("{op:?} on {:?}: {e}", limiter.uses_redis()))
}

fn summary(d: &Decision) -> (bool, u64, u64, usize) {
    (d.allowed(), d.remaining(), d.limit(), d.window_index())
}

async fn twins_agree(algorithm: Algorithm) {
    const OPS: usize = 200;
    let seed = seed();
    eprintln!("twins {algorithm}: seed {seed} (EXACTNESS_SEED={seed} replays it)");
    for multi in [false, true] {
        let policy = twin_policy(algorithm, multi);
        let first_only =
            Policy::new(policy.name().to_owned(), [policy.windows()[0]]).with_algorithm(algorithm);
        let prefix = Backend::unique_prefix(&format!("twins-{algorithm}"));
        // Frozen at the current time: the memory twin sees no time pass at all.
        let memory = Backend::Memory
            .limiter(
                Config::with_policy(policy.clone()).with_clock(FakeClock::new(wall_micros())),
                &prefix,
            )
            .await;
        let standalone = Backend::Standalone
            .limiter(Config::with_policy(policy.clone()), &prefix)
            .await;
        let cluster = Backend::Cluster
            .limiter(Config::with_policy(policy.clone()), &prefix)
            .await;

        let mut rng = StdRng::seed_from_u64(seed ^ u64::from(multi));
        let (mut allowed, mut denied, mut bindings) = (0, 0, BTreeSet::new());
        for step in 0..OPS {
            let k = rng.random_range(0..3);
            let op = match rng.random_range(0..100) {
                0..62 => Op::Allow(k, rng.random_range(1..=3)),
                62..87 => Op::Peek(k),
                87..92 => Op::Reset(k),
                _ if multi => Op::ResetFirst(k),
                _ => Op::Peek(k),
            };
            let expected = apply(&memory, &first_only, op).await;
            if matches!(op, Op::Allow(..)) {
                if expected.allowed() {
                    allowed += 1;
                } else {
                    denied += 1;
                }
            }
            bindings.insert(expected.window_index());
            for (name, limiter) in [("standalone", &standalone), ("cluster", &cluster)] {
                let got = apply(limiter, &first_only, op).await;
                assert_eq!(
                    summary(&got),
                    summary(&expected),
                    "seed {seed}, {algorithm}, {} window(s), step {step}, {op:?}: {name} \
                     (allowed, remaining, limit, window_index) differs from memory\n\
                     memory: {expected:?}\n{name}: {got:?}",
                    policy.windows().len()
                );
            }
        }
        assert!(
            allowed > 0 && denied > 0,
            "seed {seed}, {algorithm}: {allowed} allowed, {denied} denied: nothing compared"
        );
        // A sliding log is one log for all windows (resetting the first resets both), so there
        // the short window always binds; buckets and counters reset apart.
        if multi && algorithm != Algorithm::SlidingWindow {
            assert_eq!(
                bindings.len(),
                2,
                "seed {seed}, {algorithm}: both windows should bind at some step"
            );
        }
        Backend::Standalone.assert_every_key_expires(&prefix);
        Backend::Cluster.assert_every_key_expires(&prefix);
    }
}

ratelimit_tests::tokio_test_cases!(twins_agree {
    twins_agree_sliding_window => Algorithm::SlidingWindow,
    twins_agree_token_bucket => Algorithm::TokenBucket,
    twins_agree_fixed_window => Algorithm::FixedWindow,
    twins_agree_sliding_counter => Algorithm::SlidingCounter,
});

// ---------------------------------------------------------------------------------------------
// 3. Client clocks never reach a Redis decision.
// ---------------------------------------------------------------------------------------------

async fn skewed_client_clocks_change_nothing(backend: Backend) {
    const HOUR_US: u64 = 3_600 * SECOND_US;
    let window = Duration::from_secs(2);
    let prefix = Backend::unique_prefix("skew");
    let now = wall_micros();
    let ahead = backend
        .limiter(
            Config::new(10, window).with_clock(FakeClock::new(now + HOUR_US)),
            &prefix,
        )
        .await;
    let behind = backend
        .limiter(
            Config::new(10, window).with_clock(FakeClock::new(now - HOUR_US)),
            &prefix,
        )
        .await;
    let key = "skew:1";

    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let limiter = if i % 2 == 0 {
                ahead.clone()
            } else {
                behind.clone()
            };
            tokio::spawn(async move {
                let decision = limiter.allow(key).await;
                (decision, Instant::now())
            })
        })
        .collect();
    let mut decisions = Vec::new();
    for task in tasks {
        let (decision, at) = task.await.expect("task panicked");
        decisions.push((decision.unwrap_or_else(|e| panic!("{backend:?}: {e}")), at));
    }
    let allowed: Vec<_> = decisions.iter().filter(|(d, _)| d.allowed()).collect();
    assert_eq!(
        allowed.len(),
        10,
        "{backend:?}: clocks an hour apart must share one limit of 10"
    );
    let (last_allowed, _) = allowed
        .iter()
        .max_by_key(|(_, at)| *at)
        .expect("some were allowed");
    for (d, _) in &allowed {
        assert!(
            d.reset_after() > Duration::ZERO && d.reset_after() <= window,
            "{backend:?}: reset_after {:?} of an allowed decision is not within the window",
            d.reset_after()
        );
    }
    assert!(last_allowed.reset_after() <= window, "{last_allowed:?}");

    let mut retry_at = None;
    for (d, at) in decisions.iter().filter(|(d, _)| !d.allowed()) {
        let retry = d.retry_after().expect("a denial says when to retry");
        assert!(
            retry > Duration::ZERO && retry <= window,
            "{backend:?}: retry_after {retry:?} is not within the window (clock leak?)"
        );
        retry_at = retry_at.max(Some(*at + retry));
    }
    for limiter in [&ahead, &behind] {
        let peeked = limiter.peek(key).await.expect("peek");
        assert!(!peeked.allowed() && peeked.remaining() == 0, "{peeked:?}");
    }
    let retry_at = retry_at.expect("20 of 30 were denied");
    tokio::time::sleep_until((retry_at + Duration::from_millis(10)).into()).await;
    let again = behind.allow(key).await.expect("allow");
    assert!(
        again.allowed(),
        "{backend:?}: still denied after retry_after: {again:?}"
    );
    backend.assert_every_key_expires(&prefix);
}

ratelimit_tests::tokio_test_cases!(skewed_client_clocks_change_nothing {
    skewed_client_clocks_change_nothing_standalone => Backend::Standalone,
    skewed_client_clocks_change_nothing_cluster => Backend::Cluster,
});

// ---------------------------------------------------------------------------------------------
// 4. Fixed windows admit up to twice the limit across a boundary; sliding windows do not.
// ---------------------------------------------------------------------------------------------

/// Allowed counts of one burst: (fixed window, sliding window).
async fn burst(fixed: &RateLimiter, sliding: &RateLimiter, key: &str, n: usize) -> (usize, usize) {
    let (fixed_tasks, sliding_tasks) = (spawn_allows(fixed, key, n), spawn_allows(sliding, key, n));
    let mut counts = (0, 0);
    for (tasks, count) in [(fixed_tasks, &mut counts.0), (sliding_tasks, &mut counts.1)] {
        for task in tasks {
            let decision = task.await.expect("task panicked").expect("allow");
            *count += usize::from(decision.allowed());
        }
    }
    counts
}

/// Sleeps until Redis `TIME` reads at least `target` (µs).
async fn sleep_until_redis(time: &mut redis::aio::MultiplexedConnection, target: u64) {
    loop {
        let now = redis_time(time).await;
        if now >= target {
            return;
        }
        tokio::time::sleep(Duration::from_micros(target - now)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixed_window_admits_up_to_twice_the_limit_at_a_boundary() {
    const ATTEMPTS: usize = 4;
    let backend = Backend::Standalone;
    let prefix = Backend::unique_prefix("boundary");
    let config = Config::new(10, Duration::from_secs(1));
    let fixed = backend
        .limiter(
            config.clone().with_algorithm(Algorithm::FixedWindow),
            &prefix,
        )
        .await;
    let sliding = backend.limiter(config, &prefix).await;
    let mut time = time_connection().await;

    let mut missed = Vec::new();
    for attempt in 0..ATTEMPTS {
        let key = format!("boundary:{attempt}");
        // The next whole second at least 150 ms away.
        let now = redis_time(&mut time).await;
        let mut boundary = (now / SECOND_US + 1) * SECOND_US;
        if boundary - now < 150_000 {
            boundary += SECOND_US;
        }
        sleep_until_redis(&mut time, boundary - 50_000).await;
        let a1 = redis_time(&mut time).await;
        let before = burst(&fixed, &sliding, &key, 15).await;
        let b1 = redis_time(&mut time).await;
        sleep_until_redis(&mut time, boundary + 20_000).await;
        let a2 = redis_time(&mut time).await;
        let after = burst(&fixed, &sliding, &key, 15).await;
        let b2 = redis_time(&mut time).await;

        let landed = b1 < boundary && a2 >= boundary && b2 < boundary + SECOND_US;
        let spread = b2 - a1;
        if !landed || spread >= 500_000 {
            missed.push(format!(
                "attempt {attempt}: boundary {boundary}, first burst [{a1}, {b1}], second \
                 burst [{a2}, {b2}]"
            ));
            continue;
        }
        eprintln!(
            "boundary: first burst {} µs before the boundary to {} µs before, second {} µs to \
             {} µs after; {spread} µs in all",
            boundary - a1,
            boundary - b1,
            a2 - boundary,
            b2 - boundary
        );
        assert_eq!(
            (before.0, after.0),
            (10, 10),
            "fixed window: a full quota on each side of the boundary ({} allowed within \
             {spread} µs)",
            before.0 + after.0
        );
        assert_eq!(
            (before.1, after.1),
            (10, 0),
            "sliding window: one quota in any second, boundary or not"
        );
        backend.assert_every_key_expires(&prefix);
        return;
    }
    panic!("the bursts never landed around a boundary: {missed:#?}");
}

// ---------------------------------------------------------------------------------------------
// 5. Every key carries a TTL.
// ---------------------------------------------------------------------------------------------

/// `PTTL` of each key, in order, on `backend`'s Redis.
async fn pttls(backend: Backend, keys: &[String]) -> Vec<i64> {
    match backend {
        Backend::Cluster => {
            let mut conn = shared_cluster()
                .client()
                .get_async_connection()
                .await
                .expect("cluster connection");
            pttls_on(&mut conn, keys).await
        }
        _ => pttls_on(&mut time_connection().await, keys).await,
    }
}

/// `PTTL` of each key, in order, over `conn`.
async fn pttls_on(conn: &mut impl redis::aio::ConnectionLike, keys: &[String]) -> Vec<i64> {
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let ttl = redis::cmd("PTTL").arg(key).query_async(conn).await;
        out.push(ttl.unwrap_or_else(|e| panic!("PTTL {key}: {e}")));
    }
    out
}

/// The keys `policy` keeps for `id`, each with the window (ms) that bounds its TTL: the longest
/// window for a sliding log (one key), its own window for a bucket or counter (one key each),
/// twice its window for a sliding counter (the count is still weighed during the next window),
/// whose two counters a window are its even and odd windows': the one of the window it is now
/// (the policies here are well inside their windows).
fn keys_with_lifetimes(keys: &KeyBuilder, policy: &Policy, id: &str) -> Vec<(String, i64)> {
    let ms = |d: Duration| i64::try_from(d.as_millis()).expect("window in ms fits");
    let built = keys.keys(policy, Identity::new(id.as_bytes()));
    match policy.algorithm() {
        Algorithm::SlidingWindow => built
            .into_iter()
            .map(|k| (k, ms(policy.longest_window())))
            .collect(),
        Algorithm::SlidingCounter => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("the clock is after 1970")
                .as_micros();
            built
                .chunks(2)
                .zip(policy.windows())
                .map(|(pair, w)| {
                    let parity = (now / w.duration().as_micros()) % 2;
                    (pair[parity as usize].clone(), 2 * ms(w.duration()))
                })
                .collect()
        }
        _ => built
            .into_iter()
            .zip(policy.windows())
            .map(|(k, w)| (k, ms(w.duration())))
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_key_carries_a_ttl() {
    let prefix = Backend::unique_prefix("ttl");
    let keys = KeyBuilder::new(prefix.clone());
    for backend in [Backend::Standalone, Backend::Cluster] {
        // Every key that must be left, with the longest it may live (ms).
        let mut expected = BTreeMap::new();
        for algorithm in ALGORITHMS {
            for multi in [false, true] {
                let (short, long) = match algorithm {
                    Algorithm::FixedWindow | Algorithm::SlidingCounter => {
                        let day = window_starting_now(10, Duration::from_secs(86_400)).duration();
                        (day, 2 * day)
                    }
                    _ => (Duration::from_secs(3_600), Duration::from_secs(7_200)),
                };
                let mut windows = vec![Window::new(10, short)];
                if multi {
                    windows.push(Window::new(20, long));
                }
                let policy = Policy::new(
                    format!("ttl-{}-{}", algorithm.name(), windows.len()),
                    windows,
                )
                .with_algorithm(algorithm);
                let other = policy.clone().with_name(format!("{}-other", policy.name()));
                let limiter = backend
                    .limiter(Config::with_policy(policy.clone()), &prefix)
                    .await;
                let ctx = format!("{backend:?} {}", policy.name());
                let ok = |r: Result<Decision, ratelimit_core::Error>| {
                    r.unwrap_or_else(|e| panic!("{ctx}: {e}"))
                };

                ok(limiter.allow("allow").await);
                ok(limiter.allow_n("allow-n", 3).await);
                ok(limiter.allow_n("zero", 0).await);
                ok(limiter.peek("peek-only").await);
                ok(limiter.allow("allow-peek").await);
                ok(limiter.peek("allow-peek").await);
                ok(limiter.allow("reset").await);
                ok(limiter.reset("reset").await);
                ok(limiter.allow("reset-allow").await);
                ok(limiter.reset("reset-allow").await);
                ok(limiter.allow_n("reset-allow", 2).await);
                ok(limiter.allow_n("denied", 10).await);
                assert!(!ok(limiter.allow("denied").await).allowed(), "{ctx}");
                ok(limiter.reset("never-used").await);
                ok(limiter.allow_with(&other, "with", 2).await);
                ok(limiter.peek_with(&other, "with").await);
                ok(limiter.peek_with(&other, "with-peek-only").await);
                ok(limiter.allow_with(&other, "with-reset", 1).await);
                ok(limiter.reset_with(&other, "with-reset").await);

                for id in ["allow", "allow-n", "allow-peek", "reset-allow", "denied"] {
                    expected.extend(keys_with_lifetimes(&keys, &policy, id));
                }
                expected.extend(keys_with_lifetimes(&keys, &other, "with"));
            }
        }

        let present: BTreeSet<String> = all_keys(&backend.redis_urls())
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect();
        assert!(!present.is_empty(), "{backend:?}: no key under {prefix}");
        assert_eq!(
            present,
            expected.keys().cloned().collect::<BTreeSet<_>>(),
            "{backend:?}: the keys left are not those of the state kept"
        );
        let stuck: Vec<String> = keys_without_ttl(&backend.redis_urls())
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect();
        assert!(
            stuck.is_empty(),
            "{backend:?}: keys without a TTL: {stuck:?}"
        );

        let present: Vec<String> = present.into_iter().collect();
        for (key, ttl) in present.iter().zip(pttls(backend, &present).await) {
            // A token bucket's TTL is its TAT ahead of now plus 1 µs, rounded up to a ms.
            let window_ms = expected[key];
            assert!(
                ttl > 0 && ttl <= window_ms + 1,
                "{backend:?}: {key} has PTTL {ttl} ms, beyond its window ({window_ms} ms)"
            );
        }
    }
}

/// A server that forgot the scripts (`SCRIPT FLUSH`, as after a restart or a failover to a
/// replica that never loaded them) answers `NOSCRIPT`: the next decision loads its script and
/// is still Redis's, counted against the state already there, for every algorithm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_forgot_the_scripts_still_decides() {
    let server = ratelimit_tests::RedisServer::start();
    let mut admin = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("the test's redis-server answers");
    for algorithm in ALGORITHMS {
        for windows in [1, 2] {
            let hour = Duration::from_secs(3600);
            let policy = Policy::new(
                "flushed",
                (0..windows).map(|i| window_starting_now(3 + i, hour * (i as u32 + 1))),
            )
            .with_algorithm(algorithm);
            let limiter = RateLimiter::new(Config::with_policy(policy).with_redis(server.url()))
                .await
                .expect("a limiter on the test's redis-server");
            let key = format!("{algorithm:?}-{windows}");
            for round in 0..3 {
                let _: () = redis::cmd("SCRIPT")
                    .arg("FLUSH")
                    .query_async(&mut admin)
                    .await
                    .expect("SCRIPT FLUSH");
                let decision = limiter.allow(&key).await.expect("Redis answers");
                assert_eq!(
                    (decision.allowed(), decision.remaining(), decision.source()),
                    (true, 2 - round, ratelimit_core::Source::Redis),
                    "{algorithm:?}, {windows} window(s), call {round} after SCRIPT FLUSH"
                );
            }
            let denied = limiter.allow(&key).await.expect("Redis answers");
            assert_eq!(
                (denied.allowed(), denied.source()),
                (false, ratelimit_core::Source::Redis),
                "{algorithm:?}, {windows} window(s): the limit of 3 counted across the flushes"
            );
        }
    }
}
