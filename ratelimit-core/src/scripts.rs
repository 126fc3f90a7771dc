//! The Lua scripts, embedded, and the one calling convention they share.
//!
//! Every script takes the keys of one decision (all in one hash slot) and the arguments
//! `op, cost, nonce, limit1, window1_us, limit2, window2_us, ...`, reads the time with
//! `redis.call('TIME')`, and answers `{allowed, binding window (1-based), limit, remaining,
//! reset_after_us, retry_after_us}`, or for a policy of one window only `{allowed, remaining,
//! reset_after_us, retry_after_us}` (each number of a reply costs Redis about a thousand
//! instructions; the client knows the window and its limit). They run through [`redis::Script`]: EVALSHA, reloaded
//! transparently after NOSCRIPT (a restart, a failover, a new cluster node).

use std::sync::LazyLock;
#[cfg(any(test, feature = "test-util"))]
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::command::{self, Op, ScriptCall, Third};
use crate::decision::Outcome;
use crate::error::Error;
use crate::key::{Identity, KeyBuilder};
use crate::policy::{Algorithm, Policy};

/// A script as Redis runs it: a clock prelude (`lua/prelude/clock.lua`, Redis's `TIME`; or,
/// for tests, `clock_argument.lua` with its postlude), the shared preludes (the choice of the
/// binding window, the arguments every script takes), then the algorithm's body from `lua/`.
macro_rules! assemble {
    (clock_argument, $body:literal) => {
        assemble!("clock_argument.lua", $body, "clock_argument_end.lua")
    };
    ($clock:literal, $body:literal $(, $end:literal)?) => {
        concat!(
            include_str!(concat!("../lua/prelude/", $clock)),
            include_str!("../lua/prelude/binding.lua"),
            include_str!("../lua/prelude/arguments.lua"),
            include_str!(concat!("../lua/", $body)),
            $(include_str!(concat!("../lua/prelude/", $end)),)?
        )
    };
}

/// Source of the exact sliding log over one window.
pub const SLIDING_WINDOW: &str = assemble!("clock.lua", "sliding_window.lua");
/// Source of the exact sliding log over several windows, all or nothing.
pub const MULTI_WINDOW: &str = assemble!("clock.lua", "multi_window.lua");
/// Source of the GCRA token bucket.
pub const TOKEN_BUCKET: &str = assemble!("clock.lua", "token_bucket.lua");
/// Source of the fixed window counter.
pub const FIXED_WINDOW: &str = assemble!("clock.lua", "fixed_window.lua");
/// Source of the sliding window counter.
pub const SLIDING_COUNTER: &str = assemble!("clock.lua", "sliding_counter.lua");

static SLIDING_WINDOW_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(SLIDING_WINDOW));
static MULTI_WINDOW_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(MULTI_WINDOW));
static TOKEN_BUCKET_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(TOKEN_BUCKET));
static FIXED_WINDOW_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(FIXED_WINDOW));
static SLIDING_COUNTER_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(SLIDING_COUNTER));
/// How a call of each single script starts on the wire, in [`Single::ALL`]'s order, which is
/// the variants' own ([`Single::evalsha`] indexes by it; a call written with another script's
/// start fails `commands_are_written_as_the_command_they_become`).
static EVALSHA: LazyLock<[Box<[u8]>; 5]> =
    LazyLock::new(|| Single::ALL.map(|single| command::evalsha(single.script().get_hash())));

/// The script that evaluates `policy`.
///
/// ```
/// use ratelimit_core::test_util::scripts;
/// use ratelimit_core::{Policy, Window};
/// let single = Policy::new("a", [Window::per_minute(10)]);
/// let multi = Policy::new("b", [Window::per_minute(10), Window::per_hour(100)]);
/// assert_ne!(scripts::for_policy(&single).get_hash(), scripts::for_policy(&multi).get_hash());
/// ```
pub fn for_policy(policy: &Policy) -> &'static redis::Script {
    Single::of(policy).script()
}

