//! Keys: what identifies the requester for rate limiting.
//!
//! A [`KeyExtractor`] turns a request into the identity it is limited by, or `None` when the
//! request carries none. Built in: the client IP ([`ClientIp`], behind trusted proxies) or the
//! socket peer's ([`PeerIp`]), a header ([`HeaderKey`]), a cookie ([`CookieKey`]), a value an
//! earlier layer left in the request's extensions ([`ExtensionKey`], such as an authenticated
//! user id), a path parameter ([`PathParam`]), and combinations ([`AllOf`], [`FirstOf`]). A
//! closure `Fn(&RequestInfo<'_>) -> Option<K>` is an extractor too.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::header::COOKIE;
use http::{Extensions, HeaderMap, HeaderName, Method, Request, Uri};
use ratelimit_core::{ClientIpHeader, HttpConfig, IpBlock, KeySource};

use crate::error::Error;
use crate::ip_text::{IP_TEXT_MAX, TextBuffer};
use crate::proxy::{ProxyError, TrustedProxies, canonical};

/// What an extractor sees of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions.
    pub extensions: &'a Extensions,
    /// The socket peer, when the server provided it.
    pub peer: Option<SocketAddr>,
}

impl<'a> RequestInfo<'a> {
    /// What an extractor sees of `request`, sent by `peer` (`None`: the server did not say).
    ///
    /// ```
    /// use ratelimit_tower::RequestInfo;
    ///
    /// let request = http::Request::get("/users/7").body(())?;
    /// let info = RequestInfo::new(&request, Some("192.0.2.1:4000".parse()?));
    /// assert_eq!(info.uri.path(), "/users/7");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new<B>(request: &'a Request<B>, peer: Option<SocketAddr>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
            peer,
        }
    }
}

/// Finds the identity a request is limited by.
///
/// Returning `None` means the key cannot be found; what happens then is configurable (see
/// [`MissingKey`](ratelimit_core::MissingKey)). Any bytes make a key: long or unusual
/// ones are hashed before they reach a backend.
///
/// A closure is an extractor:
///
/// ```
/// use ratelimit_tower::{KeyExtractor, RequestInfo};
///
/// // The first path segment, such as a tenant in `/acme/orders`.
/// let by_tenant = |r: &RequestInfo<'_>| r.uri.path().split('/').nth(1).map(str::to_owned);
/// # fn is_extractor(_: impl KeyExtractor) {}
/// is_extractor(by_tenant);
/// ```
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key of `request`, or `None`.
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>>;
}

impl fmt::Debug for dyn KeyExtractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyExtractor")
    }
}

impl<F, K> KeyExtractor for F
where
    F: Fn(&RequestInfo<'_>) -> Option<K> + Send + Sync + 'static,
    K: Into<Vec<u8>>,
{
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        self(request).map(Into::into).filter(|key| !key.is_empty())
    }
}

/// The key of an IP address: IPv4 whole (an IPv4-mapped IPv6 address is IPv4), IPv6 by its
/// first `ipv6_prefix` bits, written as the network (`2001:db8:1:2::/64`).
///
/// ```
/// use ratelimit_tower::ip_key;
/// assert_eq!(ip_key("2001:db8:1:2:aaaa::1".parse().unwrap(), 64), b"2001:db8:1:2::/64");
/// assert_eq!(ip_key("2001:db8:1:2:bbbb::9".parse().unwrap(), 64), b"2001:db8:1:2::/64");
/// assert_eq!(ip_key("2001:db8::1".parse().unwrap(), 128), b"2001:db8::1");
/// assert_eq!(ip_key("::ffff:192.0.2.7".parse().unwrap(), 64), b"192.0.2.7");
/// assert_eq!(ip_key("192.0.2.7".parse().unwrap(), 64), b"192.0.2.7");
/// ```
pub fn ip_key(ip: IpAddr, ipv6_prefix: u8) -> Vec<u8> {
    // Written on the stack, then copied once into a key of the exact length.
    let mut out = TextBuffer::<IP_KEY_MAX>::new();
    match canonical(ip) {
        IpAddr::V4(v4) => out.ipv4(v4),
        IpAddr::V6(v6) if ipv6_prefix >= 128 => out.ipv6(v6),
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix))
                .unwrap_or(0);
            out.ipv6(Ipv6Addr::from(u128::from(v6) & mask));
            out.push(b'/');
            out.decimal(u32::from(ipv6_prefix));
        }
    }
    out.as_bytes().to_vec()
}

