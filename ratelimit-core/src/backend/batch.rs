//! Concurrent script calls on one connection sent together, as one pipeline.
//!
//! Every decision is one `EVALSHA`. Sent one by one over the redis crate's multiplexed
//! connection, each call is a message to the connection's task on the Redis I/O thread and a
//! reply sent back, two wake-ups across threads a decision; on two shared cores those cost more
//! than Redis's own work. On a [`Wire`](super::wire) the leader writes and reads the socket
//! itself. A
//! [`Lane`] (one a pooled connection) keeps at most one pipeline in flight: a call that finds
//! the lane idle is sent at once, alone; calls that arrive while a pipeline is in flight queue,
//! and when its replies are in, the caller that led it hands the whole queue to the first
//! queued caller, which sends it as the next pipeline. Each call still runs on its own (a
//! pipeline is not a transaction), in arrival order, and gets its own reply or error; the
//! scripts, their atomicity and Redis's clock are unchanged. The calls of a pipeline on one key
//! are decided by one script call, as one after another would be (`coalesce.rs`).
//!
//! A broken connection: the leader sends again, once, the calls that are idempotent (the
//! sliding logs'; see [`send_plan`]), alone or in a pipeline; the others fail with the error.
//!
//! Time: the Redis timeout bounds a pipeline from when it is sent to its replies, as it bounds
//! a call sent alone. The wait in the queue is not part of it: like the wait for a turn
//! (`RedisBackend::turn`), it is time spent behind this process's own calls, not a Redis
//! failure. When Redis does not answer in time, the pipeline fails for all of its callers at
//! once, and so do the calls queued behind it: they waited up to the timeout for a Redis that did
//! not answer, and sending them then would make them wait a second timeout.
//!
//! Cancellation: a caller that gives up (its timeout) while leading drops its pipeline's
//! waiters, who see the call fail as a timed-out call would, and the lane passes to the next
//! queued caller; a queued caller that gave up is skipped, and one that gives up with the lane
//! just handed to it (the message waiting, unread) passes it on as it goes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::coalesce::{self, Part};
use super::command::Command;

/// What a [`Lane`] sends its calls on: a connection that takes one call, or a pipeline of them,
/// and gives their replies in order.
pub trait Exchange {
    /// Sends `call` and reads its reply.
    fn one(&mut self, call: &Command) -> impl Future<Output = redis::RedisResult<Reply>> + Send;

    /// Sends every call of `calls` and reads their replies.
    fn many(
        &mut self,
        calls: &[Command],
    ) -> impl Future<Output = redis::RedisResult<Vec<Reply>>> + Send;
}

/// The redis crate's multiplexed connection, through its own interface.
impl Exchange for redis::aio::MultiplexedConnection {
    async fn one(&mut self, call: &Command) -> redis::RedisResult<Reply> {
        redis::aio::ConnectionLike::req_packed_command(self, &call.to_cmd())
            .await
            .map(Reply::Value)
    }

    async fn many(&mut self, calls: &[Command]) -> redis::RedisResult<Vec<Reply>> {
        let pipeline = pipeline_of(calls);
        redis::aio::ConnectionLike::req_packed_commands(self, &pipeline, 0, calls.len())
            .await
            .map(Reply::values)
    }
}

/// `calls` as the redis crate's pipeline, for its connections.
pub(super) fn pipeline_of(calls: &[Command]) -> redis::Pipeline {
    let mut pipeline = redis::pipe();
    for call in calls {
        pipeline.add_command(call.to_cmd());
    }
    pipeline
}

/// One connection's queue of calls and whether a pipeline is in flight on it.
#[derive(Debug, Default)]
pub struct Lane {
    state: Mutex<State>,
    /// Pipelines of two or more calls sent, and the calls they carried.
    pipelines: AtomicU64,
    pipelined_calls: AtomicU64,
    /// Batches of calls on one key decided by one script call, and the calls they decided.
    batches: AtomicU64,
    coalesced_calls: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// Calls waiting for the next pipeline, in arrival order.
    queue: Vec<Waiting>,
    /// A caller is sending a pipeline, or is about to: new calls queue.
    leading: bool,
}

