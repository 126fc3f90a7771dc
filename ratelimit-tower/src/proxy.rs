//! The client IP behind trusted proxies.
//!
//! Forwarding headers are believed only when the socket peer is a trusted proxy, and then read
//! right to left: each entry was appended by the hop after it, so the rightmost entry that is
//! not itself a trusted proxy is the client. Anything to its left was written by the client and
//! proves nothing. The leftmost entry is never trusted just for being first.
//!
//! `Forwarded` (RFC 7239) wins over `X-Forwarded-For`, which wins over `X-Real-IP`.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::FORWARDED;
use ratelimit_core::config::IpBlock;

/// Hops examined at most; a longer chain of trusted proxies is treated as malformed.
const MAX_HOPS: usize = 32;

/// Why the client IP could not be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// A forwarding header from a trusted proxy could not be parsed.
    Malformed(&'static str),
    /// The client is hidden (`for=unknown`, an obfuscated identifier).
    Hidden,
}

/// The client IP for a request from `peer` carrying `headers`.
///
/// ```
/// use ratelimit_core::config::IpBlock;
/// use ratelimit_tower::proxy::client_ip;
/// let trusted = [IpBlock::parse("10.0.0.0/8").unwrap()];
/// let mut headers = http::HeaderMap::new();
/// headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2".parse().unwrap());
/// // From a trusted proxy: the rightmost untrusted entry.
/// let via_proxy = client_ip("10.0.0.1:5000".parse().unwrap(), &headers, &trusted);
/// assert_eq!(via_proxy, Ok("203.0.113.9".parse().unwrap()));
/// // From anyone else: the header is ignored.
/// let direct = client_ip("198.51.100.7:5000".parse().unwrap(), &headers, &trusted);
/// assert_eq!(direct, Ok("198.51.100.7".parse().unwrap()));
/// ```
pub fn client_ip(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[IpBlock],
) -> Result<IpAddr, ProxyError> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|block| block.contains(ip));
    let peer_ip = canonical(peer.ip());
    if !is_trusted(peer_ip) {
        return Ok(peer_ip);
    }
    let hops: Vec<Result<IpAddr, ProxyError>> = if headers.contains_key(FORWARDED) {
        forwarded_hops(headers)?
    } else if headers.contains_key("x-forwarded-for") {
        list_hops(headers, "x-forwarded-for")?
    } else if headers.contains_key("x-real-ip") {
        list_hops(headers, "x-real-ip")?
    } else {
        return Ok(peer_ip);
    };
    let mut client = peer_ip;
    for hop in hops {
        let ip = canonical(hop?);
        client = ip;
        if !is_trusted(ip) {
            return Ok(ip);
        }
    }
    // Every hop is a trusted proxy: the leftmost one is as far as the chain goes.
    Ok(client)
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Comma-separated entries of every instance of `name`, rightmost first, at most `MAX_HOPS`.
fn list_hops(
    headers: &HeaderMap,
    name: &str,
) -> Result<Vec<Result<IpAddr, ProxyError>>, ProxyError> {
    let mut hops = Vec::new();
    for value in headers.get_all(name).iter().rev() {
        let text = value
            .to_str()
            .map_err(|_| ProxyError::Malformed("forwarding header is not visible ASCII"))?;
        for entry in text.rsplit(',') {
            if hops.len() == MAX_HOPS {
                return Err(ProxyError::Malformed("too many forwarding hops"));
            }
            hops.push(parse_node(entry.trim()));
        }
    }
    Ok(hops)
}

