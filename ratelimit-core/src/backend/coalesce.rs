//! Calls on one key in one pipeline, decided by one script call.
//!
//! A hot key's concurrent calls queue on the same lane (`batch.rs`) and would go out as as many
//! script calls, each paying Redis for the clock, the read and the write of the same state.
//! When a pipeline holds two or more calls of a one-window policy (any algorithm) on the same
//! key, with the same operation and window, they are sent as one call of the algorithm's batch
//! script (`lua/batch/`), which reads the state once, decides the calls in
//! arrival order exactly as one call after another at the same instant would, writes once and
//! answers each call. The answers are reshaped into the single scripts' reply, so a caller
//! cannot tell which way its call went.
//!
//! Retries stay exact: when the connection broke under a pipeline, the lane sends again, once,
//! only the calls of the sliding logs, batches included, whose permits are members of each
//! call's own added with `NX`: sent twice, they take nothing twice. The counters recognize only
//! the last writer's nonce, so their calls, alone or in a batch, are never sent again (their
//! callers get the error, and the fallback decides). Policies of several windows are sent one
//! call each, as are calls on a cluster.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::Value;

use crate::scripts;

/// A batch script's source: the clock prelude, the batch arguments, the algorithm's batch body.
macro_rules! assemble_batch {
    ($clock:literal, $body:literal $(, $end:literal)?) => {
        concat!(
            include_str!(concat!("../../lua/prelude/", $clock)),
            include_str!("../../lua/prelude/batch_arguments.lua"),
            include_str!(concat!("../../lua/batch/", $body)),
            $(include_str!(concat!("../../lua/prelude/", $end)),)?
        )
    };
}

/// Source of the sliding log's batch script (one window).
pub const SLIDING_WINDOW_BATCH: &str = assemble_batch!("clock.lua", "sliding_window.lua");
/// Source of the token bucket's batch script (one window).
pub const TOKEN_BUCKET_BATCH: &str = assemble_batch!("clock.lua", "token_bucket.lua");
/// Source of the fixed window's batch script (one window).
pub const FIXED_WINDOW_BATCH: &str = assemble_batch!("clock.lua", "fixed_window.lua");
/// Source of the sliding counter's batch script (one window).
pub const SLIDING_COUNTER_BATCH: &str = assemble_batch!("clock.lua", "sliding_counter.lua");

/// A single script and the batch script that decides several of its calls on one key.
struct Twin {
    single: String,
    source: &'static str,
    batch: redis::Script,
}

static TWINS: LazyLock<[Twin; 4]> = LazyLock::new(|| {
    let twin = |single: &str, source: &'static str| Twin {
        single: redis::Script::new(single).get_hash().to_owned(),
        source,
        batch: redis::Script::new(source),
    };
    [
        twin(scripts::SLIDING_WINDOW, SLIDING_WINDOW_BATCH),
        twin(scripts::TOKEN_BUCKET, TOKEN_BUCKET_BATCH),
        twin(scripts::FIXED_WINDOW, FIXED_WINDOW_BATCH),
        twin(scripts::SLIDING_COUNTER, SLIDING_COUNTER_BATCH),
    ]
});

/// Every batch script, for preloading (`SCRIPT LOAD`).
pub fn all() -> [&'static redis::Script; 4] {
    let [a, b, c, d] = &*TWINS;
    [&a.batch, &b.batch, &c.batch, &d.batch]
}

/// Hashes of the scripts whose calls can be sent again after their reply was lost: the sliding
/// logs', whose permits are members of the call's own, added with `NX`. The counters (token
/// bucket, fixed window, sliding counter) recognize only the last writer's nonce, and another
/// call on the key may have written in between: a call of theirs is never sent again.
static RESENDABLE: LazyLock<[String; 3]> = LazyLock::new(|| {
    [
        scripts::SLIDING_WINDOW,
        scripts::MULTI_WINDOW,
        SLIDING_WINDOW_BATCH,
    ]
    .map(|source| redis::Script::new(source).get_hash().to_owned())
});

/// Whether `call` may be sent again after its reply was lost: a call of a sliding log's script.
pub(super) fn resendable(call: &redis::Cmd) -> bool {
    let mut args = call.args_iter();
    match (args.next(), args.next()) {
        (Some(redis::Arg::Simple(b"EVALSHA")), Some(redis::Arg::Simple(sha))) => {
            RESENDABLE.iter().any(|hash| hash.as_bytes() == sha)
        }
        _ => false,
    }
}

