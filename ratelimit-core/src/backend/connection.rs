//! Connections to Redis: a few connections to a standalone server, or one cluster connection
//! that routes by slot.
//!
//! Both are opened on first use, so a limiter can be built without I/O (for a tower layer built
//! synchronously) and a Redis that is down at start does not stop the service from starting.
//! A standalone server over plain TCP speaking RESP2 (the usual case) gets [`Wire`]s, driven by
//! the callers themselves (`wire.rs`); over TLS, a Unix socket or RESP3 it gets the redis crate's
//! `ConnectionManager`, a multiplexed connection with reconnection, on the Redis I/O thread. The
//! cluster client is the redis crate's too.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::OnceCell;

use super::batch::{Exchange, Reply, pipeline_of};
use super::command::Command;
use super::wire::{Address, Wire};
use crate::config::RedisConfig;
use crate::error::Error;

/// A connection ready for one call; cheap to clone (clones share their socket).
#[derive(Clone)]
pub(crate) enum Connection {
    /// A standalone server over plain TCP, RESP2: driven by its callers (`wire.rs`).
    Direct(Wire),
    /// A standalone server over TLS, a Unix socket or RESP3: the redis crate's connection.
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Direct(c) => Box::pin(c.call(cmd)),
            Self::Standalone(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            // Pipelines go through `Exchange::many`; this is the trait's general form.
            Self::Direct(c) => Box::pin(async move {
                let replies = c.pipeline(cmd).await?;
                Ok(replies.into_iter().skip(offset).take(count).collect())
            }),
            Self::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Direct(c) => c.db(),
            Self::Standalone(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A [`Wire`] is called directly (no boxed future) and writes the commands as they are kept; the
/// others get them as the redis crate builds them.
impl Exchange for Connection {
    async fn one(&mut self, call: &Command) -> redis::RedisResult<Reply> {
        match self {
            Self::Direct(wire) => wire.command(call).await,
            other => redis::aio::ConnectionLike::req_packed_command(other, &call.to_cmd())
                .await
                .map(Reply::Value),
        }
    }

    async fn many(&mut self, calls: &[Command]) -> redis::RedisResult<Vec<Reply>> {
        match self {
            Self::Direct(wire) => wire.commands(calls).await,
            other => {
                let pipeline = pipeline_of(calls);
                redis::aio::ConnectionLike::req_packed_commands(other, &pipeline, 0, calls.len())
                    .await
                    .map(Reply::values)
            }
        }
    }
}

/// The runtime whose thread drives the redis crate's sockets (a [`Wire`] needs none).
///
/// The redis crate spawns each connection's reader on the runtime that opens it. On the
/// application's runtime, a burst of thousands of requests queues that reader behind every
/// request task: replies sit unread in the socket while the callers' timeouts run out, and a
/// healthy Redis looks dead (seen with 20,000 callers on 2 busy cores, in debug builds). On a
/// thread of its own, the reader takes each reply off the socket as it arrives; a caller polled
/// late still finds its reply waiting, since a timeout looks at the call before the clock. (A
/// [`Wire`] has no separate reader: the caller that waits reads, so a reply is never waiting on
/// anyone else's turn.)
/// `None` where the thread cannot be started: connections then run on the caller's runtime.
fn io_runtime() -> Option<&'static tokio::runtime::Handle> {
    static IO: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    IO.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("ratelimit-redis-io".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .ok()?;
        Some(handle)
    })
    .as_ref()
}

/// Runs `open` (which opens a connection and spawns its reader) on the I/O runtime.
async fn on_io_runtime<T, F>(open: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: Future<Output = Result<T, redis::RedisError>> + Send + 'static,
{
    match io_runtime() {
        Some(io) => io
            .spawn(open)
            .await
            .map_err(|e| Error::UnexpectedReply(format!("the Redis I/O thread failed: {e}")))?
            .map_err(Error::from),
        None => Ok(open.await?),
    }
}

/// Opens connections on demand and hands them out.
pub(crate) enum Connector {
    Standalone {
        client: redis::Client,
        config: ConnectionManagerConfig,
        /// Set when the address is plain TCP and RESP2: the pool's connections are then
        /// [`Wire`]s.
        direct: Option<Arc<Address>>,
        pool: Box<[RwLock<Arc<OnceCell<Connection>>>]>,
        next: AtomicUsize,
    },
    Cluster {
        client: ClusterClient,
        /// Replaced (like a pooled standalone connection) when a call times out: the cluster
        /// client can be left waiting on a slot-map refresh that never ends, or keep routing to
        /// a node that stopped answering, and a fresh connection reads the slot map anew.
        connection: RwLock<Arc<OnceCell<ClusterConnection>>>,
    },
}

/// What [`Connector::slot`] gives: an open connection, or the opening of one.
pub(crate) enum Slot<'a> {
    Open(Used, Connection),
    Opening(Opening<'a>),
}

/// The opening of a connection (see [`Connector::slot`]).
pub(crate) type Opening<'a> =
    Pin<Box<dyn Future<Output = Result<(Used, Connection), Error>> + Send + 'a>>;

/// Which connection a call used, so that a timeout replaces that one and not a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Used {
    index: usize,
    /// The address of the cell the connection came from: a replaced cell never matches.
    generation: usize,
}

impl Used {
    /// The connection's place in the pool (0 for a cluster's one connection).
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Standalone { pool, .. } => f
                .debug_struct("Standalone")
                .field("pool_size", &pool.len())
                .finish(),
            Self::Cluster { .. } => f.debug_struct("Cluster").finish(),
        }
    }
}

