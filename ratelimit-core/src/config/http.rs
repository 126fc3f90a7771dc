//! The HTTP part of the configuration, as plain data: key sources, trusted proxies, response
//! headers, allow-lists and routing rules.
//!
//! The core crate knows no HTTP types; it reads, checks and hands these to the HTTP crates
//! (`ratelimit-tower` turns them into extractors and headers, `ratelimit-axum` into rules).

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use super::error::ConfigError;
use super::validate::validate_policy;
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
    /// A cookie's value, such as a session id (`cookie:session`).
    Cookie(String),
    /// Several sources joined; all must be present (`ip+header:x-api-key`).
    All(Vec<KeySource>),
}

/// Why a key source, a client IP header or an IP block written as text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpParseError {
    /// Not a [`KeySource`].
    #[error(
        "`{0}` is not a key source: use `ip`, `peer`, `header:<name>`, `cookie:<name>`, or several joined with `+`"
    )]
    KeySource(String),
    /// Not a header name, for [`ClientIpHeader`].
    #[error(
        "`{0}` is not a header name: use `x-forwarded-for`, `forwarded`, `x-real-ip`, or the header your proxies write (such as `cf-connecting-ip`)"
    )]
    HeaderName(String),
    /// Not an [`IpBlock`].
    #[error("`{0}` is not an IP address or CIDR block")]
    IpBlock(String),
}

/// The message, for callers that keep errors as text.
impl From<HttpParseError> for String {
    fn from(error: HttpParseError) -> Self {
        error.to_string()
    }
}

/// Parses `ip`, `peer`, `header:<name>`, `cookie:<name>`, or several joined with `+`.
///
/// ```
/// use ratelimit_core::KeySource;
/// assert_eq!("header:X-Api-Key".parse(), Ok(KeySource::Header("x-api-key".into())));
/// assert!(matches!("ip+header:x-api-key".parse(), Ok(KeySource::All(_))));
/// // Cookie names are case-sensitive: kept as written.
/// assert_eq!("cookie:SID".parse(), Ok(KeySource::Cookie("SID".into())));
/// assert!("cookie:a;b".parse::<KeySource>().is_err());
/// assert!("query:id".parse::<KeySource>().is_err());
/// ```
impl FromStr for KeySource {
    type Err = HttpParseError;

    fn from_str(text: &str) -> Result<Self, HttpParseError> {
        let parts: Vec<&str> = text.split('+').map(str::trim).collect();
        if parts.len() > 1 {
            return parts
                .iter()
                .map(|p| p.parse())
                .collect::<Result<Vec<_>, _>>()
                .map(Self::All);
        }
        let other = text.trim();
        match other {
            "ip" => return Ok(Self::ClientIp),
            "peer" => return Ok(Self::PeerIp),
            _ => {}
        }
        if let Some(name) = other.strip_prefix("header:")
            && is_header_name(name)
        {
            return Ok(Self::Header(name.to_ascii_lowercase()));
        }
        // A cookie name is a token, like a header name (RFC 6265, section 4.1.1).
        if let Some(name) = other.strip_prefix("cookie:")
            && is_header_name(name)
        {
            return Ok(Self::Cookie(name.to_owned()));
        }
        Err(HttpParseError::KeySource(other.to_owned()))
    }
}

/// `Deserialize` for types written as text in the file, through their [`FromStr`]; the
/// parser's message becomes the error's.
macro_rules! deserialize_from_str {
    ($($ty:ty),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

deserialize_from_str!(KeySource, ClientIpHeader, IpBlock);

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

/// Read from a list of family names: `[ietf, legacy]`, `[legacy]`, `[]`.
impl<'de> Deserialize<'de> for HeaderFamilies {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, PartialEq)]
        #[serde(rename_all = "snake_case")]
        enum Family {
            Ietf,
            Legacy,
        }
        let families = Vec::<Family>::deserialize(d)?;
        Ok(Self {
            ietf: families.contains(&Family::Ietf),
            legacy: families.contains(&Family::Legacy),
        })
    }
}

impl Default for HeaderFamilies {
    fn default() -> Self {
        Self {
            ietf: true,
            legacy: true,
        }
    }
}

/// The one header trusted proxies write the client's address in (`client_ip_header`).
///
/// Only this header is read, and only from a trusted proxy; every other forwarding header is
/// ignored, so a client cannot pick its own key by sending one the proxies do not overwrite.
///
/// ```
/// use ratelimit_core::ClientIpHeader;
/// assert_eq!(ClientIpHeader::default(), ClientIpHeader::XForwardedFor);
/// assert_eq!("Forwarded".parse(), Ok(ClientIpHeader::Forwarded));
/// let cf: ClientIpHeader = "CF-Connecting-IP".parse()?;
/// assert_eq!(cf, ClientIpHeader::Other("cf-connecting-ip".into()));
/// assert_eq!(cf.name(), "cf-connecting-ip");
/// assert!("not a header".parse::<ClientIpHeader>().is_err());
/// # Ok::<(), ratelimit_core::HttpParseError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For`: a comma-separated list, one address appended by each proxy (the
    /// default).
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239): the `for=` parameter of each comma-separated element.
    Forwarded,
    /// `X-Real-IP`: one address, set by the proxy.
    XRealIp,
    /// Any other header holding the address, such as `cf-connecting-ip` or `fly-client-ip`
    /// (lower case). Read like `X-Forwarded-For`: a single address is a list of one.
    Other(String),
}

/// Parses a header name (case-insensitive).
impl FromStr for ClientIpHeader {
    type Err = HttpParseError;