/// The batch script for calls of the single script whose hash is `single`, if it has one.
fn batch_of(single: &[u8]) -> Option<&'static redis::Script> {
    TWINS
        .iter()
        .find(|twin| twin.single.as_bytes() == single)
        .map(|twin| &twin.batch)
}

/// What a batch needs of a call: the arguments of `EVALSHA <sha> 1 <key> <op> <cost> <nonce>
/// <limit> <window>`, a single-window call of a script that has a batch twin.
struct Shape<'a> {
    batch: &'static redis::Script,
    key: &'a [u8],
    op: &'a [u8],
    cost: &'a [u8],
    nonce: &'a [u8],
    limit: &'a [u8],
    window: &'a [u8],
}

impl<'a> Shape<'a> {
    fn of(call: &'a redis::Cmd) -> Option<Self> {
        let mut args = call.args_iter().map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        });
        let mut next = || args.next().flatten();
        let (evalsha, sha, keys) = (next()?, next()?, next()?);
        if evalsha != b"EVALSHA" || keys != b"1" {
            return None;
        }
        let shape = Shape {
            batch: batch_of(sha)?,
            key: next()?,
            op: next()?,
            cost: next()?,
            nonce: next()?,
            limit: next()?,
            window: next()?,
        };
        // Anything more is a policy of several windows.
        next().is_none().then_some(shape)
    }

    /// Whether `other` can be decided in the same batch: same script, key, operation, window.
    fn joins(&self, other: &Shape<'_>) -> bool {
        std::ptr::eq(self.batch, other.batch)
            && self.op == other.op
            && self.limit == other.limit
            && self.window == other.window
    }
}

/// A pipeline to send, and which of its replies answers which call.
#[derive(Debug)]
pub(super) struct Plan {
    /// The commands, one a part.
    pub(super) calls: redis::Pipeline,
    pub(super) parts: Vec<Part>,
}

/// One command of a [`Plan`]: a call sent as it is, or a batch of calls on one key.
#[derive(Debug)]
pub(super) enum Part {
    /// The call at this index of the queue.
    One(usize),
    /// The calls at these indexes, in arrival order, decided by `script` with `limit`.
    Batch {
        script: &'static redis::Script,
        limit: i64,
        calls: Vec<usize>,
    },
}

/// The plan for `calls` (a lane's queue, in arrival order): calls on one key that can be
/// decided together become one batch, placed where the first of them was; every other call is
/// sent as it is. A call on a key whose batch it cannot join (another operation or window, after
/// a reload) starts the key's next batch, so the calls on one key keep their order.
pub(super) fn plan(mut calls: Vec<redis::Cmd>) -> Plan {
    /// No next call in the group.
    const END: usize = usize::MAX;
    let count = calls.len();
    // Groups as chains of indexes: each group's first call in arrival order, and each call's
    // next in its group.
    let mut next = vec![END; count];
    let mut firsts = Vec::with_capacity(count);
    let built: Vec<Built> = {
        let shapes: Vec<Option<Shape<'_>>> = calls.iter().map(Shape::of).collect();
        let mut open: HashMap<&[u8], (usize, usize)> = HashMap::with_capacity(count);
        for (index, shape) in shapes.iter().enumerate() {
            let Some(shape) = shape else {
                firsts.push(index);
                continue;
            };
            match open.get_mut(shape.key) {
                Some((first, last))
                    if shapes[*first]
                        .as_ref()
                        .is_some_and(|first| first.joins(shape)) =>
                {
                    next[*last] = index;
                    *last = index;
                }
                _ => {
                    open.insert(shape.key, (index, index));
                    firsts.push(index);
                }
            }
        }
        firsts
            .iter()
            .map(|&first| match (next[first], shapes[first].as_ref()) {
                (END, _) | (_, None) => Built::One(first),
                (_, Some(shape)) => {
                    let mut members = vec![first];
                    let mut at = next[first];
                    while at != END {
                        members.push(at);
                        at = next[at];
                    }
                    Built::Batch(batch(shape, &members, &shapes), members)
                }
            })
            .collect()
    };
    let mut pipeline = redis::pipe();
    let mut parts = Vec::with_capacity(built.len());
    for part in built {
        match part {
            Built::One(index) => {
                pipeline.add_command(std::mem::take(&mut calls[index]));
                parts.push(Part::One(index));
            }
            Built::Batch((command, script, limit), calls) => {
                pipeline.add_command(command);
                parts.push(Part::Batch {
                    script,
                    limit,
                    calls,
                });
            }
        }
    }
    Plan {
        calls: pipeline,
        parts,
    }
}

