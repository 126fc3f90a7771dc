//! The crate's error type.

use std::time::Duration;

use crate::config::ConfigError;
use crate::policy::PolicyError;

/// Everything that can go wrong when building or asking a limiter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration was refused; the error names the field (and the file and line).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A policy passed to `*_with` was refused.
    #[error("policy refused: {0}")]
    Policy(#[from] PolicyError),
    /// `allow_n` asked for more permits than the policy's smallest window holds.
    #[error("cost {cost} can never be allowed: the smallest window holds {limit}")]
    CostAboveLimit {
        /// The cost asked for.
        cost: u64,
        /// The smallest `max_requests` of the policy.
        limit: u64,
    },
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the configured timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A script answered with something other than its documented reply.
    #[error("unexpected reply from redis script: {0}")]
    UnexpectedReply(String),
}

/// What kind of failure an [`Error`] is, without its details: for metrics, logs and retry
/// decisions that should not match on the error's internals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Redis did not answer in time.
    Timeout,
    /// The connection to Redis failed, dropped or was refused.
    Connection,
    /// Redis answered with an error.
    Server,
    /// The configuration or a policy was refused.
    Config,
    /// `allow_n` asked for a cost the policy can never allow.
    Cost,
    /// Anything else, such as a script reply that does not match its documented shape.
    Other,
}

impl Error {
    /// The kind of failure, without its details.
    ///
    /// ```
    /// use ratelimit_core::{Error, ErrorKind};
    /// let error = Error::Timeout(std::time::Duration::from_millis(50));
    /// assert_eq!(error.kind(), ErrorKind::Timeout);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config(_) | Self::Policy(_) => ErrorKind::Config,
            Self::CostAboveLimit { .. } => ErrorKind::Cost,
            Self::Timeout(_) => ErrorKind::Timeout,
            Self::Redis(e) if e.is_timeout() => ErrorKind::Timeout,
            Self::Redis(e)
                if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() =>
            {
                ErrorKind::Connection
            }
            Self::Redis(_) => ErrorKind::Server,
            Self::UnexpectedReply(_) => ErrorKind::Other,
        }
    }

    /// Whether the error comes from Redis being unreachable, slow or failing (as opposed to a
    /// mistake in the request or configuration): what a fallback stands in for.
    pub fn is_backend_failure(&self) -> bool {
        matches!(
            self,
            Self::Redis(_) | Self::Timeout(_) | Self::UnexpectedReply(_)
        )
    }
}
