//! Every Lua script against its Rust twin, at microsecond resolution, at any instant.
//!
//! The scripts run with their clock taken from an argument (`scripts::evaluate_at`: the same
//! body, a test-only prelude), the in-memory backend with a fake clock set to the same
//! instant. Random sequences cross window edges (landing on them, one microsecond before and
//! after), let buckets refill and logs expire, change the cost, peek, and change the policy
//! under the same name as a reload does; every field of every decision must be the same, and
//! the TTL a script sets must be the twin's expiry. Epoch-aligned algorithms (fixed windows,
//! sliding counters) are thereby checked at every phase of their windows, whatever the hour the
//! suite runs at.
//!
//! Randomized: the seed is printed; set `TWINS_SEED` to replay one.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ratelimit_core::test_util::MemoryBackend;
use ratelimit_core::test_util::algorithm::Verdict;
use ratelimit_core::test_util::scripts;
use ratelimit_core::{Algorithm, FakeClock, Identity, KeyBuilder, Policy, Window};
use ratelimit_tests::{Backend, shared_cluster, shared_standalone};

const SEQUENCES: usize = 8;
const STEPS: usize = 150;

fn seed() -> u64 {
    ratelimit_tests::seed_from_env("TWINS_SEED")
}

/// A policy named `name` of `algorithm` with `count` random windows: small limits (denials
/// are frequent) and lengths that are not round numbers of milliseconds.
fn random_policy(rng: &mut StdRng, name: &str, algorithm: Algorithm, count: usize) -> Policy {
    let windows: Vec<Window> = (0..count)
        .map(|i| {
            let limit = rng.random_range(1..=8) * (i as u64 + 1);
            let micros =
                rng.random_range(200_000..=3_000_000) * (i as u64 + 1) + rng.random_range(0..1000);
            Window::new(limit, std::time::Duration::from_micros(micros))
        })
        .collect();
    Policy::new(name, windows).with_algorithm(algorithm)
}

/// The next instant: often the same microsecond or the next few, sometimes anywhere in the
/// window, often exactly on (or one microsecond around) the instant the last decision named.
fn next_instant(rng: &mut StdRng, now: u64, last: &Verdict, policy: &Policy) -> u64 {
    let longest = policy
        .windows()
        .iter()
        .map(|w| w.duration().as_micros() as u64)
        .max()
        .unwrap_or(1);
    let jitter = rng.random_range(0..=2);
    let edge = |at: u64| (now + at + jitter).saturating_sub(1).max(now);
    match rng.random_range(0..10) {
        0..=3 => now + rng.random_range(0..=3),
        4 | 5 => now + rng.random_range(0..longest),
        6 if last.retry_after_us > 0 => edge(last.retry_after_us),
        7 if last.reset_after_us > 0 => edge(last.reset_after_us),
        8 => {
            // The next epoch-aligned boundary of one window, give or take a microsecond.
            let w = policy.windows()[rng.random_range(0..policy.windows().len())]
                .duration()
                .as_micros() as u64;
            let boundary = (now / w + 1) * w;
            (boundary + rng.random_range(0..=2))
                .saturating_sub(1)
                .max(now)
        }
        _ => now + rng.random_range(0..2 * longest),
    }
}

fn same(redis: &Verdict, twin: &Verdict) -> bool {
    redis.allowed == twin.allowed
        && redis.window_index == twin.window_index
        && redis.remaining == twin.remaining
        && redis.reset_after_us == twin.reset_after_us
        && redis.retry_after_us == twin.retry_after_us
}

