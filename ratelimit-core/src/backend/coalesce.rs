//! Calls on one key in one pipeline, decided by one script call.
//!
//! A hot key's concurrent calls queue on the same lane (`batch.rs`) and would go out as as many
//! script calls, each paying Redis for the clock, the read and the write of the same state.
//! When a pipeline holds two or more calls on the same key with the same operation and windows
//! (any algorithm with one window, the sliding log with several), they are sent as one call of
//! the algorithm's batch script (`lua/batch/`), which reads the state once, decides the calls in
//! arrival order exactly as one call after another at the same instant would, writes once and
//! answers each call. The answers are reshaped into the single scripts' reply, so a caller
//! cannot tell which way its call went.
//!
//! Retries stay exact: when the connection broke under a pipeline, the lane sends again, once,
//! only the calls of the sliding logs, batches included, whose permits are members of each
//! call's own added with `NX`: sent twice, they take nothing twice. A log's batch goes again
//! marked `again` ([`sent_again`]): sent first, its script adds every admitted call's members
//! with one `ZADD`, since none of its calls can have run yet; sent again, call by call. The counters recognize at
//! most the last writer's nonce (the token bucket; the integer counters of the fixed window and
//! the sliding counter none), so their calls, alone or in a batch, are never sent again (their
//! callers get the error, and the fallback decides). The counters' policies of several windows
//! are sent one call each, as are calls on a cluster.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::Value;

use super::batch::Reply;
use crate::scripts;

/// A batch script's source: the clock prelude, the preludes named, the algorithm's batch body,
/// and the clock's postlude if it has one.
macro_rules! assemble_batch {
    ($clock:literal, [$($prelude:literal),*], $body:literal $(, $end:literal)?) => {
        concat!(
            include_str!(concat!("../../lua/prelude/", $clock)),
            $(include_str!(concat!("../../lua/prelude/", $prelude)),)*
            include_str!(concat!("../../lua/batch/", $body)),
            $(include_str!(concat!("../../lua/prelude/", $end)),)?
        )
    };
}

/// The batch script of an algorithm (`sliding_window`, `multi_window`, `token_bucket`,
/// `fixed_window`, `sliding_counter`) with the clock prelude `$clock` (and its postlude): the
/// one-window scripts read the batch arguments (`batch_arguments.lua`), the multi-window log its
/// own, and the logs share how a call's members are added (`log_add.lua`).
macro_rules! batch_source {
    ($clock:literal, sliding_window $(, $end:literal)?) => {
        assemble_batch!($clock, ["batch_arguments.lua", "log_add.lua"], "sliding_window.lua" $(, $end)?)
    };
    ($clock:literal, multi_window $(, $end:literal)?) => {
        assemble_batch!($clock, ["log_add.lua"], "multi_window.lua" $(, $end)?)
    };
    ($clock:literal, token_bucket $(, $end:literal)?) => {
        assemble_batch!($clock, ["batch_arguments.lua"], "token_bucket.lua" $(, $end)?)
    };
    ($clock:literal, fixed_window $(, $end:literal)?) => {
        assemble_batch!($clock, ["batch_arguments.lua"], "fixed_window.lua" $(, $end)?)
    };
    ($clock:literal, sliding_counter $(, $end:literal)?) => {
        assemble_batch!($clock, ["batch_arguments.lua"], "sliding_counter.lua" $(, $end)?)
    };
}

/// Source of the sliding log's batch script (one window).
pub const SLIDING_WINDOW_BATCH: &str = batch_source!("clock.lua", sliding_window);
/// Source of the token bucket's batch script (one window).
pub const TOKEN_BUCKET_BATCH: &str = batch_source!("clock.lua", token_bucket);
/// Source of the fixed window's batch script (one window).
pub const FIXED_WINDOW_BATCH: &str = batch_source!("clock.lua", fixed_window);
/// Source of the sliding counter's batch script (one window).
pub const SLIDING_COUNTER_BATCH: &str = batch_source!("clock.lua", sliding_counter);
/// Source of the sliding log's batch script for several windows: arguments of its own (the
/// number of windows, then their limits and lengths), and the single script's whole reply a
/// call.
pub const MULTI_WINDOW_BATCH: &str = batch_source!("clock.lua", multi_window);