/// Replaces the connection in `cell` by a new, unopened one if it is still `generation`.
fn replace_if_current<T>(cell: &RwLock<Arc<OnceCell<T>>>, generation: usize) {
    let mut current = cell.write().unwrap_or_else(PoisonError::into_inner);
    if Arc::as_ptr(&current) as usize == generation {
        *current = Arc::new(OnceCell::new());
    }
}

/// Keep-alive probes on every connection the limiter opens (the redis crate's and [`Wire`]s), so
/// that a peer that vanished without a FIN is noticed.
pub(crate) fn keepalive() -> redis::io::tcp::socket2::TcpKeepalive {
    redis::io::tcp::socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
}

/// Connection settings for one address: `TCP_NODELAY` on (a decision is one small request, and
/// Nagle's algorithm would hold it back for the previous one's ACK), and [`keepalive`].
fn connection_info(
    url: &str,
    credentials: Option<&crate::config::Credentials>,
) -> Result<redis::ConnectionInfo, Error> {
    use redis::IntoConnectionInfo;
    use redis::io::tcp::TcpSettings;
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive());
    let mut info = url.into_connection_info()?.set_tcp_settings(tcp);
    if let Some(credentials) = credentials {
        let mut settings = info
            .redis_settings()
            .clone()
            .set_password(credentials.password.expose());
        if let Some(username) = &credentials.username {
            settings = settings.set_username(username);
        }
        info = info.set_redis_settings(settings);
    }
    Ok(info)
}

