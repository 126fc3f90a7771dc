//! Calls on one key decided together by one script call (`backend/coalesce.rs`, `lua/batch/`).
//!
//! - A batch decides exactly as its calls would, one after another, at the same instant: random
//!   sequences of batches on one key are held to the single script called once for each call
//!   on another key (the single scripts are held to their Rust twins in `twins.rs`), at any
//!   instant, across window edges, with costs, peeks and reloads, for every algorithm with one
//!   window and the sliding log with two and three.
//! - A batch sent again after its reply was lost answers as it did and takes nothing twice.
//! - Through the limiter: bursts on one key are coalesced, and stay exact with the default
//!   configuration, after `SCRIPT FLUSH`, and while the server closes the connections.
//!
//! Randomized: the seed is printed; set `BATCHES_SEED` to replay one.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ratelimit_core::test_util::algorithm::Verdict;
use ratelimit_core::test_util::{batches, scripts};
use ratelimit_core::{Algorithm, Config, Identity, KeyBuilder, Policy, RateLimiter, RedisConfig};
use ratelimit_core::{Source, Window};
use ratelimit_tests::{RedisServer, shared_standalone};

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::SlidingWindow,
    Algorithm::TokenBucket,
    Algorithm::FixedWindow,
    Algorithm::SlidingCounter,
];

/// A policy of `windows` random windows (small limits, lengths that are not round numbers of
/// milliseconds).
fn policy(rng: &mut StdRng, name: &str, algorithm: Algorithm, windows: u64) -> Policy {
    let windows: Vec<Window> = (1..=windows)
        .map(|i| {
            let limit = rng.random_range(1..=8) * i;
            let micros = rng.random_range(200_000..=3_000_000) * i + rng.random_range(0..1000);
            Window::new(limit, Duration::from_micros(micros))
        })
        .collect();
    Policy::new(name, windows).with_algorithm(algorithm)
}