/// A single script and the batch script that decides several of its calls on one key.
#[derive(Debug)]
pub(super) struct Twin {
    single: String,
    source: &'static str,
    batch: redis::Script,
    /// The multi-window log's: several windows, counted ahead of them in its arguments, and
    /// the single script's whole reply a call; the others take one window and answer four
    /// numbers a call.
    several: bool,
    /// Keys a call carries: two for the sliding counter (its even and odd counters), one for
    /// the others.
    keys: usize,
}

static TWINS: LazyLock<[Twin; 5]> = LazyLock::new(|| {
    let twin = |single: &str, source: &'static str| Twin {
        single: redis::Script::new(single).get_hash().to_owned(),
        source,
        batch: redis::Script::new(source),
        several: false,
        keys: 1,
    };
    [
        twin(scripts::SLIDING_WINDOW, SLIDING_WINDOW_BATCH),
        twin(scripts::TOKEN_BUCKET, TOKEN_BUCKET_BATCH),
        twin(scripts::FIXED_WINDOW, FIXED_WINDOW_BATCH),
        Twin {
            keys: 2,
            ..twin(scripts::SLIDING_COUNTER, SLIDING_COUNTER_BATCH)
        },
        Twin {
            several: true,
            ..twin(scripts::MULTI_WINDOW, MULTI_WINDOW_BATCH)
        },
    ]
});

impl Twin {
    /// Where a call's windows start among its arguments: after `EVALSHA`, the hash, the key
    /// count, the keys, the operation, the cost and the nonce.
    fn windows_at(&self) -> usize {
        6 + self.keys
    }
}

/// Every batch script, for preloading (`SCRIPT LOAD`).
pub fn all() -> [&'static redis::Script; 5] {
    let [a, b, c, d, e] = &*TWINS;
    [&a.batch, &b.batch, &c.batch, &d.batch, &e.batch]
}

