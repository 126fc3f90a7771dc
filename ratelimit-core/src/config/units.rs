//! Human units in configuration: durations (`100ms`, `1m`, `1h`) and sizes (`100MB`).

use std::time::Duration;

/// Parses a duration written as a number and a unit: `us`, `ms`, `s`, `m`, `h`, `d`, combinable
/// (`1m30s`). A bare number is refused: its unit would be a guess.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::config::parse_duration;
/// assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
/// assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
/// assert!(parse_duration("60").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{text}` has no unit: write it like `100ms`, `30s`, `1m` or `1h`"
        ));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!("`{text}` is not a duration ({e}): write it like `100ms`, `30s`, `1m` or `1h`")
    })
}

/// Parses a size: a number and an optional unit, `B`, `KB`/`MB`/`GB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB` (powers of 1024), case-insensitive.
///
/// ```
/// use ratelimit_core::config::parse_size;
/// assert_eq!(parse_size("100MB"), Ok(100_000_000));
/// assert_eq!(parse_size("1KiB"), Ok(1024));
/// assert_eq!(parse_size("512"), Ok(512));
/// ```
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: write it like `100MB` or `64MiB`"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "`{other}` is not a size unit: use B, KB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
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