/// The single scripts: one an algorithm, two for the sliding log (one window, several).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Single {
    SlidingWindow,
    MultiWindow,
    TokenBucket,
    FixedWindow,
    SlidingCounter,
}

impl Single {
    /// Every single script.
    pub(crate) const ALL: [Single; 5] = [
        Single::SlidingWindow,
        Single::MultiWindow,
        Single::TokenBucket,
        Single::FixedWindow,
        Single::SlidingCounter,
    ];

    #[cfg(test)]
    /// The single script whose hash is `hash`.
    pub(crate) fn with_hash(hash: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|single| single.script().get_hash() == hash)
    }

    /// The script that decides for `policy` ([`for_policy`]).
    pub(crate) fn of(policy: &Policy) -> Self {
        match policy.algorithm() {
            Algorithm::SlidingWindow if policy.windows().len() == 1 => Single::SlidingWindow,
            Algorithm::SlidingWindow => Single::MultiWindow,
            Algorithm::TokenBucket => Single::TokenBucket,
            Algorithm::FixedWindow => Single::FixedWindow,
            Algorithm::SlidingCounter => Single::SlidingCounter,
        }
    }

    /// `EVALSHA` and the script's hash, as a call of it starts on the wire (written once).
    pub(crate) fn evalsha(self) -> &'static [u8] {
        &EVALSHA[self as usize]
    }

    pub(crate) fn script(self) -> &'static redis::Script {
        match self {
            Single::SlidingWindow => &SLIDING_WINDOW_SCRIPT,
            Single::MultiWindow => &MULTI_WINDOW_SCRIPT,
            Single::TokenBucket => &TOKEN_BUCKET_SCRIPT,
            Single::FixedWindow => &FIXED_WINDOW_SCRIPT,
            Single::SlidingCounter => &SLIDING_COUNTER_SCRIPT,
        }
    }

    /// Whether its calls can be sent again after their reply was lost: the sliding logs',
    /// whose permits are members of the call's own, added with `NX` (`coalesce.rs`).
    pub(crate) fn is_log(self) -> bool {
        matches!(self, Single::SlidingWindow | Single::MultiWindow)
    }
}

/// Every script, for preloading (`SCRIPT LOAD`) and for measuring.
pub fn all() -> [&'static redis::Script; 5] {
    Single::ALL.map(Single::script)
}

#[cfg(any(test, feature = "test-util"))]
/// The script for `policy` with its clock taken from an extra last argument (µs) instead of
/// Redis's `TIME`: the same body, another prelude. For tests that hold a script to its Rust
/// twin at any instant, across window edges; see [`evaluate_at`].
pub fn with_clock_argument(policy: &Policy) -> redis::Script {
    let source = match policy.algorithm() {
        Algorithm::SlidingWindow if policy.windows().len() == 1 => {
            assemble!(clock_argument, "sliding_window.lua")
        }
        Algorithm::SlidingWindow => assemble!(clock_argument, "multi_window.lua"),
        Algorithm::TokenBucket => assemble!(clock_argument, "token_bucket.lua"),
        Algorithm::FixedWindow => assemble!(clock_argument, "fixed_window.lua"),
        Algorithm::SlidingCounter => assemble!(clock_argument, "sliding_counter.lua"),
    };
    redis::Script::new(source)
}

#[cfg(any(test, feature = "test-util"))]
/// Nonces of [`evaluate_at`] calls: unique in this process, so log members never collide.
static TEST_NONCE: AtomicU64 = AtomicU64::new(0);

