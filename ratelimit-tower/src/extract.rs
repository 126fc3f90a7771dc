//! Keys: what identifies the requester for rate limiting.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Extensions, HeaderMap, HeaderName, Method, Uri};
use ratelimit_core::config::{IpBlock, KeySource};

use crate::proxy::client_ip;

/// The socket peer of a request, as an extension. Servers that know it insert it (axum's
/// `ConnectInfo` is read by ratelimit-axum; a plain hyper server inserts this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

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

/// Finds the identity a request is limited by.
///
/// Returning `None` means the key cannot be found; what happens then is configurable (see
/// [`MissingKey`](ratelimit_core::config::MissingKey)).
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key of `request`, or `None`.
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>>;
}

impl fmt::Debug for dyn KeyExtractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyExtractor")
    }
}

/// The socket peer's IP, ignoring every header.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIp;

impl KeyExtractor for PeerIp {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        request.peer.map(|p| p.ip().to_string().into_bytes())
    }
}

/// The client IP: the peer, or what trusted proxies say it is (see [`crate::proxy`]).
///
/// ```
/// use ratelimit_core::config::IpBlock;
/// use ratelimit_tower::ClientIp;
/// let extractor = ClientIp::new([IpBlock::parse("10.0.0.0/8").unwrap()]);
/// # drop(extractor);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientIp {
    trusted: Arc<[IpBlock]>,
}

impl ClientIp {
    /// Believes forwarding headers only from peers in `trusted`.
    pub fn new(trusted: impl IntoIterator<Item = IpBlock>) -> Self {
        Self {
            trusted: trusted.into_iter().collect(),
        }
    }
}

impl KeyExtractor for ClientIp {
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        let peer = request.peer?;
        match client_ip(peer, request.headers, &self.trusted) {
            Ok(ip) => Some(ip.to_string().into_bytes()),
            Err(e) => {
                tracing::debug!(?e, "client IP unknown: forwarding header refused");
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

/// A closure as an extractor.
///
/// ```
/// use ratelimit_tower::{FnKey, RequestInfo};
/// let by_path = FnKey(|r: &RequestInfo<'_>| Some(r.uri.path().as_bytes().to_vec()));
/// # drop(by_path);
/// ```
#[derive(Clone)]
pub struct FnKey<F>(pub F);

impl<F> fmt::Debug for FnKey<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnKey")
    }
}

impl<F> KeyExtractor for FnKey<F>
where
    F: Fn(&RequestInfo<'_>) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    fn extract(&self, request: &RequestInfo<'_>) -> Option<Vec<u8>> {
        (self.0)(request)
    }
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

/// The extractor a configured [`KeySource`] describes.
pub fn from_source(source: &KeySource, trusted: &[IpBlock]) -> Arc<dyn KeyExtractor> {
    match source {
        KeySource::ClientIp => Arc::new(ClientIp::new(trusted.iter().copied())),
        KeySource::PeerIp => Arc::new(PeerIp),
        KeySource::Header(name) => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => Arc::new(HeaderKey::new(name)),
            // Validated when the configuration was read; an impossible name finds nothing.
            Err(_) => Arc::new(FnKey(|_: &RequestInfo<'_>| None)),
        },
        KeySource::All(parts) => Arc::new(AllOf(
            parts.iter().map(|p| from_source(p, trusted)).collect(),
        )),
    }
}
