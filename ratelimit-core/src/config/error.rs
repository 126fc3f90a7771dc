//! Configuration errors that say where the mistake is.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in a configuration a field was found: file (when read from one), line and column
/// (1-based, when read from YAML).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub(crate) file: Option<PathBuf>,
    pub(crate) line: Option<usize>,
    pub(crate) column: Option<usize>,
}

impl Location {
    /// The file, when the configuration came from one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The line (1-based).
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The column (1-based).
    pub fn column(&self) -> Option<usize> {
        self.column
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}", file.display())?,
            (Some(file), None) => write!(f, "{}", file.display())?,
            (None, Some(line)) => write!(f, "line {line}")?,
            (None, None) => return Ok(()),
        }
        if let (Some(_), Some(column)) = (self.line, self.column) {
            write!(f, ":{column}")?;
        }
        f.write_str(": ")
    }
}

/// A refused configuration.
///
/// ```
/// use ratelimit_core::Config;
/// let yaml = "rate_limiter:\n  windows:\n    - max_requests: 0\n      duration: 1m\n";
/// let err = Config::from_yaml_str(yaml).unwrap_err();
/// assert_eq!(err.field(), Some("rate_limiter.windows[0].max_requests"));
/// assert_eq!(err.location().and_then(|l| l.line()), Some(3));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A field is missing, unknown, malformed or out of range.
    #[error("{location}{field}: {message}")]
    Invalid {
        /// Where.
        location: Location,
        /// The field's path, such as `rate_limiter.windows[0].duration`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            location: Location::default(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// The offending field's path, when the error is about a field.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            Self::Read { .. } => None,
        }
    }

    /// Where the offending field is.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Invalid { location, .. } => Some(location),
            Self::Read { .. } => None,
        }
    }

    /// Attaches a file, and a line found by `find_line` for the field, when not known yet.
    pub(crate) fn located(
        mut self,
        file: Option<&Path>,
        find_line: impl FnOnce(&str) -> Option<(usize, usize)>,
    ) -> Self {
        if let Self::Invalid {
            location, field, ..
        } = &mut self
        {
            if location.file.is_none() {
                location.file = file.map(Path::to_path_buf);
            }
            if location.line.is_none()
                && let Some((line, column)) = find_line(field)
            {
                location.line = Some(line);
                location.column = Some(column);
            }
        }
        self
    }
}