/// A queued call: its command and where its answer goes (`None` for the leader's own).
#[derive(Debug)]
struct Waiting {
    call: Command,
    answer: Option<oneshot::Sender<Answer>>,
}

/// What a queued caller receives: its reply, or the next pipeline to send (its own call first).
#[derive(Debug)]
enum Answer {
    Reply(redis::RedisResult<Reply>),
    Lead(Vec<Waiting>),
}

/// A call's reply from its [`Lane`]: what Redis answered to the call, or the call's part of a
/// batch's answer (`coalesce.rs`), in the shape the call's own script answers, kept as numbers
/// rather than rebuilt into a reply of its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Redis's reply to the call, sent as it is.
    Value(redis::Value),
    /// The call's numbers: a single script's reply as this project's connection reads it, or
    /// the call's part of a batch's answer; four for a policy of one window, six for several
    /// (the single scripts' replies, `scripts::outcome`).
    Numbers {
        /// The numbers, the first `len` of them read.
        numbers: [i64; 6],
        /// How many there are.
        len: usize,
    },
    /// An array of seven to 96 short integers as this project's connection reads it: a batch
    /// script's reply, four or six numbers for each of its calls, in order, which
    /// `coalesce::split` hands out as their [`Reply::Numbers`]. Only script calls' replies are
    /// read so, and no single script answers more than six numbers.
    Integers(Vec<i64>),
}

impl Reply {
    /// The redis crate's replies, as they are.
    pub(crate) fn values(values: Vec<redis::Value>) -> Vec<Reply> {
        values.into_iter().map(Reply::Value).collect()
    }

    /// The reply as the redis crate's value: numbers as an array of integers.
    pub(crate) fn into_value(self) -> redis::Value {
        match self {
            Reply::Value(value) => value,
            Reply::Numbers { numbers, len } => redis::Value::Array(
                numbers
                    .get(..len)
                    .unwrap_or(&numbers)
                    .iter()
                    .copied()
                    .map(redis::Value::Int)
                    .collect(),
            ),
            Reply::Integers(integers) => {
                redis::Value::Array(integers.into_iter().map(redis::Value::Int).collect())
            }
        }
    }

    /// The decision a script call's reply holds.
    pub(crate) fn outcome(&self) -> Result<crate::decision::Outcome, crate::Error> {
        match self {
            Reply::Value(value) => crate::scripts::outcome_of(value),
            Reply::Numbers { numbers, len } => {
                crate::scripts::outcome(numbers.get(..*len).unwrap_or(numbers))
            }
            Reply::Integers(integers) => crate::scripts::outcome(integers),
        }
    }
}

