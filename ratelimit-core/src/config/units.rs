//! Human units in configuration: durations (`100ms`, `1m`, `1h`) and sizes (`100MB`).

use std::time::Duration;

/// Why a duration or a size is refused; each variant holds the text as written.
///
/// ```
/// use ratelimit_core::{UnitError, parse_duration};
/// let err = parse_duration("60").unwrap_err();
/// assert_eq!(err, UnitError::NoUnit("60".into()));
/// assert!(err.to_string().contains("no unit"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnitError {
    /// A bare number where a duration needs its unit.
    #[error("`{0}` has no unit: write it like `100ms`, `30s`, `1m` or `1h`")]
    NoUnit(String),
    /// Not a duration at all.
    #[error("`{text}` is not a duration ({reason}): write it like `100ms`, `30s`, `1m` or `1h`")]
    Duration {
        /// The text as written.
        text: String,
        /// What the duration parser found wrong.
        reason: String,
    },
    /// Not a size at all.
    #[error("`{0}` is not a size: write it like `100MB` or `64MiB`")]
    Size(String),
    /// A size with a unit that is not one of `B`, `KB`, `MB`, `GB`, `KiB`, `MiB`, `GiB`.
    #[error("`{0}` is not a size unit: use B, KB, MB, GB, KiB, MiB or GiB")]
    SizeUnit(String),
    /// A size beyond `u64` bytes.
    #[error("`{0}` is too large")]
    TooLarge(String),
}

impl From<UnitError> for String {
    fn from(error: UnitError) -> Self {
        error.to_string()
    }
}

/// Parses a duration written as a number and a unit: `us`, `ms`, `s`, `m`, `h`, `d`, combinable
/// (`1m30s`). A bare number is refused: its unit would be a guess.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::parse_duration;
/// assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
/// assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
/// assert!(parse_duration("60").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UnitError::NoUnit(text.to_owned()));
    }
    humantime::parse_duration(text).map_err(|e| UnitError::Duration {
        text: text.to_owned(),
        reason: e.to_string(),
    })
}

/// Parses a size: a number and an optional unit, `B`, `KB`/`MB`/`GB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB` (powers of 1024), case-insensitive.
///
/// ```
/// use ratelimit_core::parse_size;
/// assert_eq!(parse_size("100MB"), Ok(100_000_000));
/// assert_eq!(parse_size("1KiB"), Ok(1024));
/// assert_eq!(parse_size("512"), Ok(512));
/// ```
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| UnitError::Size(text.to_owned()))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => {
            return Err(UnitError::SizeUnit(unit.trim().to_owned()));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| UnitError::TooLarge(text.to_owned()))
}

/// `#[serde(with = "..")]` for a duration written like `100ms`, read by [`parse_duration`].
///
/// It fills any field built from a [`Duration`]: a `Duration`, or an `Option<Duration>` marked
/// `#[serde(default)]` as well.
pub(crate) mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: From<Duration>,
    {
        let text = String::deserialize(d)?;
        super::parse_duration(&text)
            .map(T::from)
            .map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "..")]` for a size written like `100MB`, or a whole number of bytes.
///
/// It fills a `u64`, or an `Option<u64>` marked `#[serde(default)]` as well.
pub(crate) mod human_size {
    use serde::{Deserialize, Deserializer};

    pub(crate) fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: From<u64>,
    {
        #[derive(Deserialize)]
        #[serde(
            untagged,
            expecting = "a size such as `100MB`, or a whole number of bytes"
        )]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(T::from(n)),
            Raw::Text(text) => super::parse_size(&text)
                .map(T::from)
                .map_err(serde::de::Error::custom),
        }
    }
}