fn answer(verdict: &Verdict) -> (bool, usize, u64, u64, u64) {
    (
        verdict.allowed,
        verdict.window_index,
        verdict.remaining,
        verdict.reset_after_us,
        verdict.retry_after_us,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_decides_as_its_calls_would_one_after_another() {
    let seed = ratelimit_tests::seed_from_env("BATCHES_SEED");
    eprintln!("seed {seed} (BATCHES_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut connection = shared_standalone()
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connecting");
    let keys = KeyBuilder::new(format!("batches-{seed}:"));
    let (together, apart) = (Identity::new(b"together"), Identity::new(b"apart"));
    let (mut compared, mut denied, mut ttls) = (0, 0, 0);
    // Every algorithm with one window; the sliding log with several too (the multi-window
    // log's batch script).
    let cases = ALGORITHMS
        .iter()
        .map(|&a| (a, 1))
        .chain([(Algorithm::SlidingWindow, 2), (Algorithm::SlidingWindow, 3)]);
    for (algorithm, windows) in cases {
        for sequence in 0..8 {
            let name = format!("{algorithm}-{windows}-{sequence}");
            let mut policy = policy(&mut rng, &name, algorithm, windows);
            let mut now: u64 = rng.random_range(1_600_000_000_000_000..4_000_000_000_000_000);
            for step in 0..40 {
                if rng.random_ratio(1, 20) {
                    policy = self::policy(&mut rng, &name, algorithm, windows);
                }
                let window = policy.windows()[0].duration().as_micros() as u64;
                now += match rng.random_range(0..4) {
                    0 => 0,
                    1 => rng.random_range(1..=3),
                    // Onto the next window edge, give or take a microsecond.
                    2 => ((now / window + 1) * window + rng.random_range(0..=2) - 1)
                        .saturating_sub(now),
                    _ => rng.random_range(0..window),
                };
                let consume = rng.random_ratio(4, 5);
                let limit = policy.smallest_limit();
                let nonces: Vec<String> = (0..rng.random_range(2..=7))
                    .map(|i| format!("s{sequence}.{step}.{i}"))
                    .collect();
                let calls: Vec<(u64, &str)> = nonces
                    .iter()
                    .map(|n| (rng.random_range(0..=limit.min(3)), n.as_str()))
                    .collect();
                let batch = batches::evaluate_batch_at(
                    &mut connection,
                    &keys,
                    &policy,
                    together,
                    &calls,
                    consume,
                    now,
                )
                .await
                .expect("the batch script runs")
                .expect("a batch script for one window, or a log's for several");
                let mut last_ttl = 0;
                for (i, &(cost, nonce)) in calls.iter().enumerate() {
                    let single = scripts::evaluate_at(
                        &mut connection,
                        &keys,
                        &policy,
                        apart,
                        cost,
                        consume,
                        now,
                        Some(nonce),
                    )
                    .await
                    .expect("the single script runs");
                    assert_eq!(
                        answer(&batch[i]),
                        answer(&single),
                        "seed {seed}, {name}, step {step}, call {i} of {calls:?} at {now} \
                         (consume {consume}, {:?})",
                        policy.windows()
                    );
                    if single.expires_at_us > 0 {
                        last_ttl = single.expires_at_us;
                    }
                    compared += 1;
                    denied += usize::from(!single.allowed);
                }
                // The key lives as long as after the last single call that wrote (both keys
                // were left persistent by the test scripts, see `evaluate_at`).
                let to_ms = |at: u64| at.saturating_sub(now) / 1000;
                let (got, want) = (to_ms(batch[0].expires_at_us), to_ms(last_ttl));
                assert!(
                    got.abs_diff(want) <= 50,
                    "seed {seed}, {name}, step {step}: TTL {got} ms, one call at a time {want} ms"
                );
                ttls += usize::from(last_ttl > 0);
            }
            let _: () = redis::cmd("DEL")
                .arg(keys.keys(&policy, together))
                .arg(keys.keys(&policy, apart))
                .query_async(&mut connection)
                .await
                .expect("DEL");
        }
    }
    eprintln!("{compared} calls compared, {denied} denied, {ttls} TTLs");
    assert!(denied > compared / 5, "the sequences should deny often");
    assert!(ttls > 100, "the batches should write");
}

/// A sliding log's batch sent again with the same nonces (its reply was lost when the
/// connection broke, the lane sends it again, marked `again`) answers as it did the first time
/// and takes nothing twice; so does one of its calls sent again alone. A new batch then sees
/// the count the first one left. Sent again unmarked, as a first send, it is refused: a first
/// send adds every admitted call's members with one ZADD, and finding them there is an error,
/// never a second admission. For the log of one window and of two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_batch_sent_again_takes_nothing_twice() {
    let mut connection = shared_standalone()
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connecting");
    let keys = KeyBuilder::new(format!("batch-again-{}:", rand::random::<u32>()));
    let identity = Identity::new(b"client");
    let now: u64 = 1_800_000_000_000_000;
    for policy in [
        Policy::new("log", [Window::per_minute(5)]),
        Policy::new("logs", [Window::per_minute(5), Window::per_hour(50)]),
    ] {
        let name = policy.name().to_owned();
        let calls = [(2, "b1"), (2, "b2"), (2, "b3"), (1, "b4")];
        let answers = |decided: Vec<Verdict>| decided.iter().map(answer).collect::<Vec<_>>();
        let first = batches::evaluate_batch_at(
            &mut connection,
            &keys,
            &policy,
            identity,
            &calls,
            true,
            now,
        )
        .await
        .expect("the batch script runs")
        .expect("a batch script");
        let first = answers(first);
        let allowed: Vec<bool> = first.iter().map(|a| a.0).collect();
        assert_eq!(allowed, [true, true, false, true], "{name}: {first:?}");
        assert_eq!(first[3].2, 0, "{name}: 5 permits taken");
        // b3 waits for b1's first permit to leave the window: one the batch itself added.
        assert_eq!(first[2].4, 60_000_000, "{name}: {first:?}");

        let again = batches::evaluate_batch_sent_again_at(
            &mut connection,
            &keys,
            &policy,
            identity,
            &calls,
            now + 5,
        )
        .await
        .expect("the batch script runs")
        .expect("a batch script");
        let again = answers(again);
        let allowed_again: Vec<bool> = again.iter().map(|a| a.0).collect();
        assert_eq!(allowed_again, allowed, "{name}: answered as the first time");
        let next = batches::evaluate_batch_at(
            &mut connection,
            &keys,
            &policy,
            identity,
            &[(1, "c1"), (1, "c2")],
            true,
            now + 10,
        )
        .await
        .expect("the batch script runs")
        .expect("a batch script");
        assert!(
            !next[0].allowed && !next[1].allowed,
            "{name}: the batch sent again took nothing, and nothing is left: {next:?}"
        );
        assert_eq!(next[0].retry_after_us, 60_000_000 - 10, "{name}: {next:?}");
        let alone = scripts::evaluate_at(
            &mut connection,
            &keys,
            &policy,
            identity,
            2,
            true,
            now + 15,
            Some("b2"),
        )
        .await
        .expect("the single script runs");
        assert!(
            alone.allowed,
            "{name}: a call of the batch, sent again alone, was applied"
        );
        assert_eq!(alone.remaining, 0, "{name}: and takes nothing twice");

        // Sent again unmarked, with room left in the log: refused, and nothing taken twice.
        let other = Identity::new(b"other");
        let small = [(1, "u1"), (1, "u2")];
        let mut send = async |at: u64| {
            batches::evaluate_batch_at(&mut connection, &keys, &policy, other, &small, true, at)
                .await
        };
        let sent = send(now).await.expect("the batch script runs");
        assert!(sent.is_some_and(|d| d.iter().all(|d| d.allowed)), "{name}");
        let unmarked = send(now + 5).await;
        assert!(
            unmarked.is_err(),
            "{name}: sent again as a first send: {unmarked:?}"
        );
        let left = scripts::evaluate_at(
            &mut connection,
            &keys,
            &policy,
            other,
            0,
            false,
            now + 10,
            None,
        )
        .await
        .expect("the single script runs");
        assert_eq!(left.remaining, 3, "{name}: two permits taken, once");
        for identity in [identity, other] {
            let _: () = redis::cmd("DEL")
                .arg(keys.keys(&policy, identity))
                .query_async(&mut connection)
                .await
                .expect("DEL");
        }
    }
}

async fn limiter(url: String, policy: Policy) -> RateLimiter {
    let config = Config::with_policy(policy)
        .with_redis_config(RedisConfig::new([url]).with_timeout(Duration::from_secs(5)));
    RateLimiter::new(config)
        .await
        .expect("a limiter on the test's Redis")
}

/// `n` concurrent `allow`s on `key`, each a task of its own: how many Redis admitted.
async fn admitted(limiter: &RateLimiter, n: usize, key: &str) -> usize {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (limiter, key) = (limiter.clone(), key.to_owned());
            tokio::spawn(async move { limiter.allow(&key).await })
        })
        .collect();
    let mut admitted = 0;
    for call in calls {
        let decision = call.await.expect("the caller's task").expect("decided");
        if decision.allowed() {
            assert_eq!(
                decision.source(),
                Source::Redis,
                "every admission is Redis's"
            );
            admitted += 1;
        }
    }
    admitted
}