impl Connector {
    /// Prepares connections as `config` says; opens none.
    pub(crate) fn new(config: &RedisConfig) -> Result<Self, Error> {
        // `rediss://` needs a rustls crypto provider, which the redis crate leaves to the
        // application; install ring's unless the process already chose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = config.timeout();
        // A configured CA replaces the system's roots for `rediss://` addresses.
        let certs = config.tls_ca.as_ref().map(|ca| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.0.clone()),
        });
        let infos = config
            .urls()
            .iter()
            .map(|url| connection_info(url, config.credentials.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if config.is_cluster() {
            let mut builder = ClusterClient::builder(infos);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            let client = builder
                .connection_timeout(timeout)
                .response_timeout(timeout)
                // Redirects (MOVED, ASK) use retries too, and a slot migration under load can
                // take several in a row; the limiter's own timeout bounds the whole call.
                .retries(6)
                .min_retry_wait(10)
                .max_retry_wait(timeout.as_millis().try_into().unwrap_or(u64::MAX))
                .build()?;
            return Ok(Self::Cluster {
                client,
                connection: RwLock::new(Arc::new(OnceCell::new())),
            });
        }
        let info = infos
            .into_iter()
            .next()
            .ok_or_else(|| Error::UnexpectedReply("no Redis address".into()))?;
        let direct = Address::of(&info);
        let client = match certs {
            Some(certs) if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) => {
                redis::Client::build_with_tls(info, certs)?
            }
            _ => redis::Client::open(info)?,
        };
        let config_mgr = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        Ok(Self::Standalone {
            client,
            config: config_mgr,
            direct,
            pool: (0..config.pool_size())
                .map(|_| RwLock::new(Arc::new(OnceCell::new())))
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// A connection for one call, opening it when needed.
    pub(crate) async fn get(&self) -> Result<Connection, Error> {
        Ok(self.get_slot().await?.1)
    }

    /// Replaces the connection a call used (from [`Self::get_slot`]) by a new one, opened on
    /// next use; nothing when it was replaced already (calls that timed out together replace
    /// it once).
    pub(crate) fn discard(&self, used: Used) {
        match self {
            Self::Standalone { pool, .. } => {
                if let Some(cell) = pool.get(used.index) {
                    replace_if_current(cell, used.generation);
                }
            }
            Self::Cluster { connection, .. } => replace_if_current(connection, used.generation),
        }
    }

    /// A connection for one call and which one it is.
    pub(crate) async fn get_slot(&self) -> Result<(Used, Connection), Error> {
        match self.slot() {
            Slot::Open(used, connection) => Ok((used, connection)),
            Slot::Opening(opening) => opening.await,
        }
    }

    /// The connection for the next call: at once when it is open, or the future that opens it
    /// (boxed: it is large and rarely needed, and every call's future would otherwise carry
    /// room for it; the caller bounds it with its timeout).
    pub(crate) fn slot(&self) -> Slot<'_> {
        match self {
            Self::Standalone {
                client,
                config,
                direct,
                pool,
                next,
            } => {
                let index = next.fetch_add(1, Ordering::Relaxed) % pool.len();
                let slot = pool[index]
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let used = Used {
                    index,
                    generation: Arc::as_ptr(&slot) as usize,
                };
                if let Some(connection) = slot.get() {
                    return Slot::Open(used, connection.clone());
                }
                Slot::Opening(Box::pin(async move {
                    let connection = slot
                        .get_or_try_init(|| async {
                            Ok::<_, Error>(match direct {
                                Some(address) => Connection::Direct(Wire::open(address).await?),
                                None => Connection::Standalone(
                                    on_io_runtime(ConnectionManager::new_with_config(
                                        client.clone(),
                                        config.clone(),
                                    ))
                                    .await?,
                                ),
                            })
                        })
                        .await?;
                    Ok((used, connection.clone()))
                }))
            }
            Self::Cluster { client, connection } => {
                let cell = connection
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let used = Used {
                    index: 0,
                    generation: Arc::as_ptr(&cell) as usize,
                };
                if let Some(connection) = cell.get() {
                    return Slot::Open(used, Connection::Cluster(connection.clone()));
                }
                Slot::Opening(Box::pin(async move {
                    let connection = cell
                        .get_or_try_init(|| {
                            let client = client.clone();
                            on_io_runtime(async move { client.get_async_connection().await })
                        })
                        .await?;
                    Ok((used, Connection::Cluster(connection.clone())))
                }))
            }
        }
    }

    /// How many connections [`Self::get`] hands out in turn (1 for a cluster).
    pub(crate) fn pool_size(&self) -> usize {
        match self {
            Self::Standalone { pool, .. } => pool.len(),
            Self::Cluster { .. } => 1,
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    /// Whether this connects to a cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }
}