#[cfg(any(test, feature = "test-util"))]
/// Runs `policy`'s script with its clock set to `now_us` (see [`with_clock_argument`]) on
/// `identity`'s keys under `keys` with `nonce` (a fresh one when `None`; the same one twice is
/// a retried call), and returns what it decided, as the in-memory backend's
/// [`Verdict`](crate::algorithm::Verdict) has it. `expires_at_us` is when the longest TTL the
/// script set this call ends (`now_us` + whole milliseconds), or 0 when it set none. The keys
/// are left without a TTL, so that real time cannot expire them while the injected clock
/// stands still: delete them after the test. For tests only: production calls always use
/// Redis's clock.
///
/// ```no_run
/// # async fn demo(connection: &mut redis::aio::MultiplexedConnection) -> Result<(), ratelimit_core::Error> {
/// use ratelimit_core::test_util::scripts;
/// use ratelimit_core::{Identity, KeyBuilder, Policy, Window};
/// let policy = Policy::new("p", [Window::per_second(1)]);
/// let at = 1_700_000_000_000_000;
/// let keys = KeyBuilder::new("test:");
/// let id = Identity::new(b"k");
/// let first = scripts::evaluate_at(connection, &keys, &policy, id, 1, true, at, None).await?;
/// assert!(first.allowed);
/// # Ok(()) }
/// ```
#[allow(clippy::too_many_arguments)]
pub async fn evaluate_at<C: redis::aio::ConnectionLike>(
    connection: &mut C,
    keys: &KeyBuilder,
    policy: &Policy,
    identity: Identity<'_>,
    cost: u64,
    consume: bool,
    now_us: u64,
    nonce: Option<&str>,
) -> Result<crate::algorithm::Verdict, Error> {
    evaluate_at_with_ttls(
        connection, keys, policy, identity, cost, consume, now_us, nonce,
    )
    .await
    .map(|(verdict, _)| verdict)
}

#[cfg(any(test, feature = "test-util"))]
/// [`evaluate_at`], and the TTL (ms) the script set on each key of
/// [`KeyBuilder::keys`](crate::KeyBuilder::keys), in their order: -1 for a key it did not set
/// a TTL on (not written, or added to with `INCRBY`, which keeps the TTL its window's first
/// call set).
#[allow(clippy::too_many_arguments)]
pub async fn evaluate_at_with_ttls<C: redis::aio::ConnectionLike>(
    connection: &mut C,
    keys: &KeyBuilder,
    policy: &Policy,
    identity: Identity<'_>,
    cost: u64,
    consume: bool,
    now_us: u64,
    nonce: Option<&str>,
) -> Result<(crate::algorithm::Verdict, Vec<i64>), Error> {
    let script = with_clock_argument(policy);
    let mut call = script.prepare_invoke();
    for key in keys.keys(policy, identity) {
        call.key(key);
    }
    call.arg(if consume { "allow" } else { "peek" }).arg(cost);
    let nonce = nonce.map_or_else(
        || format!("t{:x}", TEST_NONCE.fetch_add(1, Ordering::Relaxed)),
        str::to_owned,
    );
    call.arg(third_argument(
        policy,
        consume,
        cost,
        nonce.as_bytes(),
        &mut itoa::Buffer::new(),
    ));
    for w in policy.windows() {
        call.arg(w.max_requests()).arg(w.micros());
    }
    call.arg(now_us);
    let reply: Vec<i64> = call.invoke_async(connection).await?;
    let width = if policy.windows().len() == 1 { 4 } else { 6 };
    let (decision, ttls) = reply.split_at(reply.len().min(width));
    Ok((verdict(decision, expires_at(ttls, now_us))?, ttls.to_vec()))
}

#[cfg(any(test, feature = "test-util"))]
/// When the longest of `ttls` (ms, as a test script's postlude reports them; negative for a key
/// not written) ends, from `now_us`; 0 when none was written.
pub(crate) fn expires_at(ttls: &[i64], now_us: u64) -> u64 {
    let longest_ttl_ms = ttls.iter().copied().filter(|&t| t >= 0).max();
    longest_ttl_ms.map_or(0, |ms| now_us + u64::try_from(ms).unwrap_or(0) * 1000)
}