impl Lane {
    /// Sends `call` on `connection`, with whatever calls queue on this lane meanwhile; the
    /// pipeline that carries it gets `timeout` from when it is sent to its replies.
    ///
    /// The call takes its place on the lane when `send` is called, not when the future is
    /// first polled: it leads when the lane is idle, and queues behind the pipeline in flight
    /// otherwise. Dropping the future gives the place up (the lane is handed on).
    pub fn send<'a, E: Exchange + Send>(
        &'a self,
        connection: &'a mut E,
        call: impl Into<Command>,
        timeout: Duration,
    ) -> impl Future<Output = redis::RedisResult<Reply>> + Send + 'a {
        // The call is kept once, here, and lent to the futures below: each `async fn` would
        // keep a copy of its own for its whole life.
        let mut place = self.enter(call.into());
        async move {
            match &mut place {
                // The lane was idle: sent at once, alone (and without a pipeline to build).
                // Boxed, so that a decision's future (which holds this one) and this send
                // are each small enough for the allocator's per-thread cache, where the two
                // together are not (see `docs/Performance.md`).
                Place::Alone { call, hand_off } => {
                    let reply = Box::pin(within(timeout, send_alone(connection, call))).await;
                    hand_off.watch(reply)
                }
                Place::Queued(queued) => self.wait_in(queued, connection, timeout).await,
            }
        }
    }

    /// `call`'s place on the lane: sent at once when the lane is idle, queued otherwise.
    fn enter(&self, call: Command) -> Place<'_> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.leading {
            let (answer, receive) = oneshot::channel();
            state.queue.push(Waiting {
                call,
                answer: Some(answer),
            });
            Place::Queued(Queued {
                lane: self,
                receive,
            })
        } else {
            state.leading = true;
            Place::Alone {
                call,
                hand_off: HandOff::new(self),
            }
        }
    }

    /// A queued call's wait: for its reply, or for the next pipeline to lead, its own call first.
    async fn wait_in(
        &self,
        queued: &mut Queued<'_>,
        connection: &mut impl Exchange,
        timeout: Duration,
    ) -> redis::RedisResult<Reply> {
        let pipeline = match (&mut queued.receive).await {
            Ok(Answer::Reply(reply)) => return reply,
            Ok(Answer::Lead(pipeline)) => pipeline,
            // The caller that led this call's pipeline gave up before the replies came.
            Err(_) => return Err(abandoned()),
        };
        let mut hand_off = HandOff::new(self);
        if pipeline.len() > 1 {
            self.pipelines.fetch_add(1, Ordering::Relaxed);
            self.pipelined_calls
                .fetch_add(pipeline.len() as u64, Ordering::Relaxed);
        }
        // Boxed: a leader's future is large, and every call's future (a call sent alone
        // included) would otherwise carry and move room for it; this allocates once a pipeline.
        hand_off.watch(Box::pin(within(timeout, lead(self, connection, pipeline))).await)
    }

    /// Pipelines of two or more calls sent so far, and the calls they carried.
    pub(crate) fn pipelines(&self) -> (u64, u64) {
        (
            self.pipelines.load(Ordering::Relaxed),
            self.pipelined_calls.load(Ordering::Relaxed),
        )
    }

    /// Batches sent so far (calls on one key decided by one script call), and the calls they
    /// decided.
    pub(crate) fn batches(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.coalesced_calls.load(Ordering::Relaxed),
        )
    }

    /// Passes the lane to the first queued caller that is still there, with every queued call;
    /// frees it when none is.
    fn hand_off(&self) {
        self.hand_off_with(Vec::new());
    }

    /// Answers every queued call with `error` (the pipeline ahead of them timed out) and frees
    /// the lane.
    fn fail_queue(&self, error: &redis::RedisError) {
        let queue = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.leading = false;
            std::mem::take(&mut state.queue)
        };
        answer_all(queue.into_iter().map(|w| w.answer).collect(), error);
    }

    /// [`Self::hand_off`], with `first` (calls handed to a caller that gave up) ahead of the queue.
    fn hand_off_with(&self, first: Vec<Waiting>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !first.is_empty() {
            state.queue.splice(0..0, first);
        }
        loop {
            if state.queue.is_empty() {
                state.leading = false;
                return;
            }
            let mut next = std::mem::take(&mut state.queue);
            let Some(first) = next.first_mut().and_then(|w| w.answer.take()) else {
                // Only a leader's own call has no answer, and it is never queued.
                next.remove(0);
                state.queue = next;
                continue;
            };
            match first.send(Answer::Lead(next)) {
                Ok(()) => return,
                // That caller gave up: its call is not sent, the others are offered on.
                Err(Answer::Lead(mut rest)) => {
                    rest.remove(0);
                    state.queue = rest;
                }
                Err(Answer::Reply(_)) => return,
            }
        }
    }
}

/// A call's place on its [`Lane`] ([`Lane::send`]).
enum Place<'a> {
    /// The lane was idle: the call is sent at once, alone, and the lane handed on after it.
    Alone {
        call: Command,
        hand_off: HandOff<'a>,
    },
    /// A pipeline is in flight: the call waits for the next.
    Queued(Queued<'a>),
}