/// 1000 concurrent callers on one key, with the default algorithm, each of the others, and a
/// sliding log of two windows: the calls are coalesced, and exactly the limit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_one_key_is_coalesced_and_exact() {
    let server = RedisServer::start();
    for algorithm in [
        None,
        Some(Algorithm::TokenBucket),
        Some(Algorithm::FixedWindow),
        Some(Algorithm::SlidingCounter),
        Some(Algorithm::SlidingWindow),
    ] {
        let mut policy = Policy::new("p", [Window::per_minute(100)]);
        if let Some(algorithm) = algorithm {
            policy = policy.with_algorithm(algorithm);
        }
        if algorithm == Some(Algorithm::SlidingWindow) {
            // Several windows: the multi-window log, 100 a minute binding.
            policy = Policy::new("p", [Window::per_minute(100), Window::per_hour(1000)]);
        }
        let limiter = limiter(server.url(), policy).await;
        for round in 0..3 {
            // The fixed window and the sliding counter are aligned to the epoch: a burst
            // across a minute's edge would count in two windows.
            clear_of_minute_end().await;
            let key = format!("hot-{algorithm:?}-{round}");
            assert_eq!(admitted(&limiter, 1000, &key).await, 100, "{algorithm:?}");
        }
        let stats = limiter.stats();
        assert!(
            stats.batches > 0 && stats.coalesced_calls >= 2 * stats.batches,
            "{algorithm:?}: the burst's calls were decided together: {stats:?}"
        );
    }
}