async fn scripts_match_their_twins<C>(connection: &mut C, target: &str)
where
    C: redis::aio::ConnectionLike + Send,
{
    let seed = seed();
    eprintln!("{target}: seed {seed} (TWINS_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let algorithms = [
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
        Algorithm::FixedWindow,
        Algorithm::SlidingCounter,
    ];
    let mut compared = 0usize;
    let mut ttls_checked = 0usize;
    let mut denied = 0usize;
    for algorithm in algorithms {
        for windows in [1, 2, 3] {
            for sequence in 0..SEQUENCES {
                let prefix = format!("twins-{target}-{seed}:");
                let keys = KeyBuilder::new(&prefix);
                let name = format!("{algorithm}-{windows}-{sequence}");
                let mut policy = random_policy(&mut rng, &name, algorithm, windows);
                // Any instant of the next centuries: every phase of every window.
                let mut now: u64 = rng.random_range(1_600_000_000_000_000..4_000_000_000_000_000);
                let clock = FakeClock::new(now);
                let twin = MemoryBackend::new(Arc::new(clock.clone()), 1000);
                let identity = Identity::new(b"client");
                let mut last = Verdict {
                    allowed: true,
                    window_index: 0,
                    remaining: 0,
                    reset_after_us: 0,
                    retry_after_us: 0,
                    expires_at_us: 0,
                };
                let mut history = Vec::new();
                let mut expiries = std::collections::HashMap::new();
                for step in 0..STEPS {
                    if rng.random_ratio(1, 40) {
                        // A reload: new windows under the same name.
                        policy = random_policy(&mut rng, &name, algorithm, windows);
                        history.push(format!("reload {:?}", policy.windows()));
                    }
                    now = next_instant(&mut rng, now, &last, &policy);
                    clock.set(now);
                    let cost = rng.random_range(0..=policy.smallest_limit());
                    let consume = rng.random_ratio(4, 5);
                    let expected = twin.evaluate(&policy, identity, cost, consume);
                    let (got, ttls) = scripts::evaluate_at_with_ttls(
                        connection, &keys, &policy, identity, cost, consume, now, None,
                    )
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "seed {seed}, {name}, step {step}, t={now} cost={cost}: {e}\n    {}",
                            history.join("\n    ")
                        )
                    });
                    history.push(format!(
                        "t={now} cost={cost} consume={consume}: twin {expected:?}"
                    ));
                    assert!(
                        same(&got, &expected),
                        "seed {seed}, {target}, {name}, step {step}:\n  script {got:?}\n  twin   {expected:?}\n  policy {:?}\n  history:\n    {}",
                        policy.windows(),
                        history.join("\n    ")
                    );
                    // When each key expires, as its last TTL was set: a fixed window's
                    // counter keeps the TTL its window's first call set (`INCRBY` after it).
                    let written = keys.keys(&policy, identity);
                    for (key, &ttl) in written.iter().zip(&ttls) {
                        if let Ok(ms) = u64::try_from(ttl) {
                            expiries.insert(key.clone(), now + ms * 1000);
                        }
                    }
                    // The TTL the keys of a call that wrote have ends when the twin forgets
                    // them (Redis keeps it to the millisecond, rounded up).
                    if got.expires_at_us > 0 {
                        let expires_at_us = written
                            .iter()
                            .filter_map(|key| expiries.get(key))
                            .copied()
                            .max()
                            .unwrap_or(got.expires_at_us);
                        let twin_ms = expected.expires_at_us.saturating_sub(now).div_ceil(1000);
                        // Redis stores an absolute expiry in ms, set against its clock when
                        // the SET runs and read by PTTL against the script's start: on a busy
                        // machine the reading falls a few ms short of what was set (seen: 3).
                        let redis_ms = expires_at_us.saturating_sub(now) / 1000;
                        assert!(
                            redis_ms <= twin_ms && redis_ms + 50 > twin_ms,
                            "seed {seed}, {target}, {name}, step {step}: TTL {redis_ms} ms, \
                             the twin keeps the key {twin_ms} ms"
                        );
                        ttls_checked += 1;
                    }
                    compared += 1;
                    denied += usize::from(!expected.allowed);
                    last = expected;
                }
                // The script left the keys persistent (see `scripts::evaluate_at`).
                delete(connection, &keys.keys(&policy, identity)).await;
            }
        }
    }
    eprintln!(
        "{target}: {compared} decisions compared, {denied} of them denials, {ttls_checked} TTLs"
    );
    assert!(denied > compared / 10, "the sequences should deny often");
}

/// Awaits `$check(&mut connection, name)` over a new connection to `$backend`'s shared Redis
/// (a multiplexed connection to the standalone server, a cluster connection to the cluster).
macro_rules! on_connection_to {
    ($backend:expr, $check:ident) => {
        if $backend == Backend::Cluster {
            let client = shared_cluster().client();
            let connecting = client.get_async_connection().await;
            $check(&mut connecting.expect("connecting"), "cluster").await
        } else {
            let client = shared_standalone().client();
            let connecting = client.get_multiplexed_async_connection().await;
            $check(&mut connecting.expect("connecting"), "standalone").await
        }
    };
}

