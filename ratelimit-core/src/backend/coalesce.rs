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
use std::sync::{Arc, LazyLock};

use redis::Value;

use super::batch::Reply;
use super::command::{BatchCall, Command, Op, ScriptCall};
use crate::scripts::Single;

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
pub(crate) struct Twin {
    single: Single,
    source: &'static str,
    batch: redis::Script,
    /// `EVALSHA` and the batch script's hash, as a call of it starts on the wire.
    evalsha: Box<[u8]>,
    /// The multi-window log's: several windows, counted ahead of them in its arguments, and
    /// the single script's whole reply a call; the others take one window and answer four
    /// numbers a call.
    several: bool,
}

static TWINS: LazyLock<[Twin; 5]> = LazyLock::new(|| {
    let twin = |single: Single, source: &'static str| {
        let batch = redis::Script::new(source);
        Twin {
            single,
            source,
            evalsha: super::command::evalsha(batch.get_hash()),
            batch,
            several: single == Single::MultiWindow,
        }
    };
    [
        twin(Single::SlidingWindow, SLIDING_WINDOW_BATCH),
        twin(Single::TokenBucket, TOKEN_BUCKET_BATCH),
        twin(Single::FixedWindow, FIXED_WINDOW_BATCH),
        twin(Single::SlidingCounter, SLIDING_COUNTER_BATCH),
        twin(Single::MultiWindow, MULTI_WINDOW_BATCH),
    ]
});

impl Twin {
    /// Whether its calls carry several windows, counted ahead of them.
    pub(crate) fn several(&self) -> bool {
        self.several
    }

    /// The batch script's hash.
    pub(crate) fn batch_hash(&self) -> &str {
        self.batch.get_hash()
    }

    /// `EVALSHA` and the batch script's hash, as a call of it starts on the wire.
    pub(crate) fn evalsha(&self) -> &[u8] {
        &self.evalsha
    }
}

#[cfg(test)]
/// The twin at `index` (of 5), for tests.
pub(super) fn twin_at(index: usize) -> &'static Twin {
    &TWINS[index % TWINS.len()]
}

/// Every batch script, for preloading (`SCRIPT LOAD`).
pub fn all() -> [&'static redis::Script; 5] {
    let [a, b, c, d, e] = &*TWINS;
    [&a.batch, &b.batch, &c.batch, &d.batch, &e.batch]
}

/// Whether `command` may be sent again after its reply was lost: a sliding log's call or batch,
/// whose permits are members of each call's own added with `NX`. The counters recognize at most
/// the last writer's nonce (the token bucket; the fixed window's and the sliding counter's
/// integers none), and another call on the key may have written in between: a call of theirs
/// is never sent again.
pub(super) fn resendable(command: &Command) -> bool {
    match command {
        Command::Script(call) => call.single.is_log(),
        Command::Batch(batch) => batch.twin.single.is_log(),
        Command::Other(_) => false,
    }
}

/// `command` as it is sent again after its reply was lost: a sliding log's batch sent first as
/// `allow` goes again as `again`, which tells its script that the calls may have run (a first
/// send adds every admitted call's members with one `ZADD`, `lua/prelude/log_add.lua`); any
/// other command goes again as it is.
pub(super) fn sent_again(command: &Command) -> Command {
    match command {
        Command::Batch(batch) if batch.twin.single.is_log() && batch.op == Op::Allow => {
            Command::Batch(BatchCall {
                op: Op::Again,
                ..batch.clone()
            })
        }
        other => other.clone(),
    }
}

/// The twin of `single`, if it has one.
fn twin_of(single: Single) -> Option<&'static Twin> {
    TWINS.iter().find(|twin| twin.single == single)
}

/// What a batch needs of a command: a script call whose script has a batch twin, with the
/// windows that twin takes (one, or several for the multi-window log's).
#[derive(Clone, Copy)]
struct Shape<'a> {
    call: &'a ScriptCall,
    twin: &'static Twin,
}

impl<'a> Shape<'a> {
    fn of(command: &'a Command) -> Option<Self> {
        let Command::Script(call) = command else {
            return None;
        };
        let twin = twin_of(call.single)?;
        let windows = call.windows.len();
        let fits = if twin.several {
            windows > 1
        } else {
            windows == 1
        };
        fits.then_some(Shape { call, twin })
    }

    /// The keys, which name the state the calls share.
    fn key(&self) -> &'a [u8] {
        &self.call.keys
    }

    /// Whether `other` can be decided in the same batch: same script, keys, operation, windows.
    fn joins(&self, other: &Shape<'_>) -> bool {
        let (a, b) = (self.call, other.call);
        std::ptr::eq(self.twin, other.twin)
            && a.op == b.op
            && a.keys == b.keys
            && (Arc::ptr_eq(&a.windows, &b.windows) || a.windows == b.windows)
    }
}

