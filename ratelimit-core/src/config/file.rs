//! The YAML file format: `rate_limiter:` and its sections.
//!
//! YAML is read with `serde_norway`, the maintained fork of `serde_yaml` (which upstream marked
//! deprecated), and `serde_path_to_error`, so that a parse error names the field's path as well
//! as its line. Unknown fields are refused everywhere: a typo must not silently keep a default.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::error::{ConfigError, Location};
use super::http::{
    AllowList, ClientIpHeader, HeaderFamilies, HttpConfig, IpBlock, KeySource, LegacyReset,
    MissingKey, Rule, RuleMatch,
};
use super::locate;
/// Permits a lease reserves when `lease_size` is not given.
const DEFAULT_LEASE_SIZE: u64 = 20;

use super::model::{
    CacheConfig, CacheMode, Config, Credentials, FallbackConfig, MemoryConfig, Overrides,
    RedisConfig, RedisMode, Secret,
};
use super::units::{parse_duration, parse_size};
use super::{HotKeyConfig, share_to_ppm};
use crate::decision::FallbackMode;
use crate::policy::{Algorithm, Policy, Window};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    rate_limiter: RateLimiterSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimiterSection {
    prefix: Option<String>,
    algorithm: Option<AlgorithmName>,
    spread: Option<u32>,
    redis: Option<RedisSection>,
    windows: Vec<WindowSection>,
    cache: Option<CacheSection>,
    fallback: Option<FallbackSection>,
    memory: Option<MemorySection>,
    hot_keys: Option<HotKeysSection>,
    key: Option<KeyName>,
    trusted_proxies: Option<Vec<IpBlockText>>,
    client_ip_header: Option<ClientIpHeaderName>,
    ipv6_prefix: Option<u8>,
    headers: Option<Vec<HeaderFamilyName>>,
    legacy_reset: Option<LegacyResetName>,
    on_missing_key: Option<MissingKeyName>,
    shadow: Option<bool>,
    allow_list: Option<AllowListSection>,
    rules: Option<Vec<RuleSection>>,
}

/// A key source written like `ip`, `header:x-api-key` or `ip+header:x-api-key`.
struct KeyName(KeySource);

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        KeySource::parse(&text)
            .map(KeyName)
            .map_err(serde::de::Error::custom)
    }
}

/// An IP or CIDR block written as text.
struct IpBlockText(IpBlock);

impl<'de> Deserialize<'de> for IpBlockText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        IpBlock::parse(&text)
            .map(IpBlockText)
            .map_err(serde::de::Error::custom)
    }
}

/// The header trusted proxies write, such as `x-forwarded-for` or `cf-connecting-ip`.
struct ClientIpHeaderName(ClientIpHeader);