/// A queued caller's wait for its answer. Dropped unanswered (the caller gave up) just after the
/// lane was handed to it, it hands the lane on: the message is there, unread, and nobody else
/// would send the pipeline it carries.
struct Queued<'a> {
    lane: &'a Lane,
    receive: oneshot::Receiver<Answer>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        // Closed first, so that a hand-off racing with this drop either arrives before (and is
        // read here) or fails in `hand_off`, which then offers the queue to the next caller.
        self.receive.close();
        if let Ok(Answer::Lead(mut pipeline)) = self.receive.try_recv() {
            // Its own call, first, goes unsent with it.
            pipeline.remove(0);
            self.lane.hand_off_with(pipeline);
        }
    }
}

/// Hands the lane on when the leader is done, or dropped while waiting for its replies; fails
/// the queue instead when Redis did not answer the leader in time.
struct HandOff<'a> {
    lane: &'a Lane,
    timed_out: Option<redis::RedisError>,
}

impl<'a> HandOff<'a> {
    fn new(lane: &'a Lane) -> Self {
        Self {
            lane,
            timed_out: None,
        }
    }

    /// Notes whether the leader's `reply` is a timeout, and passes it through.
    fn watch(&mut self, reply: redis::RedisResult<Reply>) -> redis::RedisResult<Reply> {
        if let Err(error) = &reply
            && error.is_timeout()
        {
            self.timed_out = Some(same_kind(error));
        }
        reply
    }
}

impl Drop for HandOff<'_> {
    fn drop(&mut self) {
        match &self.timed_out {
            Some(error) => self.lane.fail_queue(error),
            None => self.lane.hand_off(),
        }
    }
}

/// Sends `pipeline` (the leader's own call first), its calls on one key coalesced
/// (`coalesce.rs`), and answers every other caller in it. When the connection broke under it,
/// what can be is sent again once ([`send_plan`]).
async fn lead(
    lane: &Lane,
    connection: &mut impl Exchange,
    pipeline: Vec<Waiting>,
) -> redis::RedisResult<Reply> {
    if let [alone] = pipeline.as_slice() {
        return send_alone(connection, &alone.call).await;
    }
    let mut answers = Vec::with_capacity(pipeline.len());
    let calls = pipeline
        .into_iter()
        .map(|waiting| {
            answers.push(waiting.answer);
            waiting.call
        })
        .collect();
    let plan = coalesce::plan(calls);
    let replies = match send_plan(connection, &plan.commands).await {
        Ok(replies) => replies,
        Err(error) => {
            answer_all(answers, &error);
            return Err(error);
        }
    };
    // The leader's own reply; `None` only if the replies skipped its call, which `in_step`
    // rules out (an error is built only then, not for every pipeline).
    let mut own = None;
    let mut unknown_script = None;
    for (reply, part) in replies.into_iter().zip(plan.parts) {
        match part {
            Part::One(index) => deliver(&mut answers, &mut own, index, reply),
            Part::Batch { twin, calls } => {
                lane.batches.fetch_add(1, Ordering::Relaxed);
                lane.coalesced_calls
                    .fetch_add(calls.len() as u64, Ordering::Relaxed);
                match reply.and_then(|r| coalesce::split(r, twin, calls.len())) {
                    Ok(replies) => {
                        for (index, reply) in calls.into_iter().zip(replies) {
                            deliver(&mut answers, &mut own, index, Ok(reply));
                        }
                    }
                    Err(error) => {
                        // The batch did not run: each call is tried again on its own (a
                        // missing script is loaded for it), and the batch script is loaded
                        // for the next batches.
                        if error.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                        {
                            unknown_script = Some(twin);
                        }
                        for index in calls {
                            deliver(&mut answers, &mut own, index, Err(same_kind(&error)));
                        }
                    }
                }
            }
        }
    }
    if let Some(twin) = unknown_script {
        // For the next batches; the calls of this pipeline have their answers, the leader's
        // own included, whatever this load does (a failed load is tried again by the next
        // batch that finds the script missing).
        let _ = connection.one(&coalesce::load(twin)).await;
    }
    own.unwrap_or_else(|| Err(abandoned()))
}

