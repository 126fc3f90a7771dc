//! The Redis backend: one script call a decision, on a standalone server or a cluster.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};

use super::batch::{Lane, Reply, is_broken_connection, within};
use super::coalesce;
use super::command::Command;
use super::connection::{Connection, Connector, Slot, Used};
use crate::config::RedisConfig;
use crate::decision::Outcome;
use crate::error::Error;
use crate::key::{Identity, KeyBuilder};
use crate::policy::Policy;
use crate::scripts;

/// Evaluates policies with the Lua scripts (`scripts.rs`, `lua/`) in Redis.
///
/// Every round trip is bounded by the configured timeout, and so is opening a connection. At
/// most `IN_FLIGHT_PER_CONNECTION` (16) calls a connection are sent at once; the others wait for
/// a [`turn`](Self::turn). That wait, and the wait for the pipeline in flight on a standalone
/// connection (`batch.rs`), are time queued behind this process's own calls, not part of the
/// timeout.
#[derive(Debug)]
pub struct RedisBackend {
    connector: Connector,
    /// One a pooled standalone connection, whose concurrent calls go out as one pipeline; none
    /// for a cluster (a pipeline goes to one node, and concurrent calls' keys are anywhere).
    lanes: Box<[Lane]>,
    turns: tokio::sync::Semaphore,
    keys: KeyBuilder,
    timeout: Duration,
    nonce: Nonce,
    /// Where the stuck-key scan of each node stopped (`""` for a standalone server).
    scan_cursors: Mutex<HashMap<String, u64>>,
}

/// Keys examined by one stuck-key scan on each node, at most.
const SCAN_BUDGET: usize = 5_000;
/// Keys asked for by one `SCAN` call.
const SCAN_COUNT: usize = 500;

/// Calls sent on one connection (for a cluster, per configured pool slot) before the next
/// waits its turn. A burst of thousands of callers would otherwise put thousands of scripts on
/// the wire at once: the last ones wait behind the others in Redis and in the client, past the
/// timeout, although nothing failed, and the fallback would decide them. Measured with 20,000
/// callers over 100 keys, two busy loops on the 2 cores and a debug build (`tests/bursts.rs`):
/// 64 a connection still timed calls out, 8 and 16 never did. 16 keeps enough calls pipelined
/// to keep Redis busy.
pub const IN_FLIGHT_PER_CONNECTION: usize = 16;

impl RedisBackend {
    /// A backend for `config`, keys under `keys`; opens no connection yet.
    pub fn new(config: &RedisConfig, keys: KeyBuilder) -> Result<Self, Error> {
        let lanes = match config.is_cluster() {
            true => Box::default(),
            false => (0..config.pool_size()).map(|_| Lane::default()).collect(),
        };
        Ok(Self {
            connector: Connector::new(config)?,
            lanes,
            turns: tokio::sync::Semaphore::new(IN_FLIGHT_PER_CONNECTION * config.pool_size()),
            keys,
            timeout: config.timeout(),
            nonce: Nonce::new(),
            scan_cursors: Mutex::new(HashMap::new()),
        })
    }

