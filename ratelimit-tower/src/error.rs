//! [`Error`]: why a layer or an extractor could not be built.

/// Why a layer or an extractor could not be built. Requests never see it: a layer that is
/// built answers every request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The limiter refused the configuration or the policy (the message names the field).
    #[error(transparent)]
    Limiter(#[from] ratelimit_core::Error),
    /// A path pattern cannot give the parameter asked for.
    #[error("path pattern `{pattern}`: {reason}")]
    PathPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer sharing another layer's limiter was given its own windows but no policy name:
    /// under the limiter's default name the two would count into the same keys.
    #[error(
        "a layer with its own windows on a shared limiter needs its own policy name (`policy_name`)"
    )]
    UnnamedPolicy,
}

impl From<ratelimit_core::ConfigError> for Error {
    fn from(error: ratelimit_core::ConfigError) -> Self {
        Self::Limiter(error.into())
    }
}

impl From<ratelimit_core::PolicyError> for Error {
    fn from(error: ratelimit_core::PolicyError) -> Self {
        Self::Limiter(error.into())
    }
}