/// Sends `calls` and reads a reply for each. When the connection broke under them, the calls
/// that are idempotent (the sliding logs') are sent again, once, together, and the others fail
/// with the broken connection's error: they may have run, and a counter would count them twice.
async fn send_plan(
    connection: &mut impl Exchange,
    calls: &[Command],
) -> redis::RedisResult<Vec<redis::RedisResult<Reply>>> {
    let count = calls.len();
    let error = match connection.many(calls).await {
        Ok(replies) => return in_step(replies, count),
        Err(error) if is_broken_connection(&error) => error,
        Err(error) => return Err(error),
    };
    let mut again = Vec::new();
    let resent: Vec<bool> = calls
        .iter()
        .map(|call| {
            let resend = coalesce::resendable(call);
            if resend {
                again.push(coalesce::sent_again(call));
            }
            resend
        })
        .collect();
    if again.is_empty() {
        return Err(error);
    }
    let mut replies = match connection.many(&again).await {
        Ok(replies) => in_step(replies, again.len())?.into_iter(),
        Err(error) => return Err(error),
    };
    Ok(resent
        .into_iter()
        .map(|resent| match resent {
            true => replies.next().unwrap_or_else(|| Err(same_kind(&error))),
            false => Err(same_kind(&error)),
        })
        .collect())
}

/// `replies` to `count` calls, each read as a reply or the error the server answered; an error
/// when there are not as many as calls.
fn in_step(
    replies: Vec<Reply>,
    count: usize,
) -> redis::RedisResult<Vec<redis::RedisResult<Reply>>> {
    if replies.len() != count {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "a pipeline of script calls",
            format!("{} replies to {count} calls", replies.len()),
        )));
    }
    Ok(replies.into_iter().map(checked_reply).collect())
}

/// `reply`, or the server error it holds. A script's reply (an array of integers, or of
/// arrays of integers for a batch) is looked through in place; only a reply that holds
/// anything else is taken apart and rebuilt by the redis crate's `extract_error`.
fn checked(reply: redis::Value) -> redis::RedisResult<redis::Value> {
    fn integers(value: &redis::Value, depth: usize) -> bool {
        match value {
            redis::Value::Int(_) => true,
            redis::Value::Array(items) => depth < 2 && items.iter().all(|i| integers(i, depth + 1)),
            _ => false,
        }
    }
    if integers(&reply, 0) {
        Ok(reply)
    } else {
        reply.extract_error()
    }
}

/// [`checked`] for a call's reply: a script's numbers hold no error.
fn checked_reply(reply: Reply) -> redis::RedisResult<Reply> {
    match reply {
        Reply::Value(value) => checked(value).map(Reply::Value),
        numbers @ (Reply::Numbers { .. } | Reply::Integers(_)) => Ok(numbers),
    }
}

/// Gives the call at `index` its `reply`: to its caller, or to the leader's own (`own`).
fn deliver(
    answers: &mut [Option<oneshot::Sender<Answer>>],
    own: &mut Option<redis::RedisResult<Reply>>,
    index: usize,
    reply: redis::RedisResult<Reply>,
) {
    match answers.get_mut(index).and_then(Option::take) {
        Some(answer) => {
            let _ = answer.send(Answer::Reply(reply));
        }
        None => *own = Some(reply),
    }
}

/// `call`, or a timeout error if it has no answer within `timeout` (dropping it: a pipeline's
/// other callers then see their calls fail as abandoned).
///
/// A future of its own rather than an `async fn`: an `async fn` keeps its argument (`call`)
/// and the future it awaits apart, twice the room, in every future that awaits it.
pub(crate) fn within<T, F>(timeout: Duration, call: F) -> Within<F>
where
    F: Future<Output = redis::RedisResult<T>>,
{
    Within {
        timed: tokio::time::timeout(timeout, call),
        timeout,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`within`].
    pub(crate) struct Within<F> {
        #[pin]
        timed: tokio::time::Timeout<F>,
        timeout: Duration,
    }
}

impl<T, F: Future<Output = redis::RedisResult<T>>> Future for Within<F> {
    type Output = redis::RedisResult<T>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        this.timed.poll(cx).map(|answer| {
            answer.unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no reply from Redis within {:?}", this.timeout),
                )
                .into())
            })
        })
    }
}