#[cfg(any(test, feature = "test-util"))]
/// A script's reply read as the in-memory backend's verdict, whose keys expire at
/// `expires_at_us`.
pub(crate) fn verdict(
    reply: &[i64],
    expires_at_us: u64,
) -> Result<crate::algorithm::Verdict, Error> {
    let outcome = outcome(reply)?;
    Ok(crate::algorithm::Verdict {
        allowed: outcome.allowed,
        window_index: outcome.window_index,
        remaining: outcome.remaining,
        reset_after_us: outcome.reset_after_us,
        retry_after_us: outcome.retry_after_us,
        expires_at_us,
    })
}

/// What one permit adds to a fixed window's or a sliding counter's counter, which holds
/// `count * 65536 + tag` (`lua/fixed_window.lua`, `lua/sliding_counter.lua`).
const COUNTER_SPAN: u64 = 1 << 16;

/// The third argument of a counter's call (fixed window, sliding counter): what the call adds
/// to its counter (`cost * 65536`), written by the client so that the script passes it on to
/// `INCRBY` as it is; empty when the call is not the script's common case (one window,
/// consuming, a cost from 1 to the limit), which the script then decides on the counters it
/// reads. These counters cannot recognize a call sent twice, so their calls carry no nonce and
/// are never sent again ([`resendable`]).
fn counter_increment(policy: &Policy, consume: bool, cost: u64) -> Option<u64> {
    match policy.windows() {
        [window] if consume && cost > 0 && cost <= window.max_requests() => {
            cost.checked_mul(COUNTER_SPAN)
        }
        _ => None,
    }
}

/// Whether a call of `policy`'s script may be sent again after its reply was lost: the sliding
/// logs and the token bucket recognize a call they applied by the call's nonce; the integer
/// counters (fixed window, sliding counter) cannot.
pub(crate) fn resendable(policy: &Policy) -> bool {
    takes_nonce(policy)
}

/// Whether a call of `policy`'s script carries a nonce: every script's but the integer
/// counters', whose third argument is their increment ([`third_argument`]).
pub(crate) fn takes_nonce(policy: &Policy) -> bool {
    !counts_in_integers(policy)
}

/// Whether `policy`'s script keeps integer counters, added to with the client's increment.
fn counts_in_integers(policy: &Policy) -> bool {
    matches!(
        policy.algorithm(),
        Algorithm::FixedWindow | Algorithm::SlidingCounter
    )
}

/// The third argument of `policy`'s call: `nonce`, or for an integer counter the increment
/// ([`counter_increment`]), written into `digits`.
#[cfg(any(test, feature = "test-util"))]
fn third_argument<'a>(
    policy: &Policy,
    consume: bool,
    cost: u64,
    nonce: &'a [u8],
    digits: &'a mut itoa::Buffer,
) -> &'a [u8] {
    if !counts_in_integers(policy) {
        return nonce;
    }
    match counter_increment(policy, consume, cost) {
        Some(increment) => digits.format(increment).as_bytes(),
        None => b"",
    }
}

/// One decision's script call: `EVALSHA <sha> <number of keys> <keys…> <op> <cost> <third>
/// <limit1> <window1_us> …`, kept as its parts (`backend/command.rs`); building it allocates
/// once, for its keys, written in place, never as strings of their own. Never inlined: one call
/// a Redis decision, where `scripts/client-cost.sh` counts the decisions.
#[inline(never)]
pub(crate) fn command(
    policy: &Policy,
    keys: &KeyBuilder,
    identity: Identity<'_>,
    consume: bool,
    cost: u64,
    nonce: &[u8],
) -> ScriptCall {
    let third = if !counts_in_integers(policy) {
        Third::nonce(nonce)
    } else {
        counter_increment(policy, consume, cost).map_or(Third::Empty, Third::Increment)
    };
    // A key: prefix, `{`, name, `:`, identity, `}:`, tag, `:`, up to 20 digits, `:1`, and its
    // framing (`$`, up to 3 digits, two line ends); at most two a window.
    let key_bytes = keys.prefix().len() + policy.name().len() + identity.as_bytes().len() + 36;
    ScriptCall::new(
        Single::of(policy),
        key_bytes * 2 * policy.windows().len(),
        |out| keys.write_keys(policy, identity, out),
        if consume { Op::Allow } else { Op::Peek },
        cost,
        third,
        policy.shared_windows(),
    )
}