/// Bytes an [`ip_key`] takes at most: a whole IPv6 address and a prefix length (`/128`).
const IP_KEY_MAX: usize = IP_TEXT_MAX + 4;

/// The socket peer's IP, ignoring every header; IPv6 peers by their `/64` (see
/// [`ipv6_prefix`](Self::ipv6_prefix)).
///
/// ```
/// use ratelimit_tower::PeerIp;
/// let whole_addresses = PeerIp::new().ipv6_prefix(128);
/// # drop(whole_addresses);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct PeerIp {
    ipv6_prefix: u8,
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerIp {
    /// The peer's IP; IPv6 by its /64.
    pub fn new() -> Self {
        Self {
            ipv6_prefix: HttpConfig::DEFAULT_IPV6_PREFIX,
        }
    }

    /// Keys IPv6 peers by their first `bits` bits (at most 128: the whole address).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }
}

impl KeyExtractor for PeerIp {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        request.peer.map(|p| ip_key(p.ip(), self.ipv6_prefix))
    }
}

/// The client IP: the peer, or, when the peer is a trusted proxy, what the one header it writes
/// says (see [`TrustedProxies`](crate::TrustedProxies)). IPv6 clients are keyed by their `/64`, so a client rotating
/// through its addresses has one quota.
///
/// ```
/// use ratelimit_core::{ClientIpHeader, IpBlock};
/// use ratelimit_tower::ClientIp;
///
/// let behind_cloudflare = ClientIp::new(["173.245.48.0/20".parse::<IpBlock>()?])
///     .header("cf-connecting-ip".parse::<ClientIpHeader>()?)
///     .ipv6_prefix(56);
/// # drop(behind_cloudflare);
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    proxies: TrustedProxies,
    ipv6_prefix: u8,
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new([])
    }
}

impl ClientIp {
    /// Believes `X-Forwarded-For` only from peers in `trusted`.
    pub fn new(trusted: impl IntoIterator<Item = IpBlock>) -> Self {
        Self {
            proxies: TrustedProxies::new(trusted),
            ipv6_prefix: HttpConfig::DEFAULT_IPV6_PREFIX,
        }
    }

    /// Trusted proxies, their header and the IPv6 prefix as `http` configures them.
    pub fn from_config(http: &HttpConfig) -> Self {
        Self {
            proxies: TrustedProxies::from_config(http),
            ipv6_prefix: http.ipv6_prefix.min(128),
        }
    }

    /// Reads `header`, the one the trusted proxies write, instead of `X-Forwarded-For`.
    pub fn header(mut self, header: ClientIpHeader) -> Self {
        self.proxies = self.proxies.with_header(header);
        self
    }

    /// Keys IPv6 clients by their first `bits` bits (at most 128: the whole address).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.min(128);
        self
    }

    /// The trusted proxies and their header.
    pub fn proxies(&self) -> &TrustedProxies {
        &self.proxies
    }

    /// The leading bits an IPv6 key keeps.
    pub fn ipv6_prefix_len(&self) -> u8 {
        self.ipv6_prefix
    }

    /// The client's whole address (what allow-lists match), or why it is unknown; `Ok(None)`
    /// when the server gave no peer address.
    pub fn address(&self, request: &RequestInfo<'_>) -> Result<Option<IpAddr>, ProxyError> {
        match request.peer {
            Some(peer) => self.proxies.client_ip(peer, request.headers).map(Some),
            None => Ok(None),
        }
    }
}

impl KeyExtractor for ClientIp {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        match self.address(request) {
            Ok(ip) => ip.map(|ip| ip_key(ip, self.ipv6_prefix)),
            Err(e) => {
                tracing::debug!(error = %e, "client IP unknown: forwarding header refused");
                None
            }
        }
    }
}

/// A header's value, such as an API key. Any bytes are accepted; long or unusual values are
/// hashed before they reach a key.
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// The value of header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self { name }
    }
}

impl KeyExtractor for HeaderKey {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        let value = request.headers.get(&self.name)?.as_bytes();
        (!value.is_empty()).then(|| value.to_vec())
    }
}

/// A cookie's value, such as a session id: the first cookie of that name (case-sensitive) in
/// the `Cookie` headers, as sent.
///
/// ```
/// use ratelimit_tower::{CookieKey, KeyExtractor, RequestInfo};
///
/// let request = http::Request::get("/").header("cookie", "theme=dark; session=abc123").body(())?;
/// let info = RequestInfo::new(&request, None);
/// assert_eq!(CookieKey::new("session").extract(&info), Some(b"abc123".to_vec()));
/// assert_eq!(CookieKey::new("Session").extract(&info), None);
/// # Ok::<(), http::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct CookieKey {
    name: Box<[u8]>,
}