/// Sends one call by itself; again, once, when the connection broke under it and the call is
/// idempotent (see [`send_plan`]).
async fn send_alone(connection: &mut impl Exchange, call: &Command) -> redis::RedisResult<Reply> {
    let mut sent = false;
    loop {
        // One place awaits the connection (the future holds room for one exchange).
        match connection.one(call).await {
            Err(e) if !sent && is_broken_connection(&e) && coalesce::resendable(call) => {
                sent = true;
            }
            other => return other.and_then(checked_reply),
        }
    }
}

/// A connection that broke under the call (as opposed to a slow or refusing server).
pub(super) fn is_broken_connection(error: &redis::RedisError) -> bool {
    error.is_connection_dropped() || (error.is_io_error() && !error.is_timeout())
}

/// Gives every other caller of a pipeline that failed as a whole an error of the same kind.
fn answer_all(answers: Vec<Option<oneshot::Sender<Answer>>>, error: &redis::RedisError) {
    for answer in answers.into_iter().flatten() {
        let _ = answer.send(Answer::Reply(Err(same_kind(error))));
    }
}

/// An error classified as `error` is (a broken connection, a timeout, a server's refusal), for
/// callers that each need their own.
fn same_kind(error: &redis::RedisError) -> redis::RedisError {
    let io = |kind| std::io::Error::new(kind, error.to_string()).into();
    if error.is_timeout() {
        io(std::io::ErrorKind::TimedOut)
    } else if error.is_connection_dropped() {
        io(std::io::ErrorKind::ConnectionReset)
    } else {
        redis::RedisError::from((
            error.kind(),
            "a pipeline of script calls",
            error.to_string(),
        ))
    }
}

