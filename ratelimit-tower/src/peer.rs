//! The socket peer: how the server tells the layer who sent a request.
//!
//! Keys made of the client IP start from the peer's address, which only the server knows. A
//! hyper server inserts [`PeerAddr`] into each request's extensions; axum's
//! `ConnectInfo<SocketAddr>` is read too (feature `axum`). Where it is found is a
//! [`PeerLookup`], [`peer_from_extension`] by default.

use std::net::SocketAddr;

use http::Extensions;

/// The socket peer of a request, as an extension. Servers that know it insert it: a plain
/// hyper server inserts this; under axum, serve the app with
/// `into_make_service_with_connect_info::<SocketAddr>()` and the layer reads axum's
/// `ConnectInfo` (with this crate's `axum` feature, which `ratelimit-axum` turns on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Finds the socket peer in a request's extensions.
pub type PeerLookup = fn(&Extensions) -> Option<SocketAddr>;

/// Reads [`PeerAddr`], and with the `axum` feature axum's `ConnectInfo<SocketAddr>` (what
/// `into_make_service_with_connect_info::<SocketAddr>()` inserts) and `MockConnectInfo<SocketAddr>`
/// (what tests add with `Router::layer(MockConnectInfo(addr))`), in that order.
///
/// ```
/// use ratelimit_tower::PeerAddr;
/// use ratelimit_tower::peer_from_extension;
///
/// let mut extensions = http::Extensions::new();
/// assert_eq!(peer_from_extension(&extensions), None);
/// let peer = "192.0.2.1:4000".parse()?;
/// extensions.insert(PeerAddr(peer));
/// assert_eq!(peer_from_extension(&extensions), Some(peer));
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
pub fn peer_from_extension(extensions: &Extensions) -> Option<SocketAddr> {
    if let Some(peer) = extensions.get::<PeerAddr>() {
        return Some(peer.0);
    }
    #[cfg(feature = "axum")]
    {
        use axum::extract::ConnectInfo;
        use axum::extract::connect_info::MockConnectInfo;
        if let Some(info) = extensions.get::<ConnectInfo<SocketAddr>>() {
            return Some(info.0);
        }
        if let Some(mock) = extensions.get::<MockConnectInfo<SocketAddr>>() {
            return Some(mock.0);
        }
    }
    None
}
