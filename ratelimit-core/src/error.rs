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

impl Error {
    /// Whether the error comes from Redis being unreachable, slow or failing (as opposed to a
    /// mistake in the request or configuration): what a fallback stands in for.
    pub fn is_backend_failure(&self) -> bool {
        matches!(
            self,
            Self::Redis(_) | Self::Timeout(_) | Self::UnexpectedReply(_)
        )
    }
}