impl CookieKey {
    /// The value of cookie `name`.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self {
            name: name.as_ref().trim().as_bytes().into(),
        }
    }
}

impl KeyExtractor for CookieKey {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        request.headers.get_all(COOKIE).iter().find_map(|line| {
            line.as_bytes().split(|&b| b == b';').find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&b| b == b'=')?;
                let value = pair[eq + 1..].trim_ascii();
                (pair[..eq].trim_ascii() == &*self.name && !value.is_empty())
                    .then(|| value.to_vec())
            })
        })
    }
}

/// A value an earlier layer left in the request's extensions, such as the authenticated user:
/// `key` turns the `T` found there into the key.
///
/// ```
/// use ratelimit_tower::ExtensionKey;
///
/// /// Set by an authentication layer in front of the rate limiter.
/// #[derive(Clone)]
/// struct UserId(u64);
///
/// let by_user = ExtensionKey::new(|user: &UserId| format!("user:{}", user.0));
/// # drop(by_user);
/// ```
pub struct ExtensionKey<T, F> {
    key: F,
    _type: PhantomData<fn(&T)>,
}

impl<T, F> ExtensionKey<T, F> {
    /// The key `key` makes of the request's `T` extension (no `T`: no key).
    pub fn new<K>(key: F) -> Self
    where
        F: Fn(&T) -> K,
    {
        Self {
            key,
            _type: PhantomData,
        }
    }
}

impl<T, F: Clone> Clone for ExtensionKey<T, F> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            _type: PhantomData,
        }
    }
}

impl<T, F> fmt::Debug for ExtensionKey<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExtensionKey<{}>", std::any::type_name::<T>())
    }
}

impl<T, F, K> KeyExtractor for ExtensionKey<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> K + Send + Sync + 'static,
    K: Into<Vec<u8>>,
{
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        let value = request.extensions.get::<T>()?;
        let key: Vec<u8> = (self.key)(value).into();
        (!key.is_empty()).then_some(key)
    }
}

/// A parameter of the request path, matched against a pattern written the way axum writes
/// routes: `{name}` is one segment, a final `{*name}` the rest of the path. The value is
/// percent-decoded, so `/users/%41` and `/users/A` are the same key. A path that does not fit
/// the pattern has no key.
///
/// (Behind axum, `ratelimit-axum`'s `MatchedPathParam` reads the pattern of the route that
/// matched instead, so one layer serves every route.)
///
/// ```
/// use ratelimit_tower::{KeyExtractor, PathParam, RequestInfo};
///
/// let by_user = PathParam::new("/users/{id}/posts", "id")?;
/// let request = http::Request::get("/users/%41lice/posts").body(())?;
/// assert_eq!(by_user.extract(&RequestInfo::new(&request, None)), Some(b"Alice".to_vec()));
/// assert!(PathParam::new("/users/{id}", "name").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct PathParam {
    pattern: Box<str>,
    name: Box<str>,
}

impl PathParam {
    /// Parameter `name` of paths matching `pattern`; refused when `pattern` has no `{name}` or
    /// `{*name}` segment.
    pub fn new(pattern: &str, name: &str) -> Result<Self, Error> {
        let mut segments = split_path(pattern).peekable();
        let mut found = false;
        while let Some(segment) = segments.next() {
            match param_name(segment) {
                Some((param, true)) if segments.peek().is_some() => {
                    return Err(Error::PathPattern {
                        pattern: pattern.to_owned(),
                        reason: format!("`{{*{param}}}` must be the last segment"),
                    });
                }
                Some((param, _)) if param == name => found = true,
                _ => {}
            }
        }
        if !found {
            return Err(Error::PathPattern {
                pattern: pattern.to_owned(),
                reason: format!("it has no `{{{name}}}` segment"),
            });
        }
        Ok(Self {
            pattern: pattern.into(),
            name: name.into(),
        })
    }
}

impl KeyExtractor for PathParam {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        path_param(&self.pattern, request.uri.path(), &self.name)
    }
}

