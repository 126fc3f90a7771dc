//! The HTTP part of the configuration, as plain data: key sources, trusted proxies, response
//! headers, allow-lists and routing rules.
//!
//! The core crate knows no HTTP types; it reads, checks and hands these to the HTTP crates
//! (`ratelimit-tower` turns them into extractors and headers, `ratelimit-axum` into rules).

use std::net::IpAddr;

use super::error::ConfigError;
use super::model::validate_policy;
use crate::policy::Policy;

/// Where the identity of a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The client IP: the socket peer, or what trusted proxies say (`ip`).
    ClientIp,
    /// The socket peer's IP, ignoring any header (`peer`).
    PeerIp,
    /// A request header's value, such as an API key (`header:x-api-key`).
    Header(String),
    /// Several sources joined; all must be present (`ip+header:x-api-key`).
    All(Vec<KeySource>),
}

impl KeySource {
    /// Parses `ip`, `peer`, `header:<name>`, or several joined with `+`.
    ///
    /// ```
    /// use ratelimit_core::config::KeySource;
    /// assert_eq!(KeySource::parse("header:X-Api-Key"), Ok(KeySource::Header("x-api-key".into())));
    /// assert!(matches!(KeySource::parse("ip+header:x-api-key"), Ok(KeySource::All(_))));
    /// assert!(KeySource::parse("cookie:session").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('+').map(str::trim).collect();
        if parts.len() > 1 {
            return parts
                .iter()
                .map(|p| Self::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map(Self::All);
        }
        match text.trim() {
            "ip" => Ok(Self::ClientIp),
            "peer" => Ok(Self::PeerIp),
            other => match other.strip_prefix("header:") {
                Some(name) if is_header_name(name) => Ok(Self::Header(name.to_ascii_lowercase())),
                _ => Err(format!(
                    "`{other}` is not a key source: use `ip`, `peer`, `header:<name>`, or several joined with `+`"
                )),
            },
        }
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Which rate-limit header families responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFamilies {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    pub ietf: bool,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    pub legacy: bool,
}

impl Default for HeaderFamilies {
    fn default() -> Self {
        Self {
            ietf: true,
            legacy: true,
        }
    }
}

/// What to do with a request whose key cannot be extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingKey {
    /// Answer 400 with a problem document (the default).
    #[default]
    Reject,
    /// Answer 429, as if the limit were spent.
    Deny,
    /// Let it through, unlimited.
    Allow,
}

/// An IP address or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Parses `10.0.0.0/8`, `::1`, `192.168.1.7`.
    ///
    /// ```
    /// use ratelimit_core::config::IpBlock;
    /// let block = IpBlock::parse("10.0.0.0/8")?;
    /// assert!(block.contains("10.1.2.3".parse().unwrap()));
    /// assert!(!block.contains("11.0.0.1".parse().unwrap()));
    /// # Ok::<(), String>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not an IP address or CIDR block");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.parse::<u8>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Requests that are never limited: by client IP, or by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Client IPs and blocks.
    pub ips: Vec<IpBlock>,
    /// Exact keys (as extracted, before hashing).
    pub keys: Vec<String>,
}

/// What a rule matches; every part given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleMatch {
    /// A path pattern: literal segments, `{name}` for one segment, a final `{*name}` or `*` for
    /// the rest (see [`PathPattern`](super::PathPattern)).
    pub path: Option<String>,
    /// Methods, upper case; empty matches any.
    pub methods: Vec<String>,
    /// Headers that must be present with these exact values (names lower case).
    pub headers: Vec<(String, String)>,
}

/// One routing rule: what it matches, and the policy it applies or that it is exempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The rule's name: it labels metrics and logs, and names its policy.
    pub name: String,
    /// What it matches.
    pub matches: RuleMatch,
    /// The policy applied, or `None` when the rule exempts what it matches.
    pub policy: Option<Policy>,
    /// The key source, when not the top-level one.
    pub key: Option<KeySource>,
    /// Decide and count, but never deny.
    pub shadow: bool,
}

/// The HTTP settings of a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpConfig {
    /// The default key source (`ip` when not given).
    pub key: Option<KeySource>,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpBlock>,
    /// Header families on responses.
    pub headers: HeaderFamilies,
    /// What to do when no key can be extracted.
    pub on_missing_key: MissingKey,
    /// Shadow mode for the whole layer: decisions are made and counted, nothing is denied.
    pub shadow: bool,
    /// Requests never limited.
    pub allow_list: AllowList,
    /// Ordered rules; the first match applies, and a request matching none gets the top-level
    /// policy.
    pub rules: Vec<Rule>,
}

impl HttpConfig {
    /// The key source in force by default.
    pub fn default_key(&self) -> KeySource {
        self.key.clone().unwrap_or(KeySource::ClientIp)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let mut names: Vec<&str> = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let base = format!("rate_limiter.rules[{i}]");
            if rule.name == crate::policy::Policy::DEFAULT_NAME {
                return Err(ConfigError::invalid(
                    format!("{base}.name"),
                    "`default` names the top-level policy; choose another name",
                ));
            }
            if names.contains(&rule.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{base}.name"),
                    format!("another rule is named `{}`", rule.name),
                ));
            }
            names.push(&rule.name);
            if let Some(path) = &rule.matches.path
                && let Err(e) = super::pattern::PathPattern::parse(path)
            {
                return Err(ConfigError::invalid(
                    format!("{base}.match.path"),
                    e.to_string(),
                ));
            }
            if let Some(policy) = &rule.policy {
                validate_policy(policy, &base)?;
            }
        }
        Ok(())
    }
}
