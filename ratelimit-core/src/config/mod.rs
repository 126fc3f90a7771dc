//! Configuration: the `rate_limiter` YAML block, or the same built in code.
//!
//! [`Config`] is built with [`Config::new`] and `with_*` methods, or read from YAML with
//! [`Config::from_yaml_str`] / [`Config::from_yaml_file`]. Either way it is validated before a
//! limiter uses it, and a refusal is a [`ConfigError`] naming the field, and for files the path
//! and line.

mod error;
mod file;
mod hot_keys;
mod http;
mod locate;
mod model;
mod pattern;
mod units;
mod validate;

pub use error::{ConfigError, Location};
pub use hot_keys::HotKeyConfig;
pub use http::{
    AllowList, ClientIpHeader, HeaderFamilies, HttpConfig, HttpParseError, IpBlock, KeySource,
    LegacyReset, MissingKey, Rule, RuleMatch,
};
pub use model::{
    CacheConfig, CacheMode, Config, Credentials, FallbackConfig, MemoryConfig, Overrides,
    RedisConfig, RedisMode, Secret,
};
pub use pattern::{PathPattern, PatternError, PatternSegment, PatternTail};
pub use units::{UnitError, parse_duration, parse_size};
pub(crate) use units::{human_duration, human_size};