/// A pipeline to send, and which of its replies answers which call.
#[derive(Debug)]
pub(super) struct Plan {
    /// The commands, one a part.
    pub(super) commands: Vec<Command>,
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
pub(super) fn plan(calls: Vec<Command>) -> Plan {
    if !shares_a_key(&calls) {
        // Distinct keys (the usual queue): every call goes as it is.
        let parts = (0..calls.len()).map(Part::One).collect();
        return Plan {
            commands: calls,
            parts,
        };
    }
    // One key, every call joining the first (a hot key's queue): no table of keys.
    let mut calls = calls;
    match one_batch(&mut calls) {
        Some(plan) => plan,
        None => grouped(calls),
    }
}

/// [`plan`] of a queue in which some calls share a key, grouped by key through a table.
fn grouped(mut calls: Vec<Command>) -> Plan {
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
            match open.get_mut(shape.key()) {
                Some((first, last))
                    if shapes[*first]
                        .as_ref()
                        .is_some_and(|first| first.joins(shape)) =>
                {
                    next[*last] = index;
                    *last = index;
                }
                _ => {
                    open.insert(shape.key(), (index, index));
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
                    let calls = members.iter().filter_map(|&i| shapes[i]);
                    Built::Batch(batch(shape, members.len(), calls), members)
                }
            })
            .collect()
    };
    let mut commands = Vec::with_capacity(built.len());
    let mut parts = Vec::with_capacity(built.len());
    for part in built {
        match part {
            Built::One(index) => {
                let taken = std::mem::replace(&mut calls[index], Command::Other(redis::Cmd::new()));
                commands.push(taken);
                parts.push(Part::One(index));
            }
            Built::Batch(mut command, members) => {
                let twin = command.twin;
                if let Some(&first) = members.first() {
                    command.keys = take_keys(&mut calls[first]);
                }
                commands.push(Command::Batch(command));
                parts.push(Part::Batch {
                    twin,
                    calls: members,
                });
            }
        }
    }
    Plan { commands, parts }
}

/// The plan of `calls` when they all join the first's batch: one script call deciding them
/// all; `None` otherwise, and for a queue of one.
fn one_batch(calls: &mut [Command]) -> Option<Plan> {
    let (first, rest) = calls.split_first()?;
    let first = Shape::of(first)?;
    let joins = |call| Shape::of(call).is_some_and(|shape| first.joins(&shape));
    if rest.is_empty() || !rest.iter().all(joins) {
        return None;
    }
    let mut command = batch(&first, calls.len(), calls.iter().filter_map(Shape::of));
    command.keys = take_keys(&mut calls[0]);
    Some(Plan {
        parts: vec![Part::Batch {
            twin: command.twin,
            calls: (0..calls.len()).collect(),
        }],
        commands: vec![Command::Batch(command)],
    })
}

/// The keys of `call` (a batch's first call, which is not sent itself), taken from it.
fn take_keys(call: &mut Command) -> Vec<u8> {
    match call {
        Command::Script(call) => std::mem::take(&mut call.keys),
        _ => Vec::new(),
    }
}

/// Whether two of `calls` are script calls on the same keys: only calls on one key can be
/// decided together.
fn shares_a_key(calls: &[Command]) -> bool {
    /// Queues up to this long are compared pair by pair, without a table.
    const SHORT: usize = 16;
    fn key(call: &Command) -> Option<&[u8]> {
        match call {
            Command::Script(call) => Some(&call.keys),
            _ => None,
        }
    }
    if calls.len() <= SHORT {
        let mut keys: [&[u8]; SHORT] = [&[]; SHORT];
        for (seen, key) in calls.iter().filter_map(key).enumerate() {
            if keys[..seen].contains(&key) {
                return true;
            }
            keys[seen] = key;
        }
        return false;
    }
    let mut seen: std::collections::HashSet<&[u8], foldhash::fast::RandomState> =
        std::collections::HashSet::with_capacity_and_hasher(
            calls.len(),
            foldhash::fast::RandomState::default(),
        );
    !calls.iter().filter_map(key).all(|key| seen.insert(key))
}

/// A part of a plan before the calls sent as they are are moved into the pipeline.
enum Built {
    One(usize),
    Batch(BatchCall, Vec<usize>),
}

