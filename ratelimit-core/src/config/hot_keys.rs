//! The `hot_keys` section of the configuration; the detector it configures lives in
//! [`crate::hot_keys`].

use std::time::Duration;

use serde::Deserialize;

/// The `hot_keys` section: detection of keys with a disproportionate share of decisions.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_core::HotKeyConfig;
/// let config = HotKeyConfig::default()
///     .with_capacity(64)
///     .with_min_share(0.02)
///     .with_window(Duration::from_secs(30));
/// assert_eq!(config.capacity(), 64);
/// assert!(config.enabled() && config.shield());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HotKeyConfig {
    pub(crate) enabled: bool,
    pub(crate) capacity: usize,
    /// In parts per million of the sampled decisions; written as a share (`min_share: 0.05`).
    #[serde(rename = "min_share", deserialize_with = "share_as_ppm")]
    pub(crate) min_share_ppm: u32,
    pub(crate) sample_every: u32,
    #[serde(with = "super::human_duration")]
    pub(crate) window: Duration,
    pub(crate) shield: bool,
}

impl Default for HotKeyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            capacity: 32,
            min_share_ppm: 50_000,
            sample_every: 16,
            window: Duration::from_secs(10),
            shield: true,
        }
    }
}

impl HotKeyConfig {
    /// Detection off: no sampling, no shield.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    setters! {
        /// Tracks at most `capacity` keys (default 32).
        pub fn with_capacity(capacity: usize);

        /// A key is hot from this share of decisions on (default 0.05, 5%).
        pub fn with_min_share(share: f64) sets min_share_ppm = share_to_ppm(share);

        /// Follows one decision in `n` (default 16); 1 follows every decision.
        pub fn with_sample_every(n: u32) sets sample_every = n;

        /// Counts halve every `window` (default 10 s).
        pub fn with_window(window: Duration);

        /// Whether hot keys' denials are answered locally when the cache is off (default true).
        pub fn with_shield(shield: bool);
    }

    /// Whether detection runs.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The most keys tracked.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The share from which a key is hot, between 0 and 1.
    pub fn min_share(&self) -> f64 {
        f64::from(self.min_share_ppm) / 1e6
    }

    /// One decision in this many is followed.
    pub fn sample_every(&self) -> u32 {
        self.sample_every
    }

    /// The half-life of counts.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether hot keys' denials are answered locally when the cache is off.
    pub fn shield(&self) -> bool {
        self.shield
    }
}

/// `share` (0..=1) in parts per million, saturating; NaN is 0.
fn share_to_ppm(share: f64) -> u32 {
    let ppm = (share * 1e6).round();
    if ppm.is_nan() || ppm <= 0.0 {
        0
    } else if ppm >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        ppm as u32
    }
}

/// Reads a share (`0.05`) into parts per million.
fn share_as_ppm<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    f64::deserialize(d).map(share_to_ppm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_round_trip_through_ppm() {
        assert_eq!(share_to_ppm(0.05), 50_000);
        assert_eq!(share_to_ppm(f64::NAN), 0);
        assert_eq!(share_to_ppm(-1.0), 0);
        assert_eq!(share_to_ppm(1e12), u32::MAX);
        assert!((HotKeyConfig::default().with_min_share(0.25).min_share() - 0.25).abs() < 1e-9);
    }
}