/// The error of a queued call whose pipeline's leader gave up waiting: as a timeout, since that
/// is what made the leader give up, and the call may or may not have run.
fn abandoned() -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the call's pipeline was abandoned before its reply",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::backend::command::{Op, ScriptCall, Third};
    use crate::policy::Window;
    use crate::scripts::{self, Single};

    #[test]
    fn a_reply_is_checked_for_server_errors_at_any_depth() {
        let error = || {
            redis::parse_redis_value(b"-BUSY Redis is busy running a script\r\n")
                .expect("an error reply")
        };
        let ints = |n: i64| redis::Value::Array((0..n).map(redis::Value::Int).collect());
        let replies = [
            ints(6),
            redis::Value::Array(vec![ints(3), ints(4)]),
            redis::Value::Int(1),
            redis::Value::Okay,
            redis::Value::BulkString(b"x".to_vec()),
            redis::Value::Array(vec![redis::Value::Array(vec![ints(2)])]),
        ];
        for reply in replies {
            assert_eq!(checked(reply.clone()).ok(), Some(reply));
        }
        for reply in [
            error(),
            redis::Value::Array(vec![redis::Value::Int(1), error()]),
            redis::Value::Array(vec![ints(2), redis::Value::Array(vec![error()])]),
            redis::Value::Array(vec![redis::Value::Array(vec![redis::Value::Array(vec![
                error(),
            ])])]),
        ] {
            let refused = checked(reply).expect_err("the server error");
            assert_eq!(refused.code(), Some("BUSY"));
        }
    }

    /// A connection that answers each pipeline with the next scripted answer, and keeps the
    /// calls of every pipeline it was sent.
    struct Scripted {
        answers: VecDeque<redis::RedisResult<Vec<redis::Value>>>,
        sent: Vec<Vec<String>>,
        /// The fifth argument of every call sent: a script's operation.
        ops: Vec<String>,
    }

    impl Exchange for Scripted {
        async fn one(&mut self, call: &Command) -> redis::RedisResult<Reply> {
            self.many(std::slice::from_ref(call))
                .await
                .map(|mut r| r.remove(0))
        }

        async fn many(&mut self, calls: &[Command]) -> redis::RedisResult<Vec<Reply>> {
            self.sent.push(calls.iter().map(nonce).collect());
            self.ops.extend(calls.iter().map(|call| arg(call, 4)));
            self.answers
                .pop_front()
                .unwrap_or_else(|| Ok(Vec::new()))
                .map(Reply::values)
        }
    }

    /// A single script call's nonce, its seventh argument.
    fn nonce(call: &Command) -> String {
        arg(call, 6)
    }

    fn arg(call: &Command, index: usize) -> String {
        match call.to_cmd().args_iter().nth(index) {
            Some(redis::Arg::Simple(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            _ => String::new(),
        }
    }

    /// A call of the single script `source` on `key`, carrying `nonce`.
    fn call(source: &str, key: &str, nonce: &str) -> Command {
        let single =
            Single::with_hash(redis::Script::new(source).get_hash()).expect("a single script");
        let windows = std::sync::Arc::new(
            [Window::per_minute(10)]
                .into_iter()
                .collect::<crate::policy::Windows>(),
        );
        Command::Script(ScriptCall::new(
            single,
            16,
            |out| out(&[key.as_bytes()]),
            Op::Allow,
            1,
            Third::nonce(nonce.as_bytes()),
            windows,
        ))
    }

    fn broken() -> redis::RedisError {
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "closed").into()
    }

    /// The connection broke under a pipeline: the sliding logs' calls are sent again, once,
    /// and get their replies in their places; the counters' calls are not, and get the error.
    #[tokio::test]
    async fn only_idempotent_calls_are_sent_again_after_a_broken_connection() {
        let calls = [
            call(scripts::SLIDING_WINDOW, "a", "log-1"),
            call(scripts::FIXED_WINDOW, "b", "counter"),
            call(scripts::MULTI_WINDOW, "c", "log-2"),
        ];
        let mut connection = Scripted {
            answers: VecDeque::from([
                Err(broken()),
                Ok(vec![redis::Value::Int(1), redis::Value::Int(3)]),
            ]),
            sent: Vec::new(),
            ops: Vec::new(),
        };
        let replies = send_plan(&mut connection, &calls)
            .await
            .expect("a reply or an error for each call");
        assert_eq!(
            connection.sent,
            [vec!["log-1", "counter", "log-2"], vec!["log-1", "log-2"]]
        );
        let int = |n| Reply::Value(redis::Value::Int(n));
        assert_eq!(replies[0].as_ref().ok(), Some(&int(1)));
        assert!(replies[1].as_ref().is_err_and(is_broken_connection));
        assert_eq!(replies[2].as_ref().ok(), Some(&int(3)));

        // A log's batch goes again marked: its calls may have run.
        let batch = coalesce::plan(vec![
            call(scripts::SLIDING_WINDOW, "f", "n1"),
            call(scripts::SLIDING_WINDOW, "f", "n2"),
        ]);
        let mut connection = Scripted {
            answers: VecDeque::from([Err(broken()), Ok(vec![redis::Value::Int(1)])]),
            sent: Vec::new(),
            ops: Vec::new(),
        };
        assert!(send_plan(&mut connection, &batch.commands).await.is_ok());
        assert_eq!(connection.ops, ["allow", "again"]);

        // Nothing to send again: the pipeline fails whole, and is sent once.
        let counters = [call(scripts::TOKEN_BUCKET, "d", "counter")];
        let mut connection = Scripted {
            answers: VecDeque::from([Err(broken())]),
            sent: Vec::new(),
            ops: Vec::new(),
        };
        assert!(send_plan(&mut connection, &counters).await.is_err());
        assert_eq!(connection.sent.len(), 1);

        // A call sent alone: again only if it is a log's.
        for (source, sends) in [(scripts::SLIDING_WINDOW, 2), (scripts::FIXED_WINDOW, 1)] {
            let mut connection = Scripted {
                answers: VecDeque::from([Err(broken()), Ok(vec![redis::Value::Int(1)])]),
                sent: Vec::new(),
                ops: Vec::new(),
            };
            let reply = send_alone(&mut connection, &call(source, "e", "alone")).await;
            assert_eq!(connection.sent.len(), sends);
            assert_eq!(reply.is_ok(), sends == 2);
        }
    }
}