/// Reads a script's reply as the connection hands it over, without copying it first.
pub(crate) fn outcome_of(reply: &redis::Value) -> Result<Outcome, Error> {
    let unexpected = || Error::UnexpectedReply(format!("{reply:?}"));
    let redis::Value::Array(items) = reply else {
        return Err(unexpected());
    };
    let mut numbers = [0_i64; 6];
    if items.len() != 4 && items.len() != 6 {
        return Err(unexpected());
    }
    for (number, item) in numbers.iter_mut().zip(items) {
        let redis::Value::Int(value) = item else {
            return Err(unexpected());
        };
        *number = *value;
    }
    outcome(&numbers[..items.len()])
}

/// Reads a script's reply: `{allowed, binding window (1-based), limit, remaining, reset_after_us,
/// retry_after_us}`, or for a policy of one window `{allowed, remaining, reset_after_us,
/// retry_after_us}` (the window is the first; the limit, the policy's, is not read).
pub(crate) fn outcome(reply: &[i64]) -> Result<Outcome, Error> {
    let (allowed, window, remaining, reset_after, retry_after) = match reply {
        [allowed, window, _limit, remaining, reset_after, retry_after] => {
            (allowed, *window, remaining, reset_after, retry_after)
        }
        [allowed, remaining, reset_after, retry_after] => {
            (allowed, 1, remaining, reset_after, retry_after)
        }
        _ => return Err(Error::UnexpectedReply(format!("{reply:?}"))),
    };
    let non_negative = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Outcome {
        allowed: *allowed == 1,
        window_index: usize::try_from(window - 1).unwrap_or(0),
        remaining: non_negative(*remaining),
        reset_after_us: non_negative(*reset_after),
        retry_after_us: non_negative(*retry_after),
    })
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::*;
    use crate::backend::command::Command;
    use crate::policy::Window;

    fn reply(fields: &[i64]) -> Value {
        Value::Array(fields.iter().map(|&v| Value::Int(v)).collect())
    }

    #[test]
    fn a_reply_is_read_field_by_field() {
        let outcome = outcome_of(&reply(&[0, 2, 10, 3, 1_500, 250])).expect("a well-formed reply");
        assert_eq!(
            (
                outcome.allowed,
                outcome.window_index,
                outcome.remaining,
                outcome.reset_after_us,
                outcome.retry_after_us
            ),
            (false, 1, 3, 1_500, 250)
        );
        let negative = outcome_of(&reply(&[1, 1, 10, -1, -5, -7])).expect("a well-formed reply");
        assert!(negative.allowed);
        assert_eq!(
            (
                negative.remaining,
                negative.reset_after_us,
                negative.retry_after_us
            ),
            (0, 0, 0),
            "negative figures read as 0"
        );
        // A policy of one window: its figures alone, the window the first.
        let short = outcome_of(&reply(&[0, 3, 1_500, 250])).expect("a well-formed reply");
        assert_eq!(
            (
                short.allowed,
                short.window_index,
                short.remaining,
                short.reset_after_us,
                short.retry_after_us
            ),
            (false, 0, 3, 1_500, 250)
        );
    }

    #[test]
    fn a_reply_of_another_shape_is_an_unexpected_reply() {
        let wrong = [
            Value::Nil,
            Value::Int(1),
            reply(&[1, 1, 10]),
            reply(&[1, 1, 10, 9, 0]),
            reply(&[1, 1, 10, 9, 0, 0, 0]),
            Value::Array(vec![
                Value::Int(1),
                Value::Int(1),
                Value::Int(10),
                Value::BulkString(b"9".to_vec()),
                Value::Int(0),
                Value::Int(0),
            ]),
        ];
        for value in wrong {
            let error = outcome_of(&value).expect_err("not a decision");
            assert!(
                matches!(error, Error::UnexpectedReply(_)),
                "{value:?}: {error:?}"
            );
        }
        assert!(matches!(outcome(&[1, 2]), Err(Error::UnexpectedReply(_))));
    }

    /// An integer counter's call carries its increment where the others carry their nonce,
    /// and only for the script's common case: one window, consuming, a cost from 1 to the
    /// limit.
    #[test]
    fn a_counter_call_carries_its_increment_instead_of_a_nonce() {
        let keys = KeyBuilder::new("rl:");
        let one = Policy::new("api", [Window::per_minute(10)]);
        let two = Policy::new("api", [Window::per_minute(10), Window::per_hour(100)]);
        let third = |policy: &Policy, consume: bool, cost: u64| {
            let cmd = Command::Script(command(
                policy,
                &keys,
                Identity::new(b"u1"),
                consume,
                cost,
                b"ab.c",
            ))
            .to_cmd();
            let keys = keys.keys(policy, Identity::new(b"u1")).len();
            match cmd.args_iter().nth(3 + keys + 2) {
                Some(redis::Arg::Simple(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<none>".to_owned(),
            }
        };
        let fixed = one.clone().with_algorithm(Algorithm::FixedWindow);
        assert_eq!(third(&fixed, true, 1), "65536");
        assert_eq!(third(&fixed, true, 10), "655360");
        for (consume, cost) in [(false, 1), (true, 0), (true, 11)] {
            assert_eq!(
                third(&fixed, consume, cost),
                "",
                "consume {consume}, cost {cost}"
            );
        }
        let fixed_two = two.clone().with_algorithm(Algorithm::FixedWindow);
        assert_eq!(third(&fixed_two, true, 1), "");
        let counter = one.clone().with_algorithm(Algorithm::SlidingCounter);
        assert_eq!(third(&counter, true, 3), "196608");
        assert_eq!(third(&counter, false, 3), "");
        for algorithm in [Algorithm::SlidingWindow, Algorithm::TokenBucket] {
            for policy in [&one, &two] {
                let policy = policy.clone().with_algorithm(algorithm);
                assert_eq!(third(&policy, true, 1), "ab.c", "{algorithm:?}");
                assert!(resendable(&policy), "{algorithm:?}");
            }
        }
        for policy in [&fixed, &fixed_two, &counter] {
            assert!(!resendable(policy), "{policy:?}");
        }
    }

    /// The command is the one `redis::Script` would send: EVALSHA, the hash, the keys and the
    /// arguments in the order the scripts read them.
    #[test]
    fn a_command_carries_the_keys_and_arguments_in_order() {
        let keys = KeyBuilder::new("rl:");
        let policy = Policy::new("api", [Window::per_minute(10), Window::per_hour(100)]);
        for (algorithm, expected_keys) in [
            (Algorithm::SlidingWindow, vec!["rl:{api:u1}:sw"]),
            (
                Algorithm::TokenBucket,
                vec!["rl:{api:u1}:tb:60000000", "rl:{api:u1}:tb:3600000000"],
            ),
        ] {
            let policy = policy.clone().with_algorithm(algorithm);
            let call = command(&policy, &keys, Identity::new(b"u1"), false, 3, b"ab.c");
            let cmd = Command::Script(call).to_cmd();
            let args: Vec<String> = cmd
                .args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    _ => "<cursor>".into(),
                })
                .collect();
            let mut expected = vec![
                "EVALSHA".to_owned(),
                for_policy(&policy).get_hash().to_owned(),
                expected_keys.len().to_string(),
            ];
            expected.extend(expected_keys.iter().map(|k| (*k).to_owned()));
            expected.extend(
                ["peek", "3", "ab.c", "10", "60000000", "100", "3600000000"].map(str::to_owned),
            );
            assert_eq!(args, expected, "{algorithm:?}");
            assert_eq!(keys.keys(&policy, Identity::new(b"u1")), expected_keys);
        }
    }
}
