//! The YAML file format: `rate_limiter:` and its sections.
//!
//! YAML is read with `serde_norway`, the maintained fork of `serde_yaml` (which upstream marked
//! deprecated), and `serde_path_to_error`, so that a parse error names the field's path as well
//! as its line. Unknown fields are refused everywhere: a typo must not silently keep a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::HotKeyConfig;
use super::error::{ConfigError, Location};
use super::http::{
    AllowList, ClientIpHeader, HeaderFamilies, HttpConfig, IpBlock, KeySource, LegacyReset,
    MissingKey, Rule, RuleMatch,
};
use super::locate;
use super::model::{
    CacheConfig, CacheMode, Config, Credentials, FallbackConfig, MemoryConfig, Overrides,
    RedisConfig, RedisMode, Secret,
};
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
    algorithm: Option<Algorithm>,
    spread: Option<u32>,
    redis: Option<RedisSection>,
    windows: Vec<Window>,
    cache: Option<CacheSection>,
    fallback: Option<FallbackConfig>,
    memory: Option<MemoryConfig>,
    hot_keys: Option<HotKeyConfig>,
    key: Option<KeySource>,
    trusted_proxies: Option<Vec<IpBlock>>,
    client_ip_header: Option<ClientIpHeader>,
    ipv6_prefix: Option<u8>,
    headers: Option<HeaderFamilies>,
    legacy_reset: Option<LegacyReset>,
    on_missing_key: Option<MissingKey>,
    shadow: Option<bool>,
    allow_list: Option<AllowList>,
    rules: Option<Vec<RuleSection>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    name: String,
    #[serde(rename = "match", default)]
    matches: Option<RuleMatch>,
    windows: Option<Vec<Window>>,
    algorithm: Option<Algorithm>,
    spread: Option<u32>,
    key: Option<KeySource>,
    cost: Option<u64>,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    exempt: bool,
}

/// The `redis` section: the addresses and settings of [`RedisConfig`], and where its secrets are.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    addrs: Vec<String>,
    mode: Option<RedisMode>,
    pool_size: Option<usize>,
    #[serde(default, with = "super::human_duration")]
    timeout: Option<Duration>,
    /// ACL user; the password comes from the environment or a file, never from this file.
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    /// PEM file of the CA(s) trusted for `rediss://` addresses, instead of the system's roots.
    tls_ca_file: Option<PathBuf>,
}

/// The `cache` section: [`CacheConfig`], with the lease size beside the mode's name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheSection {
    enabled: Option<bool>,
    #[serde(default, with = "super::human_duration")]
    ttl: Option<Duration>,
    #[serde(default, with = "super::human_size")]
    max_size: Option<u64>,
    #[serde(default)]
    mode: CacheMode,
    lease_size: Option<u64>,
}

impl From<CacheSection> for CacheConfig {
    fn from(section: CacheSection) -> Self {
        let defaults = Self::default();
        Self {
            // A cache section turns the cache on unless it says otherwise.
            enabled: section.enabled.unwrap_or(true),
            ttl: section.ttl.unwrap_or(defaults.ttl),
            max_size: section.max_size.unwrap_or(defaults.max_size),
            mode: match (section.mode, section.lease_size) {
                (CacheMode::Lease { .. }, Some(size)) => CacheMode::Lease { size },
                (mode, _) => mode,
            },
        }
    }
}

impl RedisSection {
    /// The section as a [`RedisConfig`], with the password and CA certificates it names read.
    fn into_config(self) -> Result<RedisConfig, ConfigError> {
        let mut redis =
            RedisConfig::new(self.addrs.iter().cloned()).with_mode(self.mode.unwrap_or_default());
        if let Some(size) = self.pool_size {
            redis = redis.with_pool_size(size);
        }
        if let Some(timeout) = self.timeout {
            redis = redis.with_timeout(timeout);
        }
        if let Some(credentials) = self.credentials()? {
            redis = redis.with_credentials(credentials);
        }
        if let Some(path) = &self.tls_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError::invalid(
                    "rate_limiter.redis.tls_ca_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            redis = redis.with_tls_ca_pem(pem);
        }
        Ok(redis)
    }

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
    /// What needs more than one field: the default policy from the top-level windows, which
    /// rules without windows of their own share, and the HTTP settings gathered into one.
    fn into_config(self) -> Result<Config, ConfigError> {
        let mut config = Config::with_policy(
            Policy::new(Policy::DEFAULT_NAME, self.windows)
                .with_algorithm(self.algorithm.unwrap_or_default())
                .with_spread(self.spread.unwrap_or(1)),
        );
        if let Some(prefix) = self.prefix {
            config.prefix = prefix;
        }
        if let Some(redis) = self.redis {
            config.redis = Some(redis.into_config()?);
        }
        config.cache = self.cache.map(CacheConfig::from).unwrap_or_default();
        config.fallback = self.fallback.unwrap_or_default();
        config.memory = self.memory.unwrap_or_default();
        config.hot_keys = self.hot_keys.unwrap_or_default();
        let default_windows = config.policy.windows();
        let rules = self
            .rules
            .unwrap_or_default()
            .into_iter()
            .map(|rule| rule.into_rule(default_windows))
            .collect();
        config.http = HttpConfig {
            key: self.key,
            trusted_proxies: self.trusted_proxies.unwrap_or_default(),
            client_ip_header: self.client_ip_header.unwrap_or_default(),
            ipv6_prefix: self.ipv6_prefix.unwrap_or(HttpConfig::DEFAULT_IPV6_PREFIX),
            headers: self.headers.unwrap_or_default(),
            legacy_reset: self.legacy_reset.unwrap_or_default(),
            on_missing_key: self.on_missing_key.unwrap_or_default(),
            shadow: self.shadow.unwrap_or(false),
            allow_list: self.allow_list.unwrap_or_default(),
            rules,
        };
        Ok(config)
    }
}