/// A part of a plan before the calls sent as they are are moved into the pipeline.
enum Built {
    One(usize),
    Batch((redis::Cmd, &'static redis::Script, i64), Vec<usize>),
}

/// The batch call deciding the calls at `members` (`first` is the first's shape), its script and
/// the limit the replies name.
fn batch(
    first: &Shape<'_>,
    members: &[usize],
    shapes: &[Option<Shape<'_>>],
) -> (redis::Cmd, &'static redis::Script, i64) {
    let mut call = redis::Cmd::with_capacity(
        7 + 2 * members.len(),
        80 + first.key.len() + members.len() * (first.nonce.len() + 24),
    );
    call.arg("EVALSHA")
        .arg(first.batch.get_hash())
        .arg(1)
        .arg(first.key)
        .arg(first.op)
        .arg(first.limit)
        .arg(first.window);
    for shape in members.iter().filter_map(|&i| shapes[i].as_ref()) {
        call.arg(shape.cost).arg(shape.nonce);
    }
    let limit = std::str::from_utf8(first.limit)
        .ok()
        .and_then(|limit| limit.parse().ok())
        .unwrap_or(0);
    (call, first.batch, limit)
}

/// Each call's reply from a batch's `reply` (four numbers a call), in the single scripts'
/// shape: `{allowed, 1, limit, remaining, reset_after_us, retry_after_us}`.
pub(super) fn split(reply: Value, limit: i64, calls: usize) -> redis::RedisResult<Vec<Value>> {
    let malformed = |reply: &Value| {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "a batch script's reply",
            format!("{reply:?} for {calls} calls"),
        ))
    };
    let Value::Array(numbers) = reply else {
        return Err(malformed(&reply));
    };
    if numbers.len() != 4 * calls || numbers.iter().any(|n| !matches!(n, Value::Int(_))) {
        return Err(malformed(&Value::Array(numbers)));
    }
    let mut numbers = numbers.into_iter();
    Ok((0..calls)
        .map(|_| {
            let mut reply = Vec::with_capacity(6);
            reply.push(numbers.next().unwrap_or(Value::Int(0)));
            reply.push(Value::Int(1));
            reply.push(Value::Int(limit));
            reply.extend(numbers.by_ref().take(3));
            Value::Array(reply)
        })
        .collect())
}

/// `SCRIPT LOAD` of `script`, for a batch the server did not know (a restart, `SCRIPT FLUSH`).
pub(super) fn load(script: &redis::Script) -> redis::Cmd {
    let source = TWINS
        .iter()
        .find(|twin| std::ptr::eq(&twin.batch, script))
        .map_or("", |twin| twin.source);
    let mut load = redis::cmd("SCRIPT");
    load.arg("LOAD").arg(source);
    load
}

#[cfg(any(test, feature = "test-util"))]
/// Runs the batch script of `policy` (one window)
/// with its clock set to `now_us`, for the calls `calls` (cost and nonce of each, in arrival
/// order) on `identity`'s key under `keys`, and returns what it decided for each call as
/// [`scripts::evaluate_at`] does for one (`expires_at_us` is the key's, the same for every
/// call). Like it, it leaves the key without a TTL. For tests that hold a batch to the single
/// script called once for each of its calls; `None` for a policy of several windows.
///
/// ```no_run
/// # async fn demo(connection: &mut redis::aio::MultiplexedConnection) -> Result<(), ratelimit_core::Error> {
/// use ratelimit_core::test_util::batches;
/// use ratelimit_core::{Identity, KeyBuilder, Policy, Window};
/// let policy = Policy::new("p", [Window::per_second(1)]);
/// let at = 1_700_000_000_000_000;
/// let keys = KeyBuilder::new("test:");
/// let calls = [(1, "a"), (1, "b")];
/// let decided = batches::evaluate_batch_at(connection, &keys, &policy, Identity::new(b"k"), &calls, true, at)
///     .await?
///     .expect("a one-window policy has a batch script");
/// assert!(decided[0].allowed && !decided[1].allowed);
/// # Ok(()) }
/// ```
pub async fn evaluate_batch_at<C: redis::aio::ConnectionLike>(
    connection: &mut C,
    keys: &crate::key::KeyBuilder,
    policy: &crate::policy::Policy,
    identity: crate::key::Identity<'_>,
    calls: &[(u64, &str)],
    consume: bool,
    now_us: u64,
) -> Result<Option<Vec<crate::algorithm::Verdict>>, crate::error::Error> {
    use crate::policy::Algorithm;
    let [window] = policy.windows() else {
        return Ok(None);
    };
    let source = match policy.algorithm() {
        Algorithm::SlidingWindow => assemble_batch!(
            "clock_argument.lua",
            "sliding_window.lua",
            "clock_argument_end.lua"
        ),
        Algorithm::TokenBucket => assemble_batch!(
            "clock_argument.lua",
            "token_bucket.lua",
            "clock_argument_end.lua"
        ),
        Algorithm::FixedWindow => assemble_batch!(
            "clock_argument.lua",
            "fixed_window.lua",
            "clock_argument_end.lua"
        ),
        Algorithm::SlidingCounter => assemble_batch!(
            "clock_argument.lua",
            "sliding_counter.lua",
            "clock_argument_end.lua"
        ),
    };
    let script = redis::Script::new(source);
    let mut invocation = script.prepare_invoke();
    for key in keys.keys(policy, identity) {
        invocation.key(key);
    }
    invocation
        .arg(if consume { "allow" } else { "peek" })
        .arg(window.max_requests())
        .arg(window.micros());
    for (cost, nonce) in calls {
        invocation.arg(cost).arg(nonce);
    }
    invocation.arg(now_us);
    let reply: Vec<i64> = invocation.invoke_async(connection).await?;
    let (decisions, ttls) = reply.split_at(reply.len().min(4 * calls.len()));
    let expires_at_us = ttls
        .iter()
        .copied()
        .filter(|&t| t >= 0)
        .max()
        .map_or(0, |ms| now_us + u64::try_from(ms).unwrap_or(0) * 1000);
    let non_negative = |v: i64| u64::try_from(v).unwrap_or(0);
    decisions
        .chunks(4)
        .map(|answer| match answer {
            [allowed, remaining, reset_after, retry_after] => Ok(crate::algorithm::Verdict {
                allowed: *allowed == 1,
                window_index: 0,
                remaining: non_negative(*remaining),
                reset_after_us: non_negative(*reset_after),
                retry_after_us: non_negative(*retry_after),
                expires_at_us,
            }),
            other => Err(crate::error::Error::UnexpectedReply(format!("{other:?}"))),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(
        sha: &str,
        key: &str,
        op: &str,
        cost: u64,
        nonce: &str,
        windows: &[(u64, u64)],
    ) -> redis::Cmd {
        let mut call = redis::cmd("EVALSHA");
        call.arg(sha).arg(1).arg(key).arg(op).arg(cost).arg(nonce);
        for (limit, window) in windows {
            call.arg(limit).arg(window);
        }
        call
    }

    fn args(call: &redis::Cmd) -> Vec<String> {
        call.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<cursor>".into(),
            })
            .collect()
    }

    /// Calls on one key become one batch where the first was; others go out as they are, and a
    /// call on the key that cannot join (another operation) starts the key's next batch.
    #[test]
    fn calls_on_one_key_become_one_batch_in_arrival_order() {
        let log = redis::Script::new(scripts::SLIDING_WINDOW);
        let log = log.get_hash();
        // A script without a batch twin (the multi-window log's, here with one window).
        let other = redis::Script::new(scripts::MULTI_WINDOW);
        let one = [(10, 60_000_000)];
        let two = [(10, 60_000_000), (100, 3_600_000_000)];
        let calls = vec![
            call(log, "a", "allow", 1, "n1", &one),
            call(log, "b", "allow", 1, "n2", &one),
            call(log, "a", "allow", 2, "n3", &one),
            call(log, "a", "peek", 1, "n4", &one),
            call(log, "a", "allow", 1, "n5", &one),
            call(other.get_hash(), "c", "allow", 1, "n6", &one),
            call(other.get_hash(), "c", "allow", 1, "n7", &one),
            call(log, "d", "allow", 1, "n8", &two),
            call(log, "d", "allow", 1, "n9", &two),
            call(log, "b", "allow", 1, "n10", &one),
            call(log, "a", "allow", 1, "n11", &one),
            // A reload between two calls: the same key under another window starts a batch
            // of its own, and the calls after it cannot join the one before.
            call(log, "b", "allow", 1, "n12", &[(20, 60_000_000)]),
            call(log, "b", "allow", 1, "n13", &[(20, 60_000_000)]),
            call(log, "b", "allow", 1, "n14", &one),
        ];
        let plan = plan(calls);
        let parts: Vec<String> = plan
            .parts
            .iter()
            .map(|part| match part {
                Part::One(i) => format!("{i}"),
                Part::Batch { calls, limit, .. } => format!("{calls:?}/{limit}"),
            })
            .collect();
        assert_eq!(
            parts,
            [
                "[0, 2]/10",
                "[1, 9]/10",
                "3",
                "[4, 10]/10",
                "5",
                "6",
                "7",
                "8",
                "[11, 12]/20",
                "13"
            ],
            "the peek at 3 closes a's first batch: 4 opens the next; 11 opens b's next"
        );
        let sent: Vec<Vec<String>> = plan.calls.cmd_iter().map(args).collect();
        let batch = TWINS[0].batch.get_hash();
        assert_eq!(
            sent[0],
            [
                "EVALSHA", batch, "1", "a", "allow", "10", "60000000", "1", "n1", "2", "n3"
            ]
        );
        assert_eq!(sent[1][3], "b");
        assert_eq!(
            sent[2][6], "n4",
            "a call alone on its key is sent as it was"
        );
        assert_eq!(
            sent[3],
            [
                "EVALSHA", batch, "1", "a", "allow", "10", "60000000", "1", "n5", "1", "n11"
            ]
        );
        assert_eq!(sent.len(), plan.parts.len());
    }

    #[test]
    fn a_queue_of_distinct_keys_goes_out_as_it_is() {
        let log = redis::Script::new(scripts::SLIDING_WINDOW);
        let calls: Vec<redis::Cmd> = (0..5)
            .map(|i| call(log.get_hash(), &format!("k{i}"), "allow", 1, "n", &[(1, 1)]))
            .collect();
        let expected: Vec<Vec<String>> = calls.iter().map(args).collect();
        let plan = plan(calls);
        assert!(plan.parts.iter().all(|p| matches!(p, Part::One(_))));
        let sent: Vec<Vec<String>> = plan.calls.cmd_iter().map(args).collect();
        assert_eq!(sent, expected);
    }

    #[test]
    fn a_batch_reply_is_split_into_single_replies() {
        let reply = Value::Array([1, 9, 5, 0, 0, 0, 5, 7].map(Value::Int).to_vec());
        let replies = split(reply, 10, 2).expect("two answers");
        let outcomes: Vec<_> = replies
            .iter()
            .map(|r| scripts::outcome_of(r).expect("a single reply"))
            .collect();
        assert!(outcomes[0].allowed && !outcomes[1].allowed);
        assert_eq!((outcomes[0].remaining, outcomes[0].reset_after_us), (9, 5));
        assert_eq!(outcomes[1].retry_after_us, 7);
        for wrong in [
            Value::Nil,
            Value::Array([1, 9, 5].map(Value::Int).to_vec()),
            Value::Array(vec![
                Value::Int(1),
                Value::Nil,
                Value::Int(1),
                Value::Int(1),
            ]),
        ] {
            assert!(split(wrong, 10, 1).is_err());
        }
    }

    /// Only the sliding logs' calls are sent again after a lost reply: a counter would count a
    /// call twice when another call wrote between.
    #[test]
    fn only_the_logs_calls_are_resendable() {
        let one = [(10, 60_000_000)];
        let hash = |source: &str| redis::Script::new(source).get_hash().to_owned();
        for (source, resendable) in [
            (scripts::SLIDING_WINDOW, true),
            (scripts::MULTI_WINDOW, true),
            (SLIDING_WINDOW_BATCH, true),
            (scripts::TOKEN_BUCKET, false),
            (scripts::FIXED_WINDOW, false),
            (scripts::SLIDING_COUNTER, false),
            (TOKEN_BUCKET_BATCH, false),
            (FIXED_WINDOW_BATCH, false),
            (SLIDING_COUNTER_BATCH, false),
        ] {
            let sent = call(&hash(source), "k", "allow", 1, "n", &one);
            assert_eq!(super::resendable(&sent), resendable, "{}", &source[..80]);
        }
        assert!(!super::resendable(&redis::cmd("PING")));
    }

    #[test]
    fn every_batch_script_is_loaded_by_its_own_source() {
        for script in all() {
            let load = load(script);
            let source = args(&load).pop().expect("the source");
            assert_eq!(redis::Script::new(&source).get_hash(), script.get_hash());
        }
    }
}