/// The value of parameter `name` when `path` matches `pattern` (`{name}`, final `{*name}`),
/// percent-decoded; `None` when it does not match, or the value is empty.
///
/// ```
/// use ratelimit_tower::path_param;
/// assert_eq!(path_param("/t/{tenant}/x", "/t/acme/x", "tenant"), Some(b"acme".to_vec()));
/// assert_eq!(path_param("/files/{*path}", "/files/a/b%20c", "path"), Some(b"a/b c".to_vec()));
/// assert_eq!(path_param("/t/{tenant}/x", "/t/acme/y", "tenant"), None);
/// ```
pub fn path_param(pattern: &str, path: &str, name: &str) -> Option<Vec<u8>> {
    let mut parts = split_path(path);
    let mut rest_of = path.strip_prefix('/').unwrap_or(path);
    let mut value = None;
    for segment in split_path(pattern) {
        match param_name(segment) {
            Some((param, true)) => {
                // The rest of the path, whatever its segments.
                let rest = rest_of.strip_suffix('/').unwrap_or(rest_of);
                if param == name {
                    value = Some(rest);
                }
                return value.map(percent_decode).filter(|v| !v.is_empty());
            }
            Some((param, false)) => {
                let part = parts.next()?;
                if part.is_empty() {
                    return None;
                }
                if param == name {
                    value = Some(part);
                }
                rest_of = rest_of.get(part.len() + 1..).unwrap_or("");
            }
            None => {
                let part = parts.next()?;
                if part != segment {
                    return None;
                }
                rest_of = rest_of.get(part.len() + 1..).unwrap_or("");
            }
        }
    }
    if parts.next().is_some() {
        return None;
    }
    value.map(percent_decode).filter(|v| !v.is_empty())
}

/// The segments of a path, without the leading slash and one trailing slash.
fn split_path(path: &str) -> std::str::Split<'_, char> {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.strip_suffix('/').unwrap_or(path).split('/')
}

/// `{name}` → (`name`, false); `{*name}` → (`name`, true); a literal → `None`.
fn param_name(segment: &str) -> Option<(&str, bool)> {
    let inner = segment.strip_prefix('{')?.strip_suffix('}')?;
    match inner.strip_prefix('*') {
        Some(rest) => Some((rest, true)),
        None => Some((inner, false)),
    }
}

/// `%XX` sequences decoded; anything else, including a malformed `%`, kept as it is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(&high), Some(&low)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(high), Some(low)) = (hex(high), hex(low))
        {
            // Two hex digits are at most 0xFF.
            out.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Several extractors joined with `+`; the key exists when every part does. `+` and `%` inside
/// a part are percent-encoded, so parts cannot run into each other.
#[derive(Debug, Clone)]
pub struct AllOf(pub Vec<Arc<dyn KeyExtractor>>);

impl KeyExtractor for AllOf {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        let mut key = Vec::new();
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                key.push(b'+');
            }
            for byte in part.extract(request)? {
                match byte {
                    b'+' => key.extend_from_slice(b"%2B"),
                    b'%' => key.extend_from_slice(b"%25"),
                    b => key.push(b),
                }
            }
        }
        Some(key)
    }
}

/// The first extractor that finds a key.
#[derive(Debug, Clone)]
pub struct FirstOf(pub Vec<Arc<dyn KeyExtractor>>);

impl KeyExtractor for FirstOf {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        self.0.iter().find_map(|part| part.extract(request))
    }
}