impl RuleSection {
    /// A rule without windows (and not exempt) applies the top-level windows under its own name.
    fn into_rule(self, default_windows: &[Window]) -> Rule {
        let policy = (!self.exempt).then(|| {
            let windows = self.windows.unwrap_or_else(|| default_windows.to_vec());
            Policy::new(self.name.clone(), windows)
                .with_algorithm(self.algorithm.unwrap_or_default())
                .with_cost(self.cost.unwrap_or(1))
                .with_spread(self.spread.unwrap_or(1))
        });
        Rule {
            name: self.name,
            matches: self.matches.unwrap_or_default(),
            policy,
            key: self.key,
            shadow: self.shadow,
        }
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
    /// # Ok::<(), ratelimit_core::ConfigError>(())
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

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOWS: &str = "rate_limiter:\n  windows:\n    - max_requests: 10\n      duration: 1m\n";

    fn read(extra: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_str_with(&format!("{WINDOWS}{extra}"), None, &Overrides::default())
    }

    #[test]
    fn sections_read_into_the_domain_types() {
        let config = read(
            "  algorithm: multi_window\n  headers: [legacy]\n  legacy_reset: delta_seconds\n  \
             on_missing_key: deny\n  hot_keys:\n    min_share: 0.25\n    window: 30s\n  \
             fallback:\n    mode: closed\n    cool_down: 2s\n  memory:\n    max_keys: 5\n",
        )
        .expect("valid");
        assert_eq!(config.policy().algorithm(), Algorithm::SlidingWindow);
        assert_eq!(
            config.http().headers,
            HeaderFamilies {
                ietf: false,
                legacy: true
            }
        );
        assert_eq!(config.http().legacy_reset, LegacyReset::DeltaSeconds);
        assert_eq!(config.http().on_missing_key, MissingKey::Deny);
        assert!((config.hot_keys().min_share() - 0.25).abs() < 1e-9);
        assert_eq!(config.hot_keys().window(), Duration::from_secs(30));
        assert_eq!(
            config.hot_keys().capacity(),
            HotKeyConfig::default().capacity()
        );
        assert_eq!(
            config.fallback().mode(),
            crate::decision::FallbackMode::Closed
        );
        assert_eq!(config.fallback().cool_down(), Duration::from_secs(2));
        assert_eq!(config.memory().max_keys(), 5);
    }

    #[test]
    fn a_lease_takes_its_size_from_lease_size() {
        let mode = |cache: &str| read(cache).expect("valid").cache().mode();
        assert_eq!(
            mode("  cache:\n    ttl: 1s\n    mode: lease\n"),
            CacheMode::Lease {
                size: CacheMode::DEFAULT_LEASE_SIZE
            }
        );
        assert_eq!(
            mode("  cache:\n    ttl: 1s\n    mode: lease\n    lease_size: 50\n"),
            CacheMode::Lease { size: 50 }
        );
        assert_eq!(
            mode("  cache:\n    ttl: 1s\n    lease_size: 50\n"),
            CacheMode::Exact
        );
        let err = read("  cache:\n    mode: leased\n").expect_err("unknown mode");
        assert_eq!(err.field(), Some("rate_limiter.cache.mode"));
        assert_eq!(err.location().and_then(Location::line), Some(6));
    }

    #[test]
    fn rule_errors_name_the_item_at_fault() {
        let err =
            read("  rules:\n    - name: api\n      match:\n        methods: [get, \"p st\"]\n")
                .expect_err("a bad method");
        assert_eq!(err.field(), Some("rate_limiter.rules[0].match.methods[1]"));
        assert!(err.to_string().contains("not an HTTP method"), "{err}");

        let err = read("  hot_keys:\n    share: 0.1\n").expect_err("unknown field");
        assert_eq!(err.field(), Some("rate_limiter.hot_keys.share"));
        assert_eq!(err.location().and_then(Location::line), Some(6));
    }
}