/// Hashes of the scripts whose calls can be sent again after their reply was lost: the sliding
/// logs', whose permits are members of the call's own, added with `NX`. The counters recognize
/// at most the last writer's nonce (the token bucket; the fixed window's and the sliding
/// counter's integers none), and another call on the key may have written in between: a call of
/// theirs is never sent again.
static RESENDABLE: LazyLock<[String; 4]> = LazyLock::new(|| {
    [
        scripts::SLIDING_WINDOW,
        scripts::MULTI_WINDOW,
        SLIDING_WINDOW_BATCH,
        MULTI_WINDOW_BATCH,
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

/// `call` as it is sent again after its reply was lost: a sliding log's batch sent first as
/// `allow` goes again as `again`, which tells its script that the calls may have run (a first
/// send adds every admitted call's members with one `ZADD`, `lua/prelude/log_add.lua`); any
/// other call goes again as it is.
pub(super) fn sent_again(call: &redis::Cmd) -> redis::Cmd {
    let mut args = call.args_iter();
    let marked = match (
        args.next(),
        args.next(),
        args.next(),
        args.next(),
        args.next(),
    ) {
        (
            Some(redis::Arg::Simple(b"EVALSHA")),
            Some(redis::Arg::Simple(sha)),
            Some(redis::Arg::Simple(b"1")),
            Some(redis::Arg::Simple(_key)),
            Some(redis::Arg::Simple(b"allow")),
        ) => LOG_BATCHES.iter().any(|hash| hash.as_bytes() == sha),
        _ => false,
    };
    if !marked {
        return call.clone();
    }
    let mut again = redis::Cmd::with_capacity(call.args_iter().len(), 0);
    for (index, arg) in call.args_iter().enumerate() {
        if let redis::Arg::Simple(bytes) = arg {
            again.arg(if index == 4 {
                b"again".as_slice()
            } else {
                bytes
            });
        }
    }
    again
}

/// Hashes of the sliding logs' batch scripts, whose first send and send again differ.
static LOG_BATCHES: LazyLock<[String; 2]> = LazyLock::new(|| {
    [SLIDING_WINDOW_BATCH, MULTI_WINDOW_BATCH]
        .map(|source| redis::Script::new(source).get_hash().to_owned())
});

/// The twin of the single script whose hash is `single`, if it has one.
fn twin_of(single: &[u8]) -> Option<&'static Twin> {
    TWINS.iter().find(|twin| twin.single.as_bytes() == single)
}

/// What a batch needs of a call: the arguments of `EVALSHA <sha> <1 or 2> <key> [<key>] <op>
/// <cost> <nonce> <limit1> <window1> …`, a call of a script that has a batch twin.
struct Shape<'a> {
    call: &'a redis::Cmd,
    twin: &'static Twin,
    /// The first key, which names the state the calls share.
    key: &'a [u8],
    /// The sliding counter's second key (its odd counter).
    second: Option<&'a [u8]>,
    op: &'a [u8],
    cost: &'a [u8],
    nonce: &'a [u8],
    /// Windows the call carries (limit and length of each, after the nonce).
    windows: usize,
    /// The first two windows' limits and lengths (empty past the call's windows): compared
    /// as they are, without walking the call's arguments again.
    head: [&'a [u8]; HEAD],
}

/// Window arguments a [`Shape`] keeps: two windows' limits and lengths.
const HEAD: usize = 4;

impl<'a> Shape<'a> {
    fn of(call: &'a redis::Cmd) -> Option<Self> {
        let mut args = call.args_iter().map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        });
        let mut next = || args.next().flatten();
        let (evalsha, sha, keys) = (next()?, next()?, next()?);
        if evalsha != b"EVALSHA" {
            return None;
        }
        let twin = twin_of(sha)?;
        let second = match (twin.keys, keys) {
            (1, b"1") => false,
            (2, b"2") => true,
            _ => return None,
        };
        let key = next()?;
        let second = if second { Some(next()?) } else { None };
        let (op, cost, nonce) = (next()?, next()?, next()?);
        let rest = call.args_iter().len().checked_sub(twin.windows_at())?;
        let mut head: [&[u8]; HEAD] = [&[]; HEAD];
        for arg in head.iter_mut().take(rest) {
            *arg = next()?;
        }
        let windows = rest / 2;
        // One window for the single-window scripts, several for the multi-window log's.
        let fits = rest % 2 == 0
            && if twin.several {
                windows > 1
            } else {
                windows == 1
            };
        fits.then_some(Shape {
            call,
            twin,
            key,
            second,
            op,
            cost,
            nonce,
            windows,
            head,
        })
    }

    /// Whether `other` can be decided in the same batch: same script, key, operation, windows.
    fn joins(&self, other: &Shape<'_>) -> bool {
        std::ptr::eq(self.twin, other.twin)
            && self.op == other.op
            && self.windows == other.windows
            && self.head == other.head
            && (2 * self.windows <= HEAD
                || self
                    .call
                    .args_iter()
                    .skip(self.twin.windows_at() + HEAD)
                    .eq(other.call.args_iter().skip(other.twin.windows_at() + HEAD)))
    }

    /// The call's windows: limit and length of each, in pairs.
    fn window_args(&self) -> impl Iterator<Item = &'a [u8]> {
        self.call
            .args_iter()
            .skip(self.twin.windows_at())
            .filter_map(|arg| match arg {
                redis::Arg::Simple(bytes) => Some(bytes),
                _ => None,
            })
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
    /// The calls at these indexes, in arrival order, decided by `twin`'s batch script.
    Batch {
        twin: &'static Twin,
        calls: Vec<usize>,
    },
}

/// The plan for `calls` (a lane's queue, in arrival order): calls on one key that can be
/// decided together become one batch, placed where the first of them was; every other call is
/// sent as it is. A call on a key whose batch it cannot join (another operation or window, after
/// a reload) starts the key's next batch, so the calls on one key keep their order.
pub(super) fn plan(calls: Vec<redis::Cmd>) -> Plan {
    if !shares_a_key(&calls) {
        // Distinct keys (the usual queue): every call goes as it is, none is read.
        let parts = (0..calls.len()).map(Part::One).collect();
        let mut pipeline = redis::pipe();
        for call in calls {
            pipeline.add_command(call);
        }
        return Plan {
            calls: pipeline,
            parts,
        };
    }
    // One key, every call joining the first (a hot key's queue): no table of keys.
    one_batch(&calls).unwrap_or_else(|| grouped(calls))
}