/// The extractor a configured [`KeySource`] describes; IP sources find the client as
/// `client_ip` does (its trusted proxies, header and IPv6 prefix).
pub fn from_source(source: &KeySource, client_ip: &ClientIp) -> Arc<dyn KeyExtractor> {
    match source {
        KeySource::ClientIp => Arc::new(client_ip.clone()),
        KeySource::PeerIp => Arc::new(PeerIp::new().ipv6_prefix(client_ip.ipv6_prefix)),
        KeySource::Header(name) => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => Arc::new(HeaderKey::new(name)),
            // Validated when the configuration was read; an impossible name finds nothing.
            Err(_) => Arc::new(|_: &RequestInfo<'_>| None::<Vec<u8>>),
        },
        KeySource::Cookie(name) => Arc::new(CookieKey::new(name)),
        KeySource::All(parts) => Arc::new(AllOf(
            parts.iter().map(|p| from_source(p, client_ip)).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::TestRequest;

    fn get(uri: &str) -> TestRequest {
        TestRequest::new("GET", uri)
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let r = get("/")
            .header("cookie", "a=1; session=; sid=first")
            .header("cookie", "sid=second");
        assert_eq!(r.key(&CookieKey::new("sid")).as_deref(), Some("first"));
        assert_eq!(r.key(&CookieKey::new("a")).as_deref(), Some("1"));
        assert_eq!(r.key(&CookieKey::new("session")), None, "empty is no key");
        assert_eq!(r.key(&CookieKey::new("SID")), None);
        assert_eq!(get("/").key(&CookieKey::new("sid")), None);
        let odd = get("/").header("cookie", "junk;=x; ;sid = v ");
        assert_eq!(odd.key(&CookieKey::new("sid")).as_deref(), Some("v"));
    }

    #[test]
    fn extension_keys_read_what_an_earlier_layer_left() {
        #[derive(Clone)]
        struct UserId(u64);
        let key = ExtensionKey::new(|user: &UserId| format!("user:{}", user.0));
        let r = get("/");
        assert_eq!(r.key(&key), None);
        let r = r.extension(UserId(7));
        assert_eq!(r.key(&key).as_deref(), Some("user:7"));
        assert!(format!("{key:?}").contains("UserId"));
    }

    #[test]
    fn path_params() {
        let table: &[(&str, &str, &str, Option<&str>)] = &[
            ("/users/{id}", "/users/7", "id", Some("7")),
            ("/users/{id}", "/users/7/", "id", Some("7")),
            ("/users/{id}", "/users/%37", "id", Some("7")),
            ("/users/{id}", "/users/a%2Fb", "id", Some("a/b")),
            ("/users/{id}", "/users/%zz", "id", Some("%zz")),
            ("/users/{id}", "/users", "id", None),
            ("/users/{id}", "/users//", "id", None),
            ("/users/{id}", "/users/7/posts", "id", None),
            ("/users/{id}", "/people/7", "id", None),
            ("/t/{tenant}/u/{id}", "/t/acme/u/9", "tenant", Some("acme")),
            ("/t/{tenant}/u/{id}", "/t/acme/u/9", "id", Some("9")),
            ("/files/{*path}", "/files/a/b/c", "path", Some("a/b/c")),
            ("/files/{*path}", "/files", "path", None),
            ("/{t}/files/{*path}", "/x/files/a", "t", Some("x")),
        ];
        for &(pattern, path, name, expected) in table {
            let got = path_param(pattern, path, name);
            let got = got
                .as_deref()
                .map(|v| String::from_utf8_lossy(v).into_owned());
            assert_eq!(got.as_deref(), expected, "{pattern} {path} {name}");
        }
        assert!(PathParam::new("/files/{*rest}/x", "rest").is_err());
        assert!(PathParam::new("/users/{id}", "id").is_ok());
    }

    #[test]
    fn closures_are_extractors() {
        let first_segment = |r: &RequestInfo<'_>| r.uri.path().split('/').nth(1).map(str::to_owned);
        assert_eq!(get("/acme/x").key(&first_segment).as_deref(), Some("acme"));
        assert_eq!(get("/").key(&first_segment), None, "empty is no key");
        let extractors: Vec<Arc<dyn KeyExtractor>> = vec![
            Arc::new(first_segment),
            Arc::new(HeaderKey::new(HeaderName::from_static("x-k"))),
        ];
        let r = get("/acme").header("x-k", "a+b");
        assert_eq!(r.key(&AllOf(extractors)).as_deref(), Some("acme+a%2Bb"));
    }

    #[test]
    fn ipv6_peers_are_keyed_by_prefix() {
        let r = get("/").peer(Some("[2001:db8:aa:bb:1:2:3:4]:80"));
        assert_eq!(
            r.key(&PeerIp::new()).as_deref(),
            Some("2001:db8:aa:bb::/64")
        );
        assert_eq!(
            r.key(&PeerIp::new().ipv6_prefix(48)).as_deref(),
            Some("2001:db8:aa::/48")
        );
        assert_eq!(
            r.key(&PeerIp::new().ipv6_prefix(200)).as_deref(),
            Some("2001:db8:aa:bb:1:2:3:4")
        );
        assert_eq!(
            r.key(&PeerIp::new().ipv6_prefix(0)).as_deref(),
            Some("::/0")
        );
        let r = r.peer(Some("[::ffff:192.0.2.1]:80"));
        assert_eq!(r.key(&PeerIp::new()).as_deref(), Some("192.0.2.1"));
        assert_eq!(r.key(&ClientIp::default()).as_deref(), Some("192.0.2.1"));
    }
}