async fn scripts_match_their_twins_on(backend: Backend) {
    on_connection_to!(backend, scripts_match_their_twins);
}

ratelimit_tests::tokio_test_cases!(scripts_match_their_twins_on {
    standalone_scripts_match_their_twins => Backend::Standalone,
    cluster_scripts_match_their_twins => Backend::Cluster,
});

/// A call retried after its reply was lost (the cluster client retries on I/O errors and
/// response timeouts; the limiter once after a broken connection) carries the same nonce: the
/// script finds it in the state and takes nothing twice. The fixed window's and the sliding
/// counter's counters are bare integers with no nonce: their calls are never sent again by the
/// limiter.
async fn a_retried_call_takes_nothing_twice<C>(connection: &mut C, target: &str)
where
    C: redis::aio::ConnectionLike + Send,
{
    let keys = KeyBuilder::new(format!("retry-{target}-{}:", rand::random::<u32>()));
    let now: u64 = 1_800_000_000_000_000;
    for algorithm in [Algorithm::SlidingWindow, Algorithm::TokenBucket] {
        for windows in [1, 2] {
            let policy = Policy::new(
                format!("{algorithm}-{windows}"),
                (0..windows).map(|i| {
                    Window::new(10 * (i + 1), std::time::Duration::from_secs(60 * (i + 1)))
                }),
            )
            .with_algorithm(algorithm);
            let identity = Identity::new(b"client");
            let first = scripts::evaluate_at(
                connection,
                &keys,
                &policy,
                identity,
                3,
                true,
                now,
                Some("n1"),
            )
            .await
            .expect("first attempt");
            assert!(first.allowed);
            assert_eq!(first.remaining, 7);
            let retried = scripts::evaluate_at(
                connection,
                &keys,
                &policy,
                identity,
                3,
                true,
                now + 5,
                Some("n1"),
            )
            .await
            .expect("retry");
            assert!(
                retried.allowed,
                "{target} {algorithm} x{windows}: {retried:?}"
            );
            assert_eq!(
                retried.remaining, 7,
                "{target} {algorithm} x{windows}: the retry took its permits again"
            );
            let next = scripts::evaluate_at(
                connection,
                &keys,
                &policy,
                identity,
                3,
                true,
                now + 10,
                Some("n2"),
            )
            .await
            .expect("next call");
            assert_eq!(next.remaining, 4, "{target} {algorithm} x{windows}");
            delete(connection, &keys.keys(&policy, identity)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_call_takes_nothing_twice_on_both() {
    for backend in [Backend::Standalone, Backend::Cluster] {
        on_connection_to!(backend, a_retried_call_takes_nothing_twice);
    }
}

/// A fixed window's counter written before the counters became integers
/// (`<window number>:<count>:<nonce>`) is read as it was, in every kind of call, and written
/// again as an integer: an upgrade in the middle of a window keeps its count.
async fn a_counter_of_the_earlier_encoding_keeps_its_count<C>(connection: &mut C, target: &str)
where
    C: redis::aio::ConnectionLike + Send,
{
    let keys = KeyBuilder::new(format!("legacy-{target}-{}:", rand::random::<u32>()));
    let identity = Identity::new(b"client");
    let window = std::time::Duration::from_secs(60);
    let now: u64 = 1_800_000_000_123_456;
    let number = now / 60_000_000;
    for windows in [1, 2] {
        let policy = Policy::new(
            format!("fw-{windows}"),
            (0..windows).map(|i| Window::new(10, window * (i + 1))),
        )
        .with_algorithm(Algorithm::FixedWindow);
        let key = keys.keys(&policy, identity)[0].clone();
        for (stored, spent) in [
            (format!("{number}:4:ab.c"), 4),
            (format!("{number}:4:"), 4),
            (format!("{}:9:ab.c", number - 1), 0),
        ] {
            for (consume, cost, remaining_after) in [
                (false, 1, 10 - spent),
                (true, 0, 10 - spent),
                (true, 2, 8 - spent),
            ] {
                store_earlier(connection, &keys.keys(&policy, identity), &key, &stored).await;
                let got = scripts::evaluate_at(
                    connection, &keys, &policy, identity, cost, consume, now, None,
                )
                .await
                .expect("a counter of the earlier encoding is read");
                assert!(got.allowed, "{target} x{windows} {stored}: {got:?}");
                assert_eq!(
                    got.remaining, remaining_after,
                    "{target} x{windows} {stored}, consume {consume}, cost {cost}"
                );
                // The next call reads what this one left, whatever its encoding.
                let next = scripts::evaluate_at(
                    connection,
                    &keys,
                    &policy,
                    identity,
                    1,
                    true,
                    now + 1,
                    None,
                )
                .await
                .expect("the counter, written again");
                assert_eq!(
                    next.remaining,
                    remaining_after - 1,
                    "{target} x{windows} {stored}"
                );
            }
        }
        delete(connection, &keys.keys(&policy, identity)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_of_the_earlier_encoding_keeps_its_count_on_both() {
    for backend in [Backend::Standalone, Backend::Cluster] {
        on_connection_to!(backend, a_counter_of_the_earlier_encoding_keeps_its_count);
    }
}

/// A sliding counter written before its counters became integers (one key a window, the even
/// counter's name, `<window number>:<current>:<previous>:<nonce>`) is read as it was, whichever
/// counter holds this window, and what it carried is kept once it is written again.
async fn a_sliding_counter_of_the_earlier_layout_keeps_its_counts<C>(
    connection: &mut C,
    target: &str,
) where
    C: redis::aio::ConnectionLike + Send,
{
    let keys = KeyBuilder::new(format!("legacy-sc-{target}-{}:", rand::random::<u32>()));
    let identity = Identity::new(b"client");
    let policy =
        Policy::new("sc", [Window::per_minute(10)]).with_algorithm(Algorithm::SlidingCounter);
    let even = keys.keys(&policy, identity)[0].clone();
    // 123,456 µs into the window: the previous window weighs all of its count (rounded up).
    for number in [30_000_000_u64, 30_000_001] {
        let now = number * 60_000_000 + 123_456;
        for (stored, current, previous) in [
            (format!("{number}:4:3:ab.c"), 4, 3),
            (format!("{}:5:0:ab.c", number - 1), 0, 5),
            (format!("{}:9:9:ab.c", number - 2), 0, 0),
        ] {
            let left = 10 - current - previous;
            store_earlier(connection, &keys.keys(&policy, identity), &even, &stored).await;
            let case = format!("{target}, window {number}, {stored}");
            for (step, (consume, cost, remaining)) in [
                (false, 1, left),
                (true, 0, left),
                (true, 1, left - 1),
                (true, 1, left - 2),
            ]
            .into_iter()
            .enumerate()
            {
                let got = scripts::evaluate_at(
                    connection,
                    &keys,
                    &policy,
                    identity,
                    cost,
                    consume,
                    now + step as u64,
                    None,
                )
                .await
                .expect("a counter of the earlier layout is read");
                assert!(got.allowed, "{case}, step {step}: {got:?}");
                assert_eq!(got.remaining, remaining, "{case}, step {step}");
            }
            // The next window weighs this one's whole count as its previous one.
            let next = scripts::evaluate_at(
                connection,
                &keys,
                &policy,
                identity,
                1,
                false,
                now + 60_000_000,
                None,
            )
            .await
            .expect("the next window");
            assert_eq!(
                next.remaining,
                10 - (current + 2),
                "{case}, the next window"
            );
        }
    }
    delete(connection, &keys.keys(&policy, identity)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_counter_of_the_earlier_layout_keeps_its_counts_on_both() {
    for backend in [Backend::Standalone, Backend::Cluster] {
        on_connection_to!(
            backend,
            a_sliding_counter_of_the_earlier_layout_keeps_its_counts
        );
    }
}

/// Deletes `keys`.
async fn delete<C: redis::aio::ConnectionLike + Send>(connection: &mut C, keys: &[String]) {
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(connection)
        .await
        .expect("DEL");
}

/// Deletes `keys`, then stores `value` under `key` as an earlier release wrote it.
async fn store_earlier<C: redis::aio::ConnectionLike + Send>(
    connection: &mut C,
    keys: &[String],
    key: &str,
    value: &str,
) {
    delete(connection, keys).await;
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(connection)
        .await
        .expect("SET");
}

/// A denied call stores nothing: a counter that `INCRBY` added to is taken back to what it held,
/// whether it was this window's, an earlier window's of the same parity, or none (then it does
/// not exist afterwards, rather than lingering without a TTL). Fixed window and sliding counter,
/// with the sliding counter denied by the previous window's weight alone.
async fn a_denial_leaves_the_counters_as_they_were<C>(connection: &mut C, target: &str)
where
    C: redis::aio::ConnectionLike + Send,
{
    let keys = KeyBuilder::new(format!("denial-{target}-{}:", rand::random::<u32>()));
    let identity = Identity::new(b"client");
    let minute = 60_000_000_u64;
    for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingCounter] {
        let policy =
            Policy::new(format!("{algorithm}"), [Window::per_minute(3)]).with_algorithm(algorithm);
        let all = keys.keys(&policy, identity);
        for number in [30_000_000_u64, 30_000_001] {
            delete(connection, &all).await;
            // Spend the window before in full, at its start.
            let before = (number - 1) * minute + 1_000;
            let spent =
                scripts::evaluate_at(connection, &keys, &policy, identity, 3, true, before, None)
                    .await
                    .expect("spending the window before");
            assert!(spent.allowed, "{target} {algorithm}: {spent:?}");
            // Two windows back, on this window's parity: a stale counter for the sliding
            // counter to find under this window's key.
            let stale = (number - 2) * minute + 1_000;
            scripts::evaluate_at(connection, &keys, &policy, identity, 1, true, stale, None)
                .await
                .expect("a stale counter");
            // A cost above the limit (read, never added); then, for the fixed window, one
            // permit that opens this window and two that do not fit it (added, then taken
            // back); for the sliding counter every call is denied by the window before, on a
            // stale counter of this window's parity (added to, then taken back).
            let fixed = algorithm == Algorithm::FixedWindow;
            for (step, cost) in [4, 1, 3].into_iter().enumerate() {
                let held = values(connection, &all).await;
                let at = number * minute + 10 * (step as u64 + 1);
                let got = scripts::evaluate_at(
                    connection, &keys, &policy, identity, cost, true, at, None,
                )
                .await
                .expect("a call");
                let allowed = fixed && cost == 1;
                assert_eq!(
                    got.allowed, allowed,
                    "{target} {algorithm} cost {cost}: {got:?}"
                );
                if !allowed {
                    assert_eq!(
                        values(connection, &all).await,
                        held,
                        "{target} {algorithm}, window {number}, cost {cost}: a denial changed the counters"
                    );
                }
            }
            // This window's counter does not exist yet for the sliding counter: a denial
            // leaves none (a fixed window's call above opened its own).
            delete(connection, &all).await;
            scripts::evaluate_at(connection, &keys, &policy, identity, 3, true, before, None)
                .await
                .expect("spending the window before");
            let held = values(connection, &all).await;
            let got = scripts::evaluate_at(
                connection,
                &keys,
                &policy,
                identity,
                1,
                true,
                number * minute + 10,
                None,
            )
            .await
            .expect("a call on a fresh window");
            if algorithm == Algorithm::SlidingCounter {
                assert!(!got.allowed, "{target}: {got:?}");
                assert_eq!(
                    values(connection, &all).await,
                    held,
                    "{target}, window {number}: a denial on a fresh window left a counter"
                );
            }
        }
        delete(connection, &all).await;
    }
}

/// The value of each of `keys`, `None` where it does not exist.
async fn values<C: redis::aio::ConnectionLike + Send>(
    connection: &mut C,
    keys: &[String],
) -> Vec<Option<String>> {
    let mut values = Vec::new();
    for key in keys {
        let value: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(connection)
            .await
            .expect("GET");
        values.push(value);
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_leaves_the_counters_as_they_were_on_both() {
    for backend in [Backend::Standalone, Backend::Cluster] {
        on_connection_to!(backend, a_denial_leaves_the_counters_as_they_were);
    }
}