/// [`plan`] of a queue in which some calls share a key, grouped by key through a table.
fn grouped(mut calls: Vec<redis::Cmd>) -> Plan {
    /// No next call in the group.
    const END: usize = usize::MAX;
    let count = calls.len();
    // Groups as chains of indexes: each group's first call in arrival order, and each call's
    // next in its group.
    let mut next = vec![END; count];
    let mut firsts = Vec::with_capacity(count);
    let built: Vec<Built> = {
        let shapes: Vec<Option<Shape<'_>>> = calls.iter().map(Shape::of).collect();
        // A fast hash, seeded per process: a key's bytes are a client's choice, but it cannot
        // learn the seed, and a queue holds at most a few thousand calls.
        let mut open: HashMap<&[u8], (usize, usize), foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(count, foldhash::fast::RandomState::default());
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
                    let shapes = members.iter().filter_map(|&i| shapes[i].as_ref());
                    Built::Batch(batch(shape, members.len(), shapes), members)
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
            Built::Batch((command, twin), calls) => {
                pipeline.add_command(command);
                parts.push(Part::Batch { twin, calls });
            }
        }
    }
    Plan {
        calls: pipeline,
        parts,
    }
}

/// The plan of `calls` when they all join the first's batch: one script call deciding them
/// all; `None` otherwise, and for a queue of one.
fn one_batch(calls: &[redis::Cmd]) -> Option<Plan> {
    let (first, rest) = calls.split_first()?;
    let first = Shape::of(first)?;
    if rest.is_empty() {
        return None;
    }
    let mut shapes = Vec::with_capacity(calls.len());
    for call in rest {
        let shape = Shape::of(call).filter(|shape| shape.key == first.key && first.joins(shape))?;
        shapes.push(shape);
    }
    let (command, twin) = batch(&first, calls.len(), std::iter::once(&first).chain(&shapes));
    let mut pipeline = redis::pipe();
    pipeline.add_command(command);
    Some(Plan {
        calls: pipeline,
        parts: vec![Part::Batch {
            twin,
            calls: (0..calls.len()).collect(),
        }],
    })
}

/// Whether two of `calls` have the same fourth argument, a script call's first key: only calls
/// on one key can be decided together. (Two other commands that happen to share a fourth
/// argument only cost the full plan.)
fn shares_a_key(calls: &[redis::Cmd]) -> bool {
    /// Queues up to this long are compared pair by pair, without a table.
    const SHORT: usize = 16;
    fn key(call: &redis::Cmd) -> &[u8] {
        match call.args_iter().nth(3) {
            Some(redis::Arg::Simple(key)) => key,
            _ => &[],
        }
    }
    if calls.len() <= SHORT {
        let mut keys: [&[u8]; SHORT] = [&[]; SHORT];
        for (index, call) in calls.iter().enumerate() {
            let key = key(call);
            if keys[..index].contains(&key) {
                return true;
            }
            keys[index] = key;
        }
        return false;
    }
    let mut seen: std::collections::HashSet<&[u8], foldhash::fast::RandomState> =
        std::collections::HashSet::with_capacity_and_hasher(
            calls.len(),
            foldhash::fast::RandomState::default(),
        );
    !calls.iter().all(|call| seen.insert(key(call)))
}