/// The batch call deciding the `count` calls of `members`, in order (`first` is the first's
/// shape), without its keys yet: they are the first call's, taken from it ([`take_keys`]) once
/// nothing reads the calls any more.
fn batch<'a>(
    first: &Shape<'a>,
    count: usize,
    members: impl Iterator<Item = Shape<'a>>,
) -> BatchCall {
    let mut calls = Vec::with_capacity(count);
    calls.extend(members.map(|shape| (shape.call.cost, shape.call.third)));
    BatchCall {
        twin: first.twin,
        keys: Vec::new(),
        key_count: first.call.key_count,
        op: first.call.op,
        windows: first.call.windows.clone(),
        calls,
    }
}

/// Each call's reply from a batch's `reply`, in the single scripts' shape: four numbers a call
/// for a one-window batch (`{allowed, remaining, reset_after_us, retry_after_us}`, as a single
/// script of one window answers), six for the multi-window log's (`{allowed, binding window,
/// limit, remaining, reset_after_us, retry_after_us}`).
pub(super) fn split(
    reply: Reply,
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
    // This project's connection reads the integers as they are (`wire.rs`); the redis crate's
    // connections give an array of values.
    let numbers = match reply {
        Reply::Integers(integers) => integers,
        other => match other.into_value() {
            Value::Array(items) if items.iter().all(|n| matches!(n, Value::Int(_))) => items
                .into_iter()
                .map(|number| match number {
                    Value::Int(number) => number,
                    _ => 0,
                })
                .collect(),
            value => return Err(malformed(&value)),
        },
    };
    if numbers.len() != width * calls {
        return Err(malformed(&Reply::Integers(numbers).into_value()));
    }
    let mut numbers = numbers.into_iter();
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
pub(super) fn load(twin: &Twin) -> Command {
    let mut load = redis::cmd("SCRIPT");
    load.arg("LOAD").arg(twin.source);
    Command::Other(load)
}

#[cfg(any(test, feature = "test-util"))]
/// Runs the batch script of `policy` (one window)
/// with its clock set to `now_us`, for the calls `calls` (cost and nonce of each, in arrival
/// order) on `identity`'s key under `keys`, and returns what it decided for each call as
/// [`crate::scripts::evaluate_at`] does for one (`expires_at_us` is the key's, the same for every
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
    let expires_at_us = crate::scripts::expires_at(ttls, now_us);
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
            crate::scripts::verdict(&whole, expires_at_us)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::command::Third;
    use crate::policy::{Window, Windows};
    use crate::scripts;

    /// A call of the single script whose hash is `sha` on `keys`: `third` is a counter's
    /// increment, or another script's nonce.
    fn script(
        sha: &str,
        keys: &[&str],
        op: &str,
        cost: u64,
        third: &str,
        windows: &[(u64, u64)],
    ) -> Command {
        let single = Single::with_hash(sha).expect("a single script's hash");
        let third = match third.parse() {
            Ok(increment) if matches!(single, Single::FixedWindow | Single::SlidingCounter) => {
                Third::Increment(increment)
            }
            _ if third.is_empty() => Third::Empty,
            _ => Third::nonce(third.as_bytes()),
        };
        let op = match op {
            "allow" => Op::Allow,
            "peek" => Op::Peek,
            _ => Op::Again,
        };
        let windows: Arc<Windows> = Arc::new(
            windows
                .iter()
                .map(|&(limit, us)| Window::new(limit, Duration::from_micros(us)))
                .collect(),
        );
        let write_keys = |out: &mut dyn FnMut(&[&[u8]])| {
            for key in keys {
                out(&[key.as_bytes()]);
            }
        };
        Command::Script(ScriptCall::new(
            single, 16, write_keys, op, cost, third, windows,
        ))
    }

    fn call(
        sha: &str,
        key: &str,
        op: &str,
        cost: u64,
        nonce: &str,
        windows: &[(u64, u64)],
    ) -> Command {
        script(sha, &[key], op, cost, nonce, windows)
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

    fn args(call: &Command) -> Vec<String> {
        call.to_cmd()
            .args_iter()
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
        let sent: Vec<Vec<String>> = plan.commands.iter().map(args).collect();
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
    /// cost and increment.
    #[test]
    fn a_sliding_counter_batch_carries_both_keys() {
        let counter = redis::Script::new(scripts::SLIDING_COUNTER);
        let pair = |key: &str, cost: u64| {
            let increment = (cost * 65_536).to_string();
            let keys = [key, &format!("{key}:1")];
            script(
                counter.get_hash(),
                &keys,
                "allow",
                cost,
                &increment,
                &[(10, 60_000_000)],
            )
        };
        let plan = plan(vec![pair("a", 1), pair("b", 1), pair("a", 2)]);
        let parts = parts(&plan);
        assert_eq!(parts, ["[0, 2]", "1"]);
        let batch = plan.commands.first().expect("the batch");
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
        let calls: Vec<Command> = (0..5)
            .map(|i| call(log.get_hash(), &format!("k{i}"), "allow", 1, "n", &[(1, 1)]))
            .collect();
        let expected: Vec<Vec<String>> = calls.iter().map(args).collect();
        let plan = plan(calls);
        assert!(plan.parts.iter().all(|p| matches!(p, Part::One(_))));
        let sent: Vec<Vec<String>> = plan.commands.iter().map(args).collect();
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
            let calls: Vec<Command> = (0..len)
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
            let increment = (65_536 * (i as u64 % 3 + 1)).to_string();
            let keys = ["c:0", "c:1"];
            script(&counter, &keys, "allow", 1, &increment, &[(10, 1_000_000)])
        };
        let queues: Vec<Vec<Command>> = vec![
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
            let fast = one_batch(&mut queue.clone()).expect("every call joins the first");
            let table = grouped(queue);
            assert_eq!(parts(&fast), parts(&table));
            let sent = |plan: &Plan| plan.commands.iter().map(args).collect::<Vec<_>>();
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
            let mut kept = queue.to_vec();
            assert!(
                one_batch(&mut kept).is_none(),
                "{:?}",
                queue.iter().map(args).collect::<Vec<_>>()
            );
            // Left as it was, for the table.
            assert_eq!(
                kept.iter().map(args).collect::<Vec<_>>(),
                queue.iter().map(args).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_batch_reply_is_split_into_single_replies() {
        let [one_window, .., several] = &*TWINS;
        let reply = Reply::Value(Value::Array(
            [1, 9, 5, 0, 0, 0, 5, 7].map(Value::Int).to_vec(),
        ));
        let replies: Vec<Reply> = split(reply, one_window, 2).expect("two answers").collect();
        // Read by this project's connection, the same integers split alike.
        let read = Reply::Integers(vec![1, 9, 5, 0, 0, 0, 5, 7]);
        let read: Vec<Reply> = split(read, one_window, 2).expect("two answers").collect();
        assert_eq!(read, replies);
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
            assert!(split(Reply::Value(wrong), one_window, 1).is_err());
        }
        for wrong in [vec![1, 9, 5], vec![1, 9, 5, 0, 0]] {
            assert!(split(Reply::Integers(wrong), one_window, 1).is_err());
        }
        // The multi-window log answers the single script's whole reply a call.
        let reply = Reply::Integers(vec![0, 2, 100, 0, 9, 8, 1, 1, 10, 3, 4, 0]);
        let replies: Vec<Reply> = split(reply, several, 2).expect("two answers").collect();
        let denied = replies[0].outcome().expect("a single reply");
        assert_eq!((denied.allowed, denied.window_index), (false, 1));
        assert_eq!(denied.retry_after_us, 8);
        let allowed = replies[1].outcome().expect("a single reply");
        assert!(allowed.allowed);
        assert_eq!((allowed.remaining, allowed.reset_after_us), (3, 4));
        let short = Value::Array([1, 9, 5, 0].map(Value::Int).to_vec());
        assert!(split(Reply::Value(short), several, 1).is_err());
    }

    /// Only the sliding logs' calls are sent again after a lost reply: a counter would count a
    /// call twice when another call wrote between.
    #[test]
    fn only_the_logs_calls_are_resendable() {
        let one = [(10, 60_000_000)];
        let two = [(10, 60_000_000), (100, 3_600_000_000)];
        let hash = |source: &str| redis::Script::new(source).get_hash().to_owned();
        for (source, windows, resendable) in [
            (scripts::SLIDING_WINDOW, &one[..], true),
            (scripts::MULTI_WINDOW, &two[..], true),
            (scripts::TOKEN_BUCKET, &one[..], false),
            (scripts::FIXED_WINDOW, &one[..], false),
            (scripts::SLIDING_COUNTER, &one[..], false),
        ] {
            let sent = call(&hash(source), "k", "allow", 1, "n", windows);
            assert_eq!(super::resendable(&sent), resendable, "{}", &source[..80]);
            // Its batch, as the plan builds it.
            let batch = plan(vec![sent.clone(), sent]).commands.remove(0);
            assert!(matches!(batch, Command::Batch(_)), "{}", &source[..80]);
            assert_eq!(super::resendable(&batch), resendable, "{}", &source[..80]);
        }
        assert!(!super::resendable(&redis::cmd("PING").into()));
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
            let batch = plan.commands.first().expect("one batch");
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