/// `for=` parameters of every `Forwarded` element, rightmost first.
fn forwarded_hops(headers: &HeaderMap) -> Result<Vec<Result<IpAddr, ProxyError>>, ProxyError> {
    let mut hops = Vec::new();
    for value in headers.get_all(FORWARDED).iter().rev() {
        let text = value
            .to_str()
            .map_err(|_| ProxyError::Malformed("Forwarded is not visible ASCII"))?;
        for element in text.rsplit(',') {
            if hops.len() == MAX_HOPS {
                return Err(ProxyError::Malformed("too many forwarding hops"));
            }
            let mut node = None;
            for pair in element.split(';') {
                let pair = pair.trim();
                if pair.is_empty() {
                    continue;
                }
                let (name, value) = pair
                    .split_once('=')
                    .ok_or(ProxyError::Malformed("Forwarded pair without `=`"))?;
                if name.trim().eq_ignore_ascii_case("for") {
                    node = Some(value.trim());
                }
            }
            let node = node.ok_or(ProxyError::Malformed("Forwarded element without `for=`"))?;
            let node = match node.strip_prefix('"') {
                Some(quoted) => quoted.strip_suffix('"').ok_or(ProxyError::Malformed(
                    "unterminated quoted string in Forwarded",
                ))?,
                None => node,
            };
            hops.push(parse_node(node));
        }
    }
    Ok(hops)
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80`,
/// a bare IPv6 address, or `unknown` / `_obfuscated`.
fn parse_node(node: &str) -> Result<IpAddr, ProxyError> {
    if node.eq_ignore_ascii_case("unknown") || node.starts_with('_') {
        return Err(ProxyError::Hidden);
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Ok(ip);
    }
    if let Ok(socket) = node.parse::<SocketAddr>() {
        return Ok(socket.ip());
    }
    if let Some(inner) = node.strip_prefix('[').and_then(|n| n.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<IpAddr>()
    {
        return Ok(ip);
    }
    Err(ProxyError::Malformed("forwarded address is not an IP"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> Vec<IpBlock> {
        ["10.0.0.0/8", "::1"]
            .iter()
            .filter_map(|b| IpBlock::parse(b).ok())
            .collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = value.parse() {
                map.append(*name, value);
            }
        }
        map
    }

    const PROXY: &str = "10.0.0.1:443";

    #[test]
    fn forwarded_is_read_right_to_left() {
        let h = headers(&[(
            "forwarded",
            r#"for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, for=10.1.1.1"#,
        )]);
        let ip = client_ip(PROXY.parse().expect("addr"), &h, &trusted());
        assert_eq!(ip, Ok("2001:db8::7".parse().expect("ip")));
    }

    #[test]
    fn multiple_header_lines_form_one_list() {
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.1, 10.2.2.2"),
        ]);
        let ip = client_ip(PROXY.parse().expect("addr"), &h, &trusted());
        assert_eq!(ip, Ok("203.0.113.1".parse().expect("ip")));
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_x_real_ip() {
        let h = headers(&[
            ("x-real-ip", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("forwarded", "for=3.3.3.3"),
        ]);
        let ip = client_ip(PROXY.parse().expect("addr"), &h, &trusted());
        assert_eq!(ip, Ok("3.3.3.3".parse().expect("ip")));
        let h = headers(&[("x-real-ip", "1.1.1.1")]);
        let ip = client_ip(PROXY.parse().expect("addr"), &h, &trusted());
        assert_eq!(ip, Ok("1.1.1.1".parse().expect("ip")));
    }

    #[test]
    fn malformed_and_hidden_entries_are_errors_not_guesses() {
        for bad in ["for", "for=\"1.2.3.4", "proto=https", "for=banana"] {
            let h = headers(&[("forwarded", bad)]);
            let got = client_ip(PROXY.parse().expect("addr"), &h, &trusted());
            assert!(
                matches!(got, Err(ProxyError::Malformed(_))),
                "{bad}: {got:?}"
            );
        }
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(
            client_ip(PROXY.parse().expect("addr"), &h, &trusted()),
            Err(ProxyError::Hidden)
        );
        let long = vec!["10.0.0.9"; 100].join(",");
        let h = headers(&[("x-forwarded-for", long.as_str())]);
        assert!(client_ip(PROXY.parse().expect("addr"), &h, &trusted()).is_err());
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        let ip = client_ip(PROXY.parse().expect("addr"), &h, &trusted());
        assert_eq!(ip, Ok("10.9.9.9".parse().expect("ip")));
    }

    #[test]
    fn ipv4_mapped_peers_are_matched_as_ipv4() {
        let h = headers(&[("x-forwarded-for", "198.51.100.1")]);
        let peer: SocketAddr = "[::ffff:10.0.0.1]:80".parse().expect("addr");
        assert_eq!(
            client_ip(peer, &h, &trusted()),
            Ok("198.51.100.1".parse().expect("ip"))
        );
    }
}