/// The server forgets its scripts (a restart, `SCRIPT FLUSH`): the batch that finds its script
/// missing is decided call by call, exactly, and the batches after it run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_survive_a_script_flush() {
    let server = RedisServer::start();
    let limiter = limiter(server.url(), Policy::new("p", [Window::per_minute(50)])).await;
    let mut admin = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connecting");
    for round in 0..4 {
        let _: () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut admin)
            .await
            .expect("SCRIPT FLUSH");
        let before = limiter.stats().batches;
        assert_eq!(admitted(&limiter, 300, &format!("k{round}")).await, 50);
        assert_eq!(admitted(&limiter, 300, &format!("j{round}")).await, 50);
        assert!(
            limiter.stats().batches > before,
            "round {round}: batches ran again after the flush"
        );
    }
}

/// The server closes every connection, again and again, while bursts on one key are in
/// flight: pipelines and their batches are sent again whole, and no call is counted twice. A
/// fixed window far above the burst counts every call that ran: never more than were made,
/// never fewer than Redis admitted (a call whose reply was lost twice ran or did not, and the
/// fallback answered it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stay_exact_while_connections_are_killed() {
    let server = RedisServer::start();
    let policy =
        Policy::new("p", [Window::per_minute(100_000)]).with_algorithm(Algorithm::FixedWindow);
    let limiter = limiter(server.url(), policy).await;
    let client = server.client();
    let mut killed = 0;
    for round in 0..6 {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let killer = {
            let (client, done) = (client.clone(), done.clone());
            tokio::spawn(async move {
                let mut admin = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connecting");
                let mut killed = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let n: i64 = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("TYPE")
                        .arg("normal")
                        .arg("SKIPME")
                        .arg("yes")
                        .query_async(&mut admin)
                        .await
                        .unwrap_or(0);
                    killed += n;
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                killed
            })
        };
        // The fixed window is aligned to the epoch: each burst starts at least 2 s before its
        // minute ends (Redis runs on this machine, on its clock), so all of it counts in one.
        let minute = clear_of_minute_end().await;
        let key = format!("killed-{round}");
        let calls: Vec<_> = (0..1000)
            .map(|_| {
                let (limiter, key) = (limiter.clone(), key.clone());
                tokio::spawn(async move { limiter.allow(&key).await })
            })
            .collect();
        let mut by_redis = 0;
        for call in calls {
            // A call whose connection broke twice is decided by the fallback: allowed or not,
            // it is not Redis's.
            let decision = call.await.expect("the caller's task").expect("decided");
            by_redis += usize::from(decision.allowed() && decision.source() == Source::Redis);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        killed += killer.await.expect("the killer's task");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connecting");
        let stored: Option<String> = redis::cmd("GET")
            .arg(limiter_key(&limiter, &key))
            .query_async(&mut connection)
            .await
            .expect("GET");
        // Nothing stored: every call was the fallback's (the breaker opened).
        let Some(stored) = stored else {
            assert_eq!(
                by_redis, 0,
                "round {round}: admitted by Redis, counted nowhere"
            );
            continue;
        };
        // count * 65536 + tag, the tag being the window's number modulo 65535, plus 1
        // (`lua/fixed_window.lua`).
        let value: u64 = stored.parse().expect("a counter");
        let (count, tag) = ((value >> 16) as usize, value & 0xffff);
        assert_eq!(
            tag,
            minute % 65_535 + 1,
            "round {round}: the burst counted in the minute it started in"
        );
        assert!(
            by_redis <= count && count <= 1000,
            "round {round}: {by_redis} admitted by Redis, {count} counted of 1000 calls"
        );
    }
    let stats = limiter.stats();
    eprintln!("{killed} connections killed; {stats:?}");
    assert!(killed > 0, "the server closed connections under the bursts");
    assert!(stats.batches > 0, "the bursts were coalesced");
}

/// Waits, if the current minute since the epoch ends within 2 s, until the next one begins;
/// returns the number of the minute it is then.
async fn clear_of_minute_end() -> u64 {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    };
    let minute = Duration::from_secs(60);
    let into = Duration::from_micros((now().as_micros() % minute.as_micros()) as u64);
    if minute - into < Duration::from_secs(2) {
        tokio::time::sleep(minute - into + Duration::from_millis(10)).await;
    }
    now().as_secs() / 60
}

/// The Redis key of `key` under the limiter's policy (one window).
fn limiter_key(limiter: &RateLimiter, key: &str) -> String {
    let keys = KeyBuilder::new(limiter.config().prefix());
    keys.keys(limiter.policy(), Identity::new(key.as_bytes()))
        .remove(0)
}