impl<'de> Deserialize<'de> for ClientIpHeaderName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ClientIpHeader::parse(&text)
            .map(ClientIpHeaderName)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum LegacyResetName {
    EpochSeconds,
    DeltaSeconds,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum HeaderFamilyName {
    Ietf,
    Legacy,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum MissingKeyName {
    Reject,
    Deny,
    Allow,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowListSection {
    #[serde(default)]
    ips: Vec<IpBlockText>,
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    name: String,
    #[serde(rename = "match", default)]
    matches: Option<MatchSection>,
    windows: Option<Vec<WindowSection>>,
    algorithm: Option<AlgorithmName>,
    spread: Option<u32>,
    key: Option<KeyName>,
    cost: Option<u64>,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    exempt: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSection {
    path: Option<String>,
    #[serde(default)]
    methods: Vec<MethodName>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

/// An HTTP method, upper-cased.
struct MethodName(String);

impl<'de> Deserialize<'de> for MethodName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let upper = text.trim().to_ascii_uppercase();
        if upper.is_empty() || upper.len() > 32 || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom(format!(
                "`{text}` is not an HTTP method"
            )));
        }
        Ok(MethodName(upper))
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum AlgorithmName {
    SlidingWindow,
    MultiWindow,
    TokenBucket,
    FixedWindow,
    SlidingCounter,
}

impl From<AlgorithmName> for Algorithm {
    fn from(name: AlgorithmName) -> Self {
        match name {
            AlgorithmName::SlidingWindow | AlgorithmName::MultiWindow => Self::SlidingWindow,
            AlgorithmName::TokenBucket => Self::TokenBucket,
            AlgorithmName::FixedWindow => Self::FixedWindow,
            AlgorithmName::SlidingCounter => Self::SlidingCounter,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    addrs: Vec<String>,
    mode: Option<ModeName>,
    pool_size: Option<usize>,
    timeout: Option<HumanDuration>,
    /// ACL user; the password comes from the environment or a file, never from this file.
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<std::path::PathBuf>,
    /// PEM file of the CA(s) trusted for `rediss://` addresses, instead of the system's roots.
    tls_ca_file: Option<std::path::PathBuf>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum ModeName {
    Auto,
    Standalone,
    Cluster,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSection {
    max_requests: u64,
    duration: HumanDuration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheSection {
    enabled: Option<bool>,
    ttl: Option<HumanDuration>,
    max_size: Option<HumanSize>,
    mode: Option<CacheModeName>,
    lease_size: Option<u64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum CacheModeName {
    Exact,
    Lease,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FallbackSection {
    mode: Option<FallbackName>,
    circuit_breaker_threshold: Option<u32>,
    cool_down: Option<HumanDuration>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum FallbackName {
    Open,
    Closed,
    Local,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemorySection {
    max_keys: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HotKeysSection {
    enabled: Option<bool>,
    capacity: Option<usize>,
    min_share: Option<f64>,
    sample_every: Option<u32>,
    window: Option<HumanDuration>,
    shield: Option<bool>,
}

/// A duration written like `100ms` or `1h`.
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// A size written like `100MB`, or a number of bytes.
struct HumanSize(u64);

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
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
            Raw::Bytes(n) => Ok(HumanSize(n)),
            Raw::Text(text) => parse_size(&text)
                .map(HumanSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl RedisSection {
    /// Reads the password named by `password_env` or `password_file`.
    fn credentials(&self) -> Result<Option<Credentials>, ConfigError> {
        let password = match (&self.password_env, &self.password_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "rate_limiter.redis.password_env",
                    "give `password_env` or `password_file`, not both",
                ));
            }
            (Some(name), None) => std::env::var(name).map_err(|_| {
                ConfigError::invalid(
                    "rate_limiter.redis.password_env",
                    format!("the environment variable `{name}` is not set (or not UTF-8)"),
                )
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    ConfigError::invalid(
                        "rate_limiter.redis.password_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            (None, None) => {
                if self.username.is_some() {
                    return Err(ConfigError::invalid(
                        "rate_limiter.redis.username",
                        "a username needs `password_env` or `password_file`",
                    ));
                }
                return Ok(None);
            }
        };
        Ok(Some(Credentials::new(
            self.username.clone(),
            Secret::new(password),
        )))
    }
}

impl RateLimiterSection {
    fn into_config(self) -> Result<Config, ConfigError> {
        let windows = self
            .windows
            .iter()
            .map(|w| Window::new(w.max_requests, w.duration.0));
        let algorithm = self.algorithm.map(Algorithm::from).unwrap_or_default();
        let mut config = Config::with_policy(
            Policy::new(Policy::DEFAULT_NAME, windows)
                .with_algorithm(algorithm)
                .with_spread(self.spread.unwrap_or(1)),
        );
        if let Some(prefix) = self.prefix {
            config.prefix = prefix;
        }
        if let Some(redis) = self.redis {
            let credentials = redis.credentials()?;
            let mut r = RedisConfig::new(redis.addrs);
            r.mode = match redis.mode {
                None | Some(ModeName::Auto) => RedisMode::Auto,
                Some(ModeName::Standalone) => RedisMode::Standalone,
                Some(ModeName::Cluster) => RedisMode::Cluster,
            };
            if let Some(size) = redis.pool_size {
                r.pool_size = size;
            }
            if let Some(timeout) = redis.timeout {
                r.timeout = timeout.0;
            }
            r.credentials = credentials;
            if let Some(path) = &redis.tls_ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::invalid(
                        "rate_limiter.redis.tls_ca_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                r = r.with_tls_ca_pem(pem);
            }
            config.redis = Some(r);
        }
        if let Some(cache) = self.cache {
            let defaults = CacheConfig::default();
            config.cache = CacheConfig {
                // A cache section turns the cache on unless it says otherwise.
                enabled: cache.enabled.unwrap_or(true),
                ttl: cache.ttl.map_or(defaults.ttl, |t| t.0),
                max_size: cache.max_size.map_or(defaults.max_size, |s| s.0),
                mode: match cache.mode {
                    None | Some(CacheModeName::Exact) => CacheMode::Exact,
                    Some(CacheModeName::Lease) => CacheMode::Lease {
                        size: cache.lease_size.unwrap_or(DEFAULT_LEASE_SIZE),
                    },
                },
            };
        }
        if let Some(fallback) = self.fallback {
            let defaults = FallbackConfig::default();
            config.fallback = FallbackConfig {
                mode: match fallback.mode {
                    None => defaults.mode,
                    Some(FallbackName::Open) => FallbackMode::Open,
                    Some(FallbackName::Closed) => FallbackMode::Closed,
                    Some(FallbackName::Local) => FallbackMode::Local,
                },
                circuit_breaker_threshold: fallback
                    .circuit_breaker_threshold
                    .unwrap_or(defaults.circuit_breaker_threshold),
                cool_down: fallback.cool_down.map_or(defaults.cool_down, |d| d.0),
            };
        }
        let default_windows = config.policy.windows().to_vec();
        let rules = self
            .rules
            .unwrap_or_default()
            .into_iter()
            .map(|rule| rule.into_rule(&default_windows))
            .collect();
        config.http = HttpConfig {
            key: self.key.map(|k| k.0),
            trusted_proxies: self
                .trusted_proxies
                .unwrap_or_default()
                .into_iter()
                .map(|b| b.0)
                .collect(),
            client_ip_header: self.client_ip_header.map(|h| h.0).unwrap_or_default(),
            ipv6_prefix: self.ipv6_prefix.unwrap_or(HttpConfig::DEFAULT_IPV6_PREFIX),
            legacy_reset: match self.legacy_reset {
                None | Some(LegacyResetName::EpochSeconds) => LegacyReset::EpochSeconds,
                Some(LegacyResetName::DeltaSeconds) => LegacyReset::DeltaSeconds,
            },
            headers: self
                .headers
                .map_or_else(HeaderFamilies::default, |families| HeaderFamilies {
                    ietf: families.contains(&HeaderFamilyName::Ietf),
                    legacy: families.contains(&HeaderFamilyName::Legacy),
                }),
            on_missing_key: match self.on_missing_key {
                None | Some(MissingKeyName::Reject) => MissingKey::Reject,
                Some(MissingKeyName::Deny) => MissingKey::Deny,
                Some(MissingKeyName::Allow) => MissingKey::Allow,
            },
            shadow: self.shadow.unwrap_or(false),
            allow_list: self
                .allow_list
                .map_or_else(AllowList::default, |a| AllowList {
                    ips: a.ips.into_iter().map(|b| b.0).collect(),
                    keys: a.keys,
                }),
            rules,
        };
        if let Some(hot) = self.hot_keys {
            let defaults = HotKeyConfig::default();
            config.hot_keys = HotKeyConfig {
                enabled: hot.enabled.unwrap_or(defaults.enabled),
                capacity: hot.capacity.unwrap_or(defaults.capacity),
                min_share_ppm: hot.min_share.map_or(defaults.min_share_ppm, share_to_ppm),
                sample_every: hot.sample_every.unwrap_or(defaults.sample_every),
                window: hot.window.map_or(defaults.window, |w| w.0),
                shield: hot.shield.unwrap_or(defaults.shield),
            };
        }
        if let Some(memory) = self.memory {
            config.memory = MemoryConfig {
                max_keys: memory.max_keys.unwrap_or(MemoryConfig::default().max_keys),
            };
        }
        Ok(config)
    }
}

/// The parser's message without what the error says elsewhere: the leading field path and the
/// trailing " at line L column C".
fn parser_message(raw: &str) -> String {
    let message = raw.rsplit_once(" at line ").map_or(raw, |(head, _)| head);
    match message.split_once(": ") {
        Some((head, tail))
            if !head.contains(' ') && (head.starts_with("rate_limiter") || head == ".") =>
        {
            tail.to_owned()
        }
        _ => message.to_owned(),
    }
}

impl RuleSection {
    /// A rule without windows (and not exempt) applies the top-level windows under its own name.
    fn into_rule(self, default_windows: &[Window]) -> Rule {
        let matches = self.matches.map_or_else(RuleMatch::default, |m| RuleMatch {
            path: m.path,
            methods: m.methods.into_iter().map(|m| m.0).collect(),
            headers: m
                .headers
                .into_iter()
                .map(|(name, value)| (name.to_ascii_lowercase(), value))
                .collect(),
        });
        let policy = (!self.exempt).then(|| {
            let windows: Vec<Window> = match &self.windows {
                Some(ws) => ws
                    .iter()
                    .map(|w| Window::new(w.max_requests, w.duration.0))
                    .collect(),
                None => default_windows.to_vec(),
            };
            Policy::new(self.name.clone(), windows)
                .with_algorithm(self.algorithm.map(Algorithm::from).unwrap_or_default())
                .with_cost(self.cost.unwrap_or(1))
                .with_spread(self.spread.unwrap_or(1))
        });
        Rule {
            name: self.name,
            matches,
            policy,
            key: self.key.map(|k| k.0),
            shadow: self.shadow,
        }
    }
}

impl Config {
    /// Reads the `rate_limiter` block from YAML text, applies [`Overrides::from_env`] and
    /// validates the result.
    ///
    /// ```
    /// use ratelimit_core::Config;
    /// let config = Config::from_yaml_str(
    ///     "rate_limiter:\n  windows:\n    - max_requests: 100\n      duration: 1m\n",
    /// )?;
    /// assert_eq!(config.policy().windows()[0].max_requests(), 100);
    /// # Ok::<(), ratelimit_core::config::ConfigError>(())
    /// ```
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_yaml_str_with(text, None, &Overrides::from_env())
    }

    /// Reads and validates a YAML file, applying [`Overrides::from_env`]. Errors name the
    /// file, the line and the field.
    pub fn from_yaml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml_str_with(&text, Some(path), &Overrides::from_env())
    }

    /// Reads YAML text with explicit overrides; `origin` names the file in errors.
    pub fn from_yaml_str_with(
        text: &str,
        origin: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let deserializer = serde_norway::Deserializer::from_str(text);
        let file: File = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = match e.path().to_string() {
                root if root == "." => "rate_limiter".to_owned(),
                path => path,
            };
            let inner = e.into_inner();
            // The parser knows where it stopped, which for a bad scalar can be the enclosing
            // mapping; the field's own line is better when the text spells it out.
            let position = locate::find_exact(text, &field)
                .or_else(|| inner.location().map(|p| (p.line(), p.column())));
            ConfigError::Invalid {
                location: Location {
                    file: origin.map(Path::to_path_buf),
                    line: position.map(|p| p.0),
                    column: position.map(|p| p.1),
                },
                message: parser_message(&inner.to_string()),
                field,
            }
        })?;
        let mut config = file
            .rate_limiter
            .into_config()
            .map_err(|e| e.located(origin, |field| locate::find(text, field)))?
            .with_overrides(overrides);
        config.source = origin.map(Path::to_path_buf);
        config.validate().map_err(|e| match e {
            // An address from the environment is not in the file: say where it came from.
            ConfigError::Invalid { field, message, .. }
                if overrides.redis_url.is_some()
                    && field.starts_with("rate_limiter.redis.addrs") =>
            {
                ConfigError::Invalid {
                    location: Location::default(),
                    field,
                    message: format!("{message} (set by RATELIMIT_REDIS_URL)"),
                }
            }
            e => e.located(origin, |field| locate::find(text, field)),
        })?;
        Ok(config)
    }
}