/// A part of a plan before the calls sent as they are are moved into the pipeline.
enum Built {
    One(usize),
    Batch((redis::Cmd, &'static Twin), Vec<usize>),
}

/// The batch call deciding the `count` calls of `members`, in order (`first` is the first's
/// shape), and its twin.
fn batch<'s, 'a: 's>(
    first: &Shape<'a>,
    count: usize,
    members: impl Iterator<Item = &'s Shape<'a>>,
) -> (redis::Cmd, &'static Twin) {
    let mut call = redis::Cmd::with_capacity(
        9 + 2 * first.windows + 2 * count,
        80 + 2 * first.key.len() + 40 * first.windows + count * (first.nonce.len() + 24),
    );
    call.arg("EVALSHA")
        .arg(first.twin.batch.get_hash())
        .arg(first.twin.keys)
        .arg(first.key);
    if let Some(second) = first.second {
        call.arg(second);
    }
    call.arg(first.op);
    if first.twin.several {
        call.arg(first.windows);
    }
    for arg in first.window_args() {
        call.arg(arg);
    }
    for shape in members {
        call.arg(shape.cost).arg(shape.nonce);
    }
    (call, first.twin)
}

/// Each call's reply from a batch's `reply`, in the single scripts' shape: four numbers a call
/// for a one-window batch (`{allowed, remaining, reset_after_us, retry_after_us}`, as a single
/// script of one window answers), six for the multi-window log's (`{allowed, binding window,
/// limit, remaining, reset_after_us, retry_after_us}`).
pub(super) fn split(
    reply: Value,
    twin: &Twin,
    calls: usize,
) -> redis::RedisResult<impl Iterator<Item = Reply>> {
    let width = if twin.several { 6 } else { 4 };
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
    if numbers.len() != width * calls || numbers.iter().any(|n| !matches!(n, Value::Int(_))) {
        return Err(malformed(&Value::Array(numbers)));
    }
    let mut numbers = numbers.into_iter().map(|number| match number {
        Value::Int(number) => number,
        _ => 0,
    });
    Ok((0..calls).map(move |_| {
        let mut call = [0; 6];
        for (slot, number) in call.iter_mut().zip(numbers.by_ref().take(width)) {
            *slot = number;
        }
        Reply::Numbers {
            numbers: call,
            len: width,
        }
    }))
}

/// `SCRIPT LOAD` of `twin`'s batch script, for a server that did not know it (a restart,
/// `SCRIPT FLUSH`).
pub(super) fn load(twin: &Twin) -> redis::Cmd {
    let mut load = redis::cmd("SCRIPT");
    load.arg("LOAD").arg(twin.source);
    load
}

#[cfg(any(test, feature = "test-util"))]
/// Runs the batch script of `policy` (one window)
/// with its clock set to `now_us`, for the calls `calls` (cost and nonce of each, in arrival
/// order) on `identity`'s key under `keys`, and returns what it decided for each call as
/// [`scripts::evaluate_at`] does for one (`expires_at_us` is the key's, the same for every
/// call). Like it, it leaves the key without a TTL. For tests that hold a batch to the single
/// script called once for each of its calls; `None` for a policy of several windows of an
/// algorithm other than the sliding log.
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
///     .expect("a sliding log has a batch script");
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
    let op = if consume { "allow" } else { "peek" };
    batch_at(connection, keys, policy, identity, calls, op, now_us).await
}

#[cfg(any(test, feature = "test-util"))]
/// [`evaluate_batch_at`] of a consuming batch sent again, as the lane sends a pipeline again
/// when the connection broke under it: a sliding log's batch is marked `again` (its calls may
/// have run), the others go as they were.
pub async fn evaluate_batch_sent_again_at<C: redis::aio::ConnectionLike>(
    connection: &mut C,
    keys: &crate::key::KeyBuilder,
    policy: &crate::policy::Policy,
    identity: crate::key::Identity<'_>,
    calls: &[(u64, &str)],
    now_us: u64,
) -> Result<Option<Vec<crate::algorithm::Verdict>>, crate::error::Error> {
    let op = match policy.algorithm() {
        crate::policy::Algorithm::SlidingWindow => "again",
        _ => "allow",
    };
    batch_at(connection, keys, policy, identity, calls, op, now_us).await
}