    #[cfg(any(test, feature = "test-util"))]
    /// Whether this backend talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.connector.is_cluster()
    }

    #[cfg(any(test, feature = "test-util"))]
    /// The key builder.
    pub fn keys(&self) -> &KeyBuilder {
        &self.keys
    }

    /// Opens a connection and loads every script (on every node of a cluster), so that the
    /// first decisions pay neither; fails when Redis cannot be reached in time.
    ///
    /// Every pooled connection is opened here: opened lazily, the first calls of a burst would
    /// wait for several handshakes at once, under the timeout meant for Redis's answer.
    pub async fn connect(&self) -> Result<(), Error> {
        // Scripts are the server's (every primary's, for a cluster): loaded once. Each
        // connection's handshake has a timeout of its own.
        self.bounded(async {
            let mut connection = self.connector.get().await?;
            for script in scripts::all() {
                script.prepare_invoke().load_async(&mut connection).await?;
            }
            if !self.lanes.is_empty() {
                for script in coalesce::all() {
                    script.prepare_invoke().load_async(&mut connection).await?;
                }
            }
            Ok(())
        })
        .await?;
        for _ in 1..self.connector.pool_size() {
            self.bounded(async { self.connector.get().await.map(drop) })
                .await?;
        }
        Ok(())
    }

    /// Waits until a call may be sent, in arrival order. Time spent here is time queued inside
    /// this process behind its own burst: it is not a Redis failure, so it is not bounded by
    /// the Redis timeout, and a caller should only check the breaker once it has its turn.
    /// Hold the permit for the duration of the call.
    pub async fn turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed: `None` cannot happen, and would only mean no queue.
        self.turns.acquire().await.ok()
    }

    /// A turn if one is free now and no caller is waiting for one (see [`Self::turn`]).
    pub(crate) fn try_turn(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.turns.try_acquire().ok()
    }

    /// Evaluates `policy` for `identity` in one round trip. Not an `async fn`, which would keep
    /// a copy of every argument for its whole life (see `Guarded::evaluate_missed`).
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps a copy of every argument in its future"
    )]
    pub(crate) fn evaluate<'a>(
        &'a self,
        policy: &'a Policy,
        identity: Identity<'a>,
        cost: u64,
        consume: bool,
    ) -> impl Future<Output = Result<Outcome, Error>> + Send + 'a {
        async move {
            // Built again for a retry, with the same nonce: the script recognizes a call it applied.
            let mut member = [0; 33];
            let nonce = match scripts::takes_nonce(policy) {
                true => self.nonce.next().write(&mut member),
                false => &[],
            };
            let call = || {
                Command::Script(scripts::command(
                    policy, &self.keys, identity, consume, cost, nonce,
                ))
            };
            let script = scripts::for_policy(policy);
            let (used, mut connection) = match self.connector.slot() {
                Slot::Open(used, connection) => (used, connection),
                Slot::Opening(opening) => self.bounded(opening).await?,
            };
            // Each round trip below has the timeout (see `send`): a call that is retried waits
            // for Redis at most twice that. One place awaits `run`, so that the future holds
            // room for one round trip, not one for each try.
            let mut retried = false;
            let reply = loop {
                match self.run(used, &call, script, &mut connection).await {
                    // One retry, and only when the connection broke: the cluster client has
                    // begun reconnecting. If the script ran before the connection broke, the
                    // retry finds the call's nonce in the state and takes nothing twice (as
                    // when the cluster client retries on its own); the integer counters (fixed
                    // window, sliding counter) have no nonce, and their calls are not sent
                    // again. A lane (standalone) sends again by itself, and only the sliding
                    // logs' calls, which are idempotent (`batch.rs`).
                    Err(e)
                        if !retried
                            && self.lanes.is_empty()
                            && scripts::resendable(policy)
                            && is_broken_connection(&e) => {}
                    // A script loaded, then the call redirected to a node that has not seen it
                    // (a slot just moved to a new node): loading it there is one more try, and
                    // the script had not run.
                    Err(e)
                        if !retried
                            && e.kind()
                                == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {}
                    other => break other,
                }
                retried = true;
            };
            let reply = reply.inspect_err(|e| {
                // No reply in time: the connection may be dead without knowing it (a partition,
                // a vanished peer); the connection manager only reconnects on errors it sees.
                if e.is_timeout() {
                    self.connector.discard(used);
                }
            })?;
            reply.outcome()
        }
    }

    /// Deletes every key of `policy` for `identity`.
    pub(crate) async fn reset(&self, policy: &Policy, identity: Identity<'_>) -> Result<(), Error> {
        let keys = self.keys.keys(policy, identity);
        self.bounded(async {
            let mut connection = self.connector.get().await?;
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(&mut connection)
                .await?;
            Ok(())
        })
        .await
    }

    /// Answers `PING` within the timeout.
    pub async fn ping(&self) -> Result<(), Error> {
        self.bounded(async {
            let mut connection = self.connector.get().await?;
            redis::cmd("PING")
                .query_async::<()>(&mut connection)
                .await?;
            Ok(())
        })
        .await
    }

    /// Keys under the prefix that have no TTL, from a bounded `SCAN` of every node that
    /// continues where the previous call stopped, so successive calls cover the whole keyspace.
    pub async fn stuck_keys(&self) -> Result<Vec<String>, Error> {
        let mut connection = self.connector.get().await?;
        let pattern = format!("{}*", self.keys.prefix());
        let nodes: Vec<Option<(String, u16)>> = match &mut connection {
            Connection::Direct(_) | Connection::Standalone(_) => vec![None],
            Connection::Cluster(cluster) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let reply = self
                    .bounded(async {
                        Ok(cluster.route_command(redis::cmd("PING"), routing).await?)
                    })
                    .await?;
                let redis::Value::Map(replies) = reply else {
                    return Err(Error::UnexpectedReply("PING to every primary".into()));
                };
                replies
                    .into_iter()
                    .filter_map(|(address, _)| match address {
                        redis::Value::BulkString(a) => String::from_utf8(a).ok(),
                        _ => None,
                    })
                    .filter_map(|a| {
                        let (host, port) = a.rsplit_once(':')?;
                        Some(Some((host.to_owned(), port.parse().ok()?)))
                    })
                    .collect()
            }
        };
        let mut stuck = Vec::new();
        for node in nodes {
            let name = node
                .as_ref()
                .map_or_else(String::new, |(h, p)| format!("{h}:{p}"));
            let mut cursor = self
                .scan_cursors
                .lock()
                .map_or(0, |c| c.get(&name).copied().unwrap_or(0));
            let mut examined = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let (next, keys): (u64, Vec<String>) =
                    self.on_node(&mut connection, &node, scan).await?;
                for key in keys {
                    let mut pttl = redis::cmd("PTTL");
                    pttl.arg(&key);
                    let ttl: i64 = self.on_node(&mut connection, &node, pttl).await?;
                    if ttl == -1 {
                        stuck.push(key);
                    }
                }
                examined += SCAN_COUNT;
                cursor = next;
                if cursor == 0 || examined >= SCAN_BUDGET {
                    break;
                }
            }
            if let Ok(mut cursors) = self.scan_cursors.lock() {
                cursors.insert(name, cursor);
            }
        }
        Ok(stuck)
    }

    /// Runs `cmd` on `node` (a cluster primary), or on the standalone server.
    async fn on_node<T: redis::FromRedisValue>(
        &self,
        connection: &mut Connection,
        node: &Option<(String, u16)>,
        cmd: redis::Cmd,
    ) -> Result<T, Error> {
        self.bounded(async {
            let value = match (connection, node) {
                (Connection::Cluster(cluster), Some((host, port))) => {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    });
                    cluster.route_command(cmd, routing).await?
                }
                (connection, _) => cmd.query_async::<redis::Value>(connection).await?,
            };
            redis::from_redis_value(value).map_err(|e| Error::UnexpectedReply(e.to_string()))
        })
        .await
    }

    /// Pipelines of several calls sent so far on every lane, and the calls they carried.
    pub(crate) fn pipelines(&self) -> (u64, u64) {
        self.lanes
            .iter()
            .map(Lane::pipelines)
            .fold((0, 0), |(p, c), (lp, lc)| (p + lp, c + lc))
    }

    /// Batches sent so far on every lane (calls on one key decided by one script call), and the
    /// calls they decided.
    pub(crate) fn batches(&self) -> (u64, u64) {
        self.lanes
            .iter()
            .map(Lane::batches)
            .fold((0, 0), |(b, c), (lb, lc)| (b + lb, c + lc))
    }

    /// The connections.
    pub(super) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// `call`, bounded by the configured timeout.
    pub(super) async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| Error::Timeout(self.timeout))?
    }
}

