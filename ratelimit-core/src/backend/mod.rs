//! Where the state of every key lives.
//!
//! - [`MemoryBackend`]: this process, sharded maps, the algorithms of [`crate::algorithm`].
//! - [`RedisBackend`]: Redis standalone or Cluster, the scripts of [`crate::scripts`].
//!
//! Both answer the same question, "does this request of this cost fit this policy for this
//! identity, and if so record it", atomically and with the same semantics.

mod batch;
pub(crate) mod coalesce;
pub(crate) mod command;
mod connection;
mod eviction;
mod memory;
mod redis;
mod wire;

#[cfg(any(test, feature = "test-util"))]
pub use self::batch::{Exchange, Lane, Reply};
#[cfg(any(test, feature = "test-util"))]
pub use self::command::Command;
#[cfg(any(test, feature = "test-util"))]
pub use self::eviction::NodeEviction;
pub(crate) use self::memory::Marked;
pub use self::memory::MemoryBackend;
#[cfg(any(test, feature = "test-util"))]
pub use self::redis::IN_FLIGHT_PER_CONNECTION;
pub use self::redis::RedisBackend;
