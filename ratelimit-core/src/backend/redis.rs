//! The Redis backend: one script call a decision, on a standalone server or a cluster.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::connection::Connector;
use crate::config::RedisConfig;
use crate::decision::Outcome;
use crate::error::Error;
use crate::key::{Identity, KeyBuilder};
use crate::policy::Policy;
use crate::scripts;

/// Evaluates policies with the Lua scripts of [`crate::scripts`] in Redis.
///
/// Every call is bounded by the configured timeout, including opening a connection.
#[derive(Debug)]
pub struct RedisBackend {
    connector: Connector,
    keys: KeyBuilder,
    timeout: Duration,
    nonce: Nonce,
}

impl RedisBackend {
    /// A backend for `config`, keys under `keys`; opens no connection yet.
    pub fn new(config: &RedisConfig, keys: KeyBuilder) -> Result<Self, Error> {
        Ok(Self {
            connector: Connector::new(config)?,
            keys,
            timeout: config.timeout(),
            nonce: Nonce::new(),
        })
    }

    /// Whether this backend talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.connector.is_cluster()
    }

    /// The key builder.
    pub fn keys(&self) -> &KeyBuilder {
        &self.keys
    }

    /// Opens a connection and loads every script (on every node of a cluster), so that the
    /// first decisions pay neither; fails when Redis cannot be reached in time.
    pub async fn connect(&self) -> Result<(), Error> {
        self.bounded(async {
            let mut connection = self.connector.get().await?;
            for script in scripts::all() {
                script.prepare_invoke().load_async(&mut connection).await?;
            }
            Ok(())
        })
        .await
    }

    /// Evaluates `policy` for `identity` in one round trip.
    pub(crate) async fn evaluate(
        &self,
        policy: &Policy,
        identity: Identity<'_>,
        cost: u64,
        consume: bool,
    ) -> Result<Outcome, Error> {
        let keys = self.keys.keys(policy, identity);
        let nonce = self.nonce.next();
        let call = scripts::invocation(policy, &keys, consume, cost, &nonce);
        let reply: Vec<i64> = self
            .bounded(async {
                let mut connection = self.connector.get().await?;
                match call.invoke_async(&mut connection).await {
                    // One retry, inside the same deadline, and only when the connection broke:
                    // the connection manager has begun reconnecting. (If the script ran before
                    // the connection broke, the retry counts the request twice: a false denial
                    // at worst, never an admission over the limit.)
                    Err(e) if is_broken_connection(&e) => {
                        let mut connection = self.connector.get().await?;
                        Ok(call.invoke_async(&mut connection).await?)
                    }
                    other => Ok(other?),
                }
            })
            .await?;
        scripts::outcome(&reply)
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

    async fn bounded<T>(&self, call: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| Error::Timeout(self.timeout))?
    }
}

/// A connection that broke under the call (as opposed to a slow or refusing server).
fn is_broken_connection(error: &redis::RedisError) -> bool {
    error.is_connection_dropped() || (error.is_io_error() && !error.is_timeout())
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

    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:x}.{n:x}", self.prefix)
    }
}