#[cfg(any(test, feature = "test-util"))]
async fn batch_at<C: redis::aio::ConnectionLike>(
    connection: &mut C,
    keys: &crate::key::KeyBuilder,
    policy: &crate::policy::Policy,
    identity: crate::key::Identity<'_>,
    calls: &[(u64, &str)],
    op: &str,
    now_us: u64,
) -> Result<Option<Vec<crate::algorithm::Verdict>>, crate::error::Error> {
    use crate::policy::Algorithm;
    let windows = policy.windows();
    let several = windows.len() > 1;
    let source = match policy.algorithm() {
        Algorithm::SlidingWindow if several => {
            batch_source!("clock_argument.lua", multi_window, "clock_argument_end.lua")
        }
        _ if several => return Ok(None),
        Algorithm::SlidingWindow => {
            batch_source!(
                "clock_argument.lua",
                sliding_window,
                "clock_argument_end.lua"
            )
        }
        Algorithm::TokenBucket => {
            batch_source!("clock_argument.lua", token_bucket, "clock_argument_end.lua")
        }
        Algorithm::FixedWindow => {
            batch_source!("clock_argument.lua", fixed_window, "clock_argument_end.lua")
        }
        Algorithm::SlidingCounter => {
            batch_source!(
                "clock_argument.lua",
                sliding_counter,
                "clock_argument_end.lua"
            )
        }
    };
    let script = redis::Script::new(source);
    let mut invocation = script.prepare_invoke();
    for key in keys.keys(policy, identity) {
        invocation.key(key);
    }
    invocation.arg(op);
    if several {
        invocation.arg(windows.len());
    }
    for window in windows {
        invocation.arg(window.max_requests()).arg(window.micros());
    }
    for (cost, nonce) in calls {
        invocation.arg(cost).arg(nonce);
    }
    invocation.arg(now_us);
    let reply: Vec<i64> = invocation.invoke_async(connection).await?;
    let width = if several { 6 } else { 4 };
    let (decisions, ttls) = reply.split_at(reply.len().min(width * calls.len()));
    let expires_at_us = scripts::expires_at(ttls, now_us);
    decisions
        .chunks(width)
        .map(|answer| {
            // A one-window batch leaves out the window (the first) and its limit.
            let whole = match *answer {
                [allowed, remaining, reset_after, retry_after] => {
                    [allowed, 1, 0, remaining, reset_after, retry_after]
                }
                [a, b, c, d, e, f] => [a, b, c, d, e, f],
                _ => return Err(crate::error::Error::UnexpectedReply(format!("{answer:?}"))),
            };
            scripts::verdict(&whole, expires_at_us)
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

    /// A plan's parts: a call's index, or a batch's indexes.
    fn parts(plan: &Plan) -> Vec<String> {
        plan.parts
            .iter()
            .map(|part| match part {
                Part::One(i) => format!("{i}"),
                Part::Batch { calls, .. } => format!("{calls:?}"),
            })
            .collect()
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
        // The multi-window log's script: with one window (never sent so), it has no batch.
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
            call(other.get_hash(), "d", "allow", 1, "n8", &two),
            call(other.get_hash(), "d", "allow", 1, "n9", &two),
            call(log, "b", "allow", 1, "n10", &one),
            call(log, "a", "allow", 1, "n11", &one),
            // A reload between two calls: the same key under another window starts a batch
            // of its own, and the calls after it cannot join the one before.
            call(log, "b", "allow", 1, "n12", &[(20, 60_000_000)]),
            call(log, "b", "allow", 1, "n13", &[(20, 60_000_000)]),
            call(log, "b", "allow", 1, "n14", &one),
        ];
        let plan = plan(calls);
        let parts = parts(&plan);
        assert_eq!(
            parts,
            [
                "[0, 2]", "[1, 9]", "3", "[4, 10]", "5", "6", "[7, 8]", "[11, 12]", "13"
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
        // Several windows: counted ahead of them.
        assert_eq!(
            sent[6],
            [
                "EVALSHA",
                TWINS[4].batch.get_hash(),
                "1",
                "d",
                "allow",
                "2",
                "10",
                "60000000",
                "100",
                "3600000000",
                "1",
                "n8",
                "1",
                "n9"
            ]
        );
        assert_eq!(sent.len(), plan.parts.len());
    }

    /// The sliding counter's calls carry two keys (its even and odd counters): they are batched
    /// on their first key, and the batch call carries both, then the windows and each call's
    /// cost and increment. A call of two keys to a script whose batch takes one is sent alone.
    #[test]
    fn a_sliding_counter_batch_carries_both_keys() {
        let counter = redis::Script::new(scripts::SLIDING_COUNTER);
        let pair = |key: &str, cost: u64| {
            let mut call = redis::cmd("EVALSHA");
            call.arg(counter.get_hash())
                .arg(2)
                .arg(key)
                .arg(format!("{key}:1"));
            call.arg("allow")
                .arg(cost)
                .arg(cost * 65_536)
                .arg(10)
                .arg(60_000_000);
            call
        };
        let log = redis::Script::new(scripts::SLIDING_WINDOW);
        let mut two_keys_to_a_log = redis::cmd("EVALSHA");
        two_keys_to_a_log
            .arg(log.get_hash())
            .arg(2)
            .arg("c")
            .arg("c:1");
        two_keys_to_a_log
            .arg("allow")
            .arg(1)
            .arg("n")
            .arg(10)
            .arg(60_000_000);
        let plan = plan(vec![
            pair("a", 1),
            pair("b", 1),
            pair("a", 2),
            two_keys_to_a_log.clone(),
            two_keys_to_a_log,
        ]);
        let parts = parts(&plan);
        assert_eq!(parts, ["[0, 2]", "1", "3", "4"]);
        let batch = plan.calls.cmd_iter().next().expect("the batch");
        let batch_hash = TWINS[3].batch.get_hash().to_owned();
        assert_eq!(
            args(batch),
            [
                "EVALSHA",
                &batch_hash,
                "2",
                "a",
                "a:1",
                "allow",
                "10",
                "60000000",
                "1",
                "65536",
                "2",
                "131072"
            ]
        );
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

    /// Long queues are looked through with a table: distinct keys go as they are, and two
    /// calls on one key among them, however far apart, become one batch.
    #[test]
    fn a_long_queue_is_planned_as_a_short_one() {
        let log = redis::Script::new(scripts::SLIDING_WINDOW);
        for (len, repeated) in [
            (16, None),
            (17, None),
            (40, None),
            (17, Some(16)),
            (40, Some(3)),
        ] {
            let calls: Vec<redis::Cmd> = (0..len)
                .map(|i| {
                    let key = format!("k{}", if Some(i) == repeated { 0 } else { i });
                    call(
                        log.get_hash(),
                        &key,
                        "allow",
                        1,
                        &format!("n{i}"),
                        &[(1, 1)],
                    )
                })
                .collect();
            let plan = plan(calls);
            let batches: Vec<String> = parts(&plan)
                .into_iter()
                .filter(|part| part.contains('['))
                .collect();
            match repeated {
                None => assert!(batches.is_empty(), "{len}: {batches:?}"),
                Some(i) => assert_eq!(batches, [format!("[0, {i}]")], "{len}"),
            }
        }
    }

    /// A queue whose calls all join the first's batch is planned without the table, as the
    /// table plans it; one that holds a call that cannot join is left to the table.
    #[test]
    fn a_hot_keys_queue_is_planned_as_the_table_plans_it() {
        let hash = |source: &str| redis::Script::new(source).get_hash().to_owned();
        let (log, counter, several) = (
            hash(scripts::SLIDING_WINDOW),
            hash(scripts::SLIDING_COUNTER),
            hash(scripts::MULTI_WINDOW),
        );
        let counter_call = |i: usize| {
            let mut call = redis::cmd("EVALSHA");
            call.arg(&counter)
                .arg(2)
                .arg("c:0")
                .arg("c:1")
                .arg("allow")
                .arg(1);
            call.arg(65_536 * (i as u64 % 3 + 1)).arg(10).arg(1_000_000);
            call
        };
        let queues: Vec<Vec<redis::Cmd>> = vec![
            (0..2)
                .map(|i| call(&log, "a", "allow", 1, &format!("n{i}"), &[(5, 9)]))
                .collect(),
            (0..40)
                .map(|i| call(&log, "a", "peek", 2, &format!("n{i}"), &[(5, 9)]))
                .collect(),
            (0..7)
                .map(|i| {
                    call(
                        &several,
                        "m",
                        "allow",
                        1,
                        &format!("n{i}"),
                        &[(5, 9), (50, 90)],
                    )
                })
                .collect(),
            (0..5).map(counter_call).collect(),
            (0..3)
                .map(|i| {
                    let windows = [(5, 9), (50, 90), (500, 900)];
                    call(&several, "m", "allow", 1, &format!("n{i}"), &windows)
                })
                .collect(),
        ];
        for queue in queues {
            let fast = one_batch(&queue).expect("every call joins the first");
            let table = grouped(queue);
            assert_eq!(parts(&fast), parts(&table));
            let sent = |plan: &Plan| plan.calls.cmd_iter().map(args).collect::<Vec<_>>();
            assert_eq!(sent(&fast), sent(&table));
        }
        let mixed = [
            call(&log, "a", "allow", 1, "n0", &[(5, 9)]),
            call(&log, "a", "allow", 1, "n1", &[(5, 9)]),
            call(&log, "a", "peek", 1, "n2", &[(5, 9)]),
        ];
        let other_key = [
            call(&log, "a", "allow", 1, "n0", &[(5, 9)]),
            call(&log, "b", "allow", 1, "n1", &[(5, 9)]),
        ];
        let other_window = [
            call(&log, "a", "allow", 1, "n0", &[(5, 9)]),
            call(&log, "a", "allow", 1, "n1", &[(6, 9)]),
        ];
        // Windows that differ in the second or the third window only.
        let second_window = [
            call(&several, "m", "allow", 1, "n0", &[(5, 9), (50, 90)]),
            call(&several, "m", "allow", 1, "n1", &[(5, 9), (50, 91)]),
        ];
        let third_window = [
            call(&several, "m", "allow", 1, "n0", &[(5, 9), (50, 90), (7, 8)]),
            call(&several, "m", "allow", 1, "n1", &[(5, 9), (50, 90), (7, 9)]),
        ];
        let more_windows = [
            call(&several, "m", "allow", 1, "n0", &[(5, 9), (50, 90)]),
            call(&several, "m", "allow", 1, "n1", &[(5, 9), (50, 90), (7, 8)]),
        ];
        for queue in [
            &mixed[..],
            &other_key,
            &other_window,
            &second_window,
            &third_window,
            &more_windows,
            &mixed[..1],
        ] {
            assert!(
                one_batch(queue).is_none(),
                "{:?}",
                queue.iter().map(args).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_batch_reply_is_split_into_single_replies() {
        let [one_window, .., several] = &*TWINS;
        let reply = Value::Array([1, 9, 5, 0, 0, 0, 5, 7].map(Value::Int).to_vec());
        let replies: Vec<Reply> = split(reply, one_window, 2).expect("two answers").collect();
        assert_eq!(
            replies[1],
            Reply::Numbers {
                numbers: [0, 0, 5, 7, 0, 0],
                len: 4
            }
        );
        let outcomes: Vec<_> = replies
            .iter()
            .map(|r| r.outcome().expect("a single reply"))
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
            assert!(split(wrong, one_window, 1).is_err());
        }
        // The multi-window log answers the single script's whole reply a call.
        let reply = Value::Array(
            [0, 2, 100, 0, 9, 8, 1, 1, 10, 3, 4, 0]
                .map(Value::Int)
                .to_vec(),
        );
        let replies: Vec<Reply> = split(reply, several, 2).expect("two answers").collect();
        let denied = replies[0].outcome().expect("a single reply");
        assert_eq!((denied.allowed, denied.window_index), (false, 1));
        assert_eq!(denied.retry_after_us, 8);
        let allowed = replies[1].outcome().expect("a single reply");
        assert!(allowed.allowed);
        assert_eq!((allowed.remaining, allowed.reset_after_us), (3, 4));
        let short = Value::Array([1, 9, 5, 0].map(Value::Int).to_vec());
        assert!(split(short, several, 1).is_err());
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
            (MULTI_WINDOW_BATCH, true),
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

    /// A sliding log's batch goes again marked `again` (its script then adds each call's members
    /// on their own, and recognizes those already there); its first send, a single call and a
    /// counter's batch go again as they are.
    #[test]
    fn a_log_batch_is_marked_when_sent_again() {
        let one = [(10, 60_000_000)];
        let two = [(10, 60_000_000), (100, 3_600_000_000)];
        for (single, windows, marked) in [
            (scripts::SLIDING_WINDOW, &one[..], true),
            (scripts::MULTI_WINDOW, &two[..], true),
            (scripts::TOKEN_BUCKET, &one[..], false),
            (scripts::FIXED_WINDOW, &one[..], false),
        ] {
            let sha = redis::Script::new(single).get_hash().to_owned();
            let calls = ["n1", "n2"].map(|nonce| call(&sha, "k", "allow", 1, nonce, windows));
            let plan = plan(calls.to_vec());
            let batch = plan.calls.cmd_iter().next().expect("one batch");
            let again = args(&sent_again(batch));
            let mut expected = args(batch);
            assert_eq!(expected[4], "allow", "{expected:?}");
            if marked {
                expected[4] = "again".into();
            }
            assert_eq!(again, expected, "{}", &single[..80]);
            assert_eq!(args(&sent_again(&calls[0])), args(&calls[0]));
        }
    }

    #[test]
    fn every_batch_script_is_loaded_by_its_own_source() {
        for twin in TWINS.iter() {
            let load = load(twin);
            let source = args(&load).pop().expect("the source");
            assert_eq!(
                redis::Script::new(&source).get_hash(),
                twin.batch.get_hash()
            );
        }
        assert_eq!(all().len(), TWINS.len());
    }
}
