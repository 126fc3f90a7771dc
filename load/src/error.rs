//! What can stop a load run, as one enum: bad arguments, a process that would not start, a
//! Redis that would not answer, a report that could not be written.

use std::path::PathBuf;

/// Why a load run could not be carried out. A run that completed but saw unexpected answers
/// is not an error: it is a [`Report`](crate::Report) whose [`failures`](crate::Report::failures)
/// are not empty.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The options contradict each other or are out of range.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// `cargo build` of the api-server failed or did not name its binary.
    #[error("cannot build the api-server: {0}")]
    Build(String),
    /// A process could not be spawned.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// An api-server instance exited or did not become ready.
    #[error("api-server instance {index} on {addr}: {message}\n--- its log ---\n{log}")]
    Instance {
        /// The instance's number, from 0.
        index: usize,
        /// Where it was to listen.
        addr: std::net::SocketAddr,
        /// What went wrong.
        message: String,
        /// Its stdout and stderr so far.
        log: String,
    },
    /// The throwaway Redis could not be started.
    #[error("cannot start Redis: {0}")]
    RedisStart(String),
    /// A Redis node did not answer `INFO commandstats`.
    #[error("Redis node {node}: {source}")]
    Redis {
        /// The node's URL.
        node: String,
        /// What the client said.
        source: redis::RedisError,
    },
    /// Reading or writing a local file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The run was interrupted (Ctrl-C or SIGTERM) before it finished.
    #[error("interrupted")]
    Interrupted,
}