    fn from_str(text: &str) -> Result<Self, HttpParseError> {
        let name = text.trim().to_ascii_lowercase();
        match name.as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            "x-real-ip" => Ok(Self::XRealIp),
            other if is_header_name(other) => Ok(Self::Other(name)),
            _ => Err(HttpParseError::HeaderName(text.to_owned())),
        }
    }
}

impl ClientIpHeader {
    /// The header's name, lower case.
    pub fn name(&self) -> &str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
            Self::XRealIp => "x-real-ip",
            Self::Other(name) => name,
        }
    }
}

/// What `X-RateLimit-Reset` holds (`legacy_reset`: `epoch_seconds` or `delta_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegacyReset {
    /// The Unix time, in whole seconds rounded up, when the quota is back: GitHub's convention
    /// and the default, so that a client computing `reset - now` waits.
    #[default]
    EpochSeconds,
    /// The number of seconds until then, as `Retry-After` and the draft's `t` give it.
    DeltaSeconds,
}

/// What to do with a request whose key cannot be extracted (`on_missing_key`: `reject`, `deny`
/// or `allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
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
pub struct IpBlock(IpNet);

/// Parses `10.0.0.0/8`, `::1`, `192.168.1.7`.
///
/// ```
/// use ratelimit_core::IpBlock;
/// let block: IpBlock = "10.0.0.0/8".parse()?;
/// assert!(block.contains("10.1.2.3".parse().unwrap()));
/// assert!(!block.contains("11.0.0.1".parse().unwrap()));
/// # Ok::<(), ratelimit_core::HttpParseError>(())
/// ```
impl FromStr for IpBlock {
    type Err = HttpParseError;

    fn from_str(text: &str) -> Result<Self, HttpParseError> {
        let bad = || HttpParseError::IpBlock(text.to_owned());
        // Split by hand rather than with `IpNet::from_str`, so a bare address is a block of one
        // and the prefix is read as before (host bits are kept, as written).
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.parse::<u8>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let net = match prefix {
            Some(prefix) => IpNet::new(addr, prefix).map_err(|_| bad())?,
            None => IpNet::from(addr),
        };
        Ok(Self(net))
    }
}

impl IpBlock {
    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

/// Requests that are never limited: by client IP, or by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllowList {
    /// Client IPs and blocks.
    pub ips: Vec<IpBlock>,
    /// Exact keys (as extracted, before hashing).
    pub keys: Vec<String>,
}

/// What a rule matches; every part given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleMatch {
    /// A path pattern: literal segments, `{name}` for one segment, a final `{*name}` or `*` for
    /// the rest (see [`PathPattern`](super::PathPattern)).
    pub path: Option<String>,
    /// Methods, upper case; empty matches any.
    #[serde(deserialize_with = "methods")]
    pub methods: Vec<String>,
    /// Headers that must be present with these exact values (names lower case).
    #[serde(deserialize_with = "header_values")]
    pub headers: Vec<(String, String)>,
}

/// HTTP methods, upper-cased; each is checked where it is written, so an error names its index.
fn methods<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Method(String);

    impl<'de> Deserialize<'de> for Method {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let text = String::deserialize(d)?;
            let upper = text.trim().to_ascii_uppercase();
            if upper.is_empty()
                || upper.len() > 32
                || !upper.bytes().all(|b| b.is_ascii_uppercase())
            {
                return Err(serde::de::Error::custom(format!(
                    "`{text}` is not an HTTP method"
                )));
            }
            Ok(Method(upper))
        }
    }

    let methods = Vec::<Method>::deserialize(d)?;
    Ok(methods.into_iter().map(|m| m.0).collect())
}

/// A mapping of header names to values, sorted by name as written, names lower-cased.
fn header_values<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    let headers = std::collections::BTreeMap::<String, String>::deserialize(d)?;
    Ok(headers
        .into_iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value))
        .collect())
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// The default key source (`ip` when not given).
    pub key: Option<KeySource>,
    /// Proxies whose forwarding header is believed.
    pub trusted_proxies: Vec<IpBlock>,
    /// The one header those proxies write the client's address in (default `X-Forwarded-For`).
    pub client_ip_header: ClientIpHeader,
    /// IPv6 client addresses are keyed by this many leading bits (default 64, at most 128), so
    /// that one client rotating through its /64 has one quota. IPv4 addresses are whole.
    pub ipv6_prefix: u8,
    /// Header families on responses.
    pub headers: HeaderFamilies,
    /// What `X-RateLimit-Reset` holds (default: epoch seconds).
    pub legacy_reset: LegacyReset,
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

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            key: None,
            trusted_proxies: Vec::new(),
            client_ip_header: ClientIpHeader::default(),
            ipv6_prefix: Self::DEFAULT_IPV6_PREFIX,
            headers: HeaderFamilies::default(),
            legacy_reset: LegacyReset::default(),
            on_missing_key: MissingKey::default(),
            shadow: false,
            allow_list: AllowList::default(),
            rules: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// Leading bits of an IPv6 address that make its key when `ipv6_prefix` is not given: a
    /// /64 is what one subscriber usually gets.
    pub const DEFAULT_IPV6_PREFIX: u8 = 64;

    /// The key source in force by default.
    pub fn default_key(&self) -> KeySource {
        self.key.clone().unwrap_or(KeySource::ClientIp)
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.ipv6_prefix > 128 {
            return Err(ConfigError::invalid(
                "rate_limiter.ipv6_prefix",
                "must be between 0 and 128 (bits of an IPv6 address)",
            ));
        }
        if let ClientIpHeader::Other(name) = &self.client_ip_header
            && !is_header_name(name)
        {
            return Err(ConfigError::invalid(
                "rate_limiter.client_ip_header",
                format!("`{name}` is not a header name"),
            ));
        }
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
                && let Err(e) = path.parse::<super::PathPattern>()
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