impl RedisBackend {
    /// Sends the command `call` builds (an `EVALSHA` of `script`) on `connection`, through its
    /// lane when it has one; loads the script and sends the call again where the server lacks it
    /// (a restart, a failover, `SCRIPT FLUSH`), as [`redis::Script`] does.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` keeps a copy of every argument in its future"
    )]
    fn run<'a>(
        &'a self,
        used: Used,
        call: &'a (impl Fn() -> Command + Sync),
        script: &'a redis::Script,
        connection: &'a mut Connection,
    ) -> impl Future<Output = redis::RedisResult<Reply>> + Send + 'a {
        async move {
            let mut loaded = false;
            loop {
                // One place awaits `send` (the future holds room for one).
                match self.send(used, call(), connection).await {
                    Err(e)
                        if !loaded
                            && e.kind()
                                == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        within(self.timeout, script.prepare_invoke().load_async(connection))
                            .await?;
                        loaded = true;
                    }
                    other => return other,
                }
            }
        }
    }

    /// Sends `call` on `connection`, with the other calls of its lane or alone, bounded by the
    /// timeout from when it is sent. Not an `async fn`: the call is handed to the lane here,
    /// and kept by no future of this one's.
    fn send<'a>(
        &'a self,
        used: Used,
        call: Command,
        connection: &'a mut Connection,
    ) -> impl Future<Output = redis::RedisResult<Reply>> + Send + 'a {
        match self.lanes.get(used.index()) {
            Some(lane) => Either::Lane {
                send: lane.send(connection, call, self.timeout),
            },
            None => {
                let timeout = self.timeout;
                Either::Alone {
                    send: async move {
                        let call = call.to_cmd();
                        within(timeout, call.query_async(connection))
                            .await
                            .map(Reply::Value)
                    },
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A call sent through its connection's lane, or alone (a cluster's connection).
    #[project = Sending]
    enum Either<L, A> {
        Lane { #[pin] send: L },
        Alone { #[pin] send: A },
    }
}

impl<L, A> Future for Either<L, A>
where
    L: Future,
    A: Future<Output = L::Output>,
{
    type Output = L::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            Sending::Lane { send } => send.poll(cx),
            Sending::Alone { send } => send.poll(cx),
        }
    }
}

/// Unique members for sliding logs: a random per-process prefix and a counter, so two calls in
/// the same microsecond, from this process or another, never write the same member.
#[derive(Debug)]
struct Nonce {
    prefix: u64,
    counter: AtomicU64,
}

impl Nonce {
    fn new() -> Self {
        Self {
            prefix: rand::random(),
            counter: AtomicU64::new(0),
        }
    }

    /// The next member, written where it is used.
    fn next(&self) -> Member {
        Member {
            prefix: self.prefix,
            n: self.counter.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// One sliding-log member: `<prefix>.<counter>` in hex.
#[derive(Clone, Copy)]
struct Member {
    prefix: u64,
    n: u64,
}

impl Member {
    /// The member's text, `{:x}.{:x}` of the prefix and the counter, written into `buffer`
    /// by hand (once a decision; the formatting machinery cost more than the rest of the
    /// command).
    fn write(self, buffer: &mut [u8; 33]) -> &[u8] {
        let mut len = hex(self.prefix, buffer);
        buffer[len] = b'.';
        len += 1;
        let mut tail = [0; 16];
        let digits = hex(self.n, &mut tail);
        buffer[len..len + digits].copy_from_slice(&tail[..digits]);
        &buffer[..len + digits]
    }
}

/// `n` in lower-case hex without leading zeros (`0` for zero) at the start of `out`; returns
/// how many digits.
fn hex(n: u64, out: &mut [u8]) -> usize {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let len = (16 - n.leading_zeros() as usize / 4).max(1);
    for (i, slot) in out[..len].iter_mut().enumerate() {
        let shift = 4 * (len - 1 - i);
        *slot = DIGITS[((n >> shift) & 0xf) as usize];
    }
    len
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Numbers of every length in hex, zero and the ends included.
    fn any_width() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0),
            Just(u64::MAX),
            (any::<u64>(), 0..64_u32).prop_map(|(n, s)| n >> s)
        ]
    }

    proptest! {
        #[test]
        fn a_member_is_written_as_its_hex_format(prefix in any_width(), n in any_width()) {
            let mut buffer = [0; 33];
            let expected = format!("{prefix:x}.{n:x}");
            prop_assert_eq!(Member { prefix, n }.write(&mut buffer), expected.as_bytes());
        }
    }
}
