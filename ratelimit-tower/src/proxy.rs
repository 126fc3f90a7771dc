//! The client IP behind trusted proxies.
//!
//! The socket peer is the client unless it is a trusted proxy. Then exactly one header is
//! believed, the one the proxies write ([`ClientIpHeader`], `X-Forwarded-For` by default); every
//! other forwarding header is ignored, since a proxy that appends to `X-Forwarded-For` passes a
//! client's own `Forwarded` or `X-Real-IP` through untouched.
//!
//! The header is read right to left: each entry was appended by the hop after it, so the
//! rightmost entry that is not itself a trusted proxy is the client, and the walk stops there.
//! What lies to its left was written by the client and proves nothing: it is neither parsed nor
//! able to fail the request (garbage, `unknown`, `_hidden`, non-ASCII bytes, a `Forwarded`
//! element without `for=`, thousands of hops). Repeated header lines are one list, in order. At
//! most [`MAX_HOPS`] entries are examined, so a hostile header costs bounded work and no
//! allocation.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use ratelimit_core::{ClientIpHeader, HttpConfig, IpBlock};

/// Entries examined at most, from the right. A chain of more trusted proxies than this ends at
/// the last one examined.
pub const MAX_HOPS: usize = 32;

/// Why the client IP could not be found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The entry a trusted proxy wrote for the client is not an address.
    #[error("the forwarding header from a trusted proxy is malformed: {0}")]
    Malformed(&'static str),
    /// A trusted proxy hid the client (`for=unknown`, an obfuscated `_identifier`).
    #[error("a trusted proxy hid the client's address")]
    Hidden,
}

/// Where the client's address comes from: the socket peer, or, when the peer is a trusted
/// proxy, the one header the proxies write.
///
/// ```
/// use ratelimit_core::{ClientIpHeader, IpBlock};
/// use ratelimit_tower::TrustedProxies;
///
/// let proxies = TrustedProxies::new(["10.0.0.0/8".parse::<IpBlock>()?]);
/// let mut headers = http::HeaderMap::new();
/// headers.insert("x-forwarded-for", "not-an-ip, 203.0.113.9, 10.0.0.2".parse().unwrap());
/// headers.insert("forwarded", "for=198.51.100.66".parse().unwrap());
/// // From a trusted proxy: the rightmost untrusted entry of X-Forwarded-For; Forwarded is not
/// // the header these proxies write, so it is ignored.
/// let via_proxy = proxies.client_ip("10.0.0.1:5000".parse().unwrap(), &headers);
/// assert_eq!(via_proxy, Ok("203.0.113.9".parse().unwrap()));
/// // From anyone else: every header is ignored.
/// let direct = proxies.client_ip("198.51.100.7:5000".parse().unwrap(), &headers);
/// assert_eq!(direct, Ok("198.51.100.7".parse().unwrap()));
/// // Proxies that write Forwarded instead.
/// let forwarded = proxies.with_header(ClientIpHeader::Forwarded);
/// let ip = forwarded.client_ip("10.0.0.1:5000".parse().unwrap(), &headers);
/// assert_eq!(ip, Ok("198.51.100.66".parse().unwrap()));
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    trusted: Arc<[IpBlock]>,
    header: HeaderName,
    syntax: Syntax,
}

/// How the header lists addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    /// Comma-separated addresses (`X-Forwarded-For`, and a single-address header as a list of
    /// one).
    List,
    /// RFC 7239 elements, the address in `for=`.
    Forwarded,
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self::new([])
    }
}

impl TrustedProxies {
    /// Believes `X-Forwarded-For` from peers in `trusted` (nothing when it is empty).
    pub fn new(trusted: impl IntoIterator<Item = IpBlock>) -> Self {
        Self {
            trusted: trusted.into_iter().collect(),
            header: http::header::HeaderName::from_static("x-forwarded-for"),
            syntax: Syntax::List,
        }
    }

    /// The trusted proxies and their header as `http` configures them.
    pub fn from_config(http: &HttpConfig) -> Self {
        Self::new(http.trusted_proxies.iter().copied()).with_header(http.client_ip_header.clone())
    }

    /// Reads `header` instead: the one the trusted proxies write.
    ///
    /// A name that is not a valid header name (only possible for a
    /// [`ClientIpHeader::Other`] built in code, since configuration files are validated)
    /// matches no header, so the peer stays the client.
    pub fn with_header(mut self, header: ClientIpHeader) -> Self {
        let name = header.name().to_ascii_lowercase();
        self.syntax = if name == "forwarded" {
            Syntax::Forwarded
        } else {
            Syntax::List
        };
        self.header = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|_| HeaderName::from_static("x-ratelimit-invalid-client-ip-header"));
        self
    }

    /// The header believed.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Whether `ip` is a trusted proxy (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|block| block.contains(ip))
    }

    /// The client's full address (no prefix applied) for a request from `peer` carrying
    /// `headers`. IPv4-mapped IPv6 addresses are returned as IPv4.
    ///
    /// An error only when the entry a trusted proxy wrote for the client is not an address
    /// (or hides it); nothing further left can cause one.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<IpAddr, ProxyError> {
        let peer_ip = canonical(peer.ip());
        if !self.is_trusted(peer_ip) {
            return Ok(peer_ip);
        }
        let mut client = peer_ip;
        for entry in Entries::new(headers.get_all(&self.header).iter().rev()).take(MAX_HOPS) {
            let node = match self.syntax {
                Syntax::List => entry,
                Syntax::Forwarded => forwarded_for(entry)?,
            };
            let NodeAddr(ip) = std::str::from_utf8(node)
                .map_err(|_| ProxyError::Malformed("forwarded address is not ASCII"))?
                .parse()?;
            let ip = canonical(ip);
            client = ip;
            if !self.is_trusted(ip) {
                return Ok(ip);
            }
        }
        // Every hop examined is a trusted proxy: the leftmost of them is as far as the chain
        // goes (a client inside the trusted range, or a header the proxies did not write).
        Ok(client)
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) to IPv4.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The comma-separated entries of header lines, rightmost first, trimmed (an empty entry is
/// an entry, and not an address). Lazy: an entry is only looked at when asked for, so what lies
/// left of the client is never read, let alone decoded.
struct Entries<'a, I> {
    lines: I,
    /// What is left of the line being read.
    current: Option<&'a [u8]>,
}

impl<'a, I> Entries<'a, I>
where
    I: Iterator<Item = &'a HeaderValue>,
{
    fn new(lines: I) -> Self {
        Self {
            lines,
            current: None,
        }
    }
}

impl<'a, I> Iterator for Entries<'a, I>
where
    I: Iterator<Item = &'a HeaderValue>,
{
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let line = match self.current.take() {
            Some(rest) => rest,
            None => self.lines.next()?.as_bytes(),
        };
        let entry = match line.iter().rposition(|&b| b == b',') {
            Some(comma) => {
                self.current = Some(&line[..comma]);
                &line[comma + 1..]
            }
            None => line,
        };
        Some(entry.trim_ascii())
    }
}

/// The `for=` value of one `Forwarded` element, unquoted.
fn forwarded_for(element: &[u8]) -> Result<&[u8], ProxyError> {
    let mut node = None;
    for pair in element.split(|&b| b == b';') {
        let pair = pair.trim_ascii();
        if pair.is_empty() {
            continue;
        }
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return Err(ProxyError::Malformed("Forwarded pair without `=`"));
        };
        if pair[..eq].trim_ascii().eq_ignore_ascii_case(b"for") {
            node = Some(pair[eq + 1..].trim_ascii());
        }
    }
    let node = node.ok_or(ProxyError::Malformed("Forwarded element without `for=`"))?;
    match node.strip_prefix(b"\"") {
        Some(quoted) => quoted.strip_suffix(b"\"").ok_or(ProxyError::Malformed(
            "unterminated quoted string in Forwarded",
        )),
        None => Ok(node),
    }
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:80`,
/// a bare IPv6 address; `unknown` or an `_obfuscated` identifier hides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeAddr(IpAddr);

impl FromStr for NodeAddr {
    type Err = ProxyError;

    fn from_str(node: &str) -> Result<Self, ProxyError> {
        if node.eq_ignore_ascii_case("unknown") || node.starts_with('_') {
            return Err(ProxyError::Hidden);
        }
        // The longest address form is a bracketed IPv6 address with a port: 47 bytes, plus a
        // zone is never written by proxies. Anything longer is not an address, and is not
        // parsed.
        if node.len() > 64 {
            return Err(ProxyError::Malformed("forwarded address is not an IP"));
        }
        if let Ok(ip) = node.parse::<IpAddr>() {
            return Ok(Self(ip));
        }
        if let Ok(socket) = node.parse::<SocketAddr>() {
            return Ok(Self(socket.ip()));
        }
        if let Some(inner) = node.strip_prefix('[').and_then(|n| n.strip_suffix(']'))
            && let Ok(ip) = inner.parse::<IpAddr>()
        {
            return Ok(Self(ip));
        }
        Err(ProxyError::Malformed("forwarded address is not an IP"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(header: ClientIpHeader) -> TrustedProxies {
        TrustedProxies::new(
            ["10.0.0.0/8", "::1"]
                .iter()
                .filter_map(|b| b.parse::<IpBlock>().ok()),
        )
        .with_header(header)
    }

    fn xff() -> TrustedProxies {
        proxies(ClientIpHeader::XForwardedFor)
    }

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                map.append(*name, value);
            }
        }
        map
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], 443))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn node_addresses_are_read_in_every_form_proxies_write() {
        let malformed = Err(ProxyError::Malformed("forwarded address is not an IP"));
        // Longer than any address: refused before it is parsed.
        let long = format!("{}1", "0".repeat(64));
        let table: &[(&str, Result<&str, ProxyError>)] = &[
            (&long, malformed),
            ("192.0.2.1", Ok("192.0.2.1")),
            ("192.0.2.1:8080", Ok("192.0.2.1")),
            ("2001:db8::1", Ok("2001:db8::1")),
            ("[2001:db8::1]", Ok("2001:db8::1")),
            ("[2001:db8::1]:443", Ok("2001:db8::1")),
            ("unknown", Err(ProxyError::Hidden)),
            ("UNKNOWN", Err(ProxyError::Hidden)),
            ("_hidden", Err(ProxyError::Hidden)),
            ("", malformed),
            ("banana", malformed),
            ("[192.0.2.1", malformed),
        ];
        for &(node, expected) in table {
            let got = node.parse::<NodeAddr>().map(|NodeAddr(ip)| ip);
            assert_eq!(got, expected.map(ip), "{node}");
        }
    }

    #[test]
    fn forwarded_is_read_right_to_left() {
        let h = headers(&[(
            "forwarded",
            br#"for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, for=10.1.1.1"#,
        )]);
        let got = proxies(ClientIpHeader::Forwarded).client_ip(peer(), &h);
        assert_eq!(got, Ok(ip("2001:db8::7")));
    }

    #[test]
    fn multiple_header_lines_form_one_list() {
        let h = headers(&[
            ("x-forwarded-for", b"6.6.6.6"),
            ("x-forwarded-for", b"203.0.113.1, 10.2.2.2"),
        ]);
        assert_eq!(xff().client_ip(peer(), &h), Ok(ip("203.0.113.1")));
        // The client is on the first line: the walk crosses lines.
        let h = headers(&[
            ("x-forwarded-for", b"garbage, 203.0.113.2"),
            ("x-forwarded-for", b"10.2.2.2"),
        ]);
        assert_eq!(xff().client_ip(peer(), &h), Ok(ip("203.0.113.2")));
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let h = headers(&[
            ("x-real-ip", b"1.1.1.1"),
            ("x-forwarded-for", b"2.2.2.2"),
            ("forwarded", b"for=3.3.3.3"),
            ("cf-connecting-ip", b"4.4.4.4"),
        ]);
        let cases = [
            (ClientIpHeader::XForwardedFor, "2.2.2.2"),
            (ClientIpHeader::Forwarded, "3.3.3.3"),
            (ClientIpHeader::XRealIp, "1.1.1.1"),
            (ClientIpHeader::Other("cf-connecting-ip".into()), "4.4.4.4"),
        ];
        for (header, expected) in cases {
            assert_eq!(
                proxies(header.clone()).client_ip(peer(), &h),
                Ok(ip(expected)),
                "{header:?}"
            );
        }
        // Behind an X-Forwarded-For proxy, a client's own Forwarded changes nothing.
        let h = headers(&[
            ("forwarded", b"for=198.51.100.1"),
            ("forwarded", b"proto=https"),
            ("x-forwarded-for", b"203.0.113.5"),
        ]);
        assert_eq!(xff().client_ip(peer(), &h), Ok(ip("203.0.113.5")));
        // No such header from a trusted proxy: the proxy itself is as far as we know.
        assert_eq!(
            xff().client_ip(peer(), &HeaderMap::new()),
            Ok(ip("10.0.0.1"))
        );
    }

    #[test]
    fn nothing_left_of_the_client_is_parsed() {
        let long = vec!["zz"; 10_000].join(",");
        let lefts: [&[u8]; 8] = [
            b"not-an-ip",
            b"unknown",
            b"_hidden",
            b"1.2.3.4\xff\xfe",
            b"\"",
            b"",
            b",,,",
            long.as_bytes(),
        ];
        for left in lefts {
            let mut value = left.to_vec();
            value.extend_from_slice(b", 203.0.113.99");
            let h = headers(&[("x-forwarded-for", &value)]);
            assert_eq!(
                xff().client_ip(peer(), &h),
                Ok(ip("203.0.113.99")),
                "{}",
                String::from_utf8_lossy(left)
            );
        }
        let forwarded = proxies(ClientIpHeader::Forwarded);
        for left in [
            &b"proto=https"[..],
            b"for",
            b"for=\"1.2.3.4",
            b"for=unknown",
            b"\xff",
        ] {
            let mut value = left.to_vec();
            value.extend_from_slice(b", for=203.0.113.98;proto=https");
            let h = headers(&[("forwarded", &value)]);
            assert_eq!(forwarded.client_ip(peer(), &h), Ok(ip("203.0.113.98")));
        }
    }

    #[test]
    fn the_entry_a_trusted_proxy_wrote_must_be_an_address() {
        let forwarded = proxies(ClientIpHeader::Forwarded);
        for bad in [&b"for"[..], b"for=\"1.2.3.4", b"proto=https", b"for=banana"] {
            let h = headers(&[("forwarded", bad)]);
            let got = forwarded.client_ip(peer(), &h);
            assert!(
                matches!(got, Err(ProxyError::Malformed(_))),
                "{}: {got:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let h = headers(&[("forwarded", b"for=unknown")]);
        assert_eq!(forwarded.client_ip(peer(), &h), Err(ProxyError::Hidden));
        let h = headers(&[("x-forwarded-for", b"1.2.3.4\xff")]);
        assert!(xff().client_ip(peer(), &h).is_err());
        // A trusted hop, then garbage: the garbage is where the client should be.
        let h = headers(&[("x-forwarded-for", b"garbage, 10.3.3.3")]);
        assert!(xff().client_ip(peer(), &h).is_err());
    }

    #[test]
    fn at_most_max_hops_are_examined() {
        // 100 trusted hops: the walk stops after 32, at a trusted address, without error.
        let long = vec!["10.0.0.9"; 100].join(",");
        let h = headers(&[("x-forwarded-for", long.as_bytes())]);
        assert_eq!(xff().client_ip(peer(), &h), Ok(ip("10.0.0.9")));
        // The client 32 hops from the right is found; one further is not reached.
        let mut hops = vec!["10.0.0.9"; MAX_HOPS - 1];
        hops.insert(0, "203.0.113.7");
        let h = headers(&[("x-forwarded-for", hops.join(",").as_bytes())]);
        assert_eq!(xff().client_ip(peer(), &h), Ok(ip("203.0.113.7")));
        hops.push("10.0.0.9");
        let h = headers(&[("x-forwarded-for", hops.join(",").as_bytes())]);
        assert_eq!(xff().client_ip(peer(), &h), Ok(ip("10.0.0.9")));
        // Many header lines count as hops too.
        let mut map = HeaderMap::new();
        for _ in 0..1000 {
            map.append("x-forwarded-for", HeaderValue::from_static("10.0.0.8"));
        }
        assert_eq!(xff().client_ip(peer(), &map), Ok(ip("10.0.0.8")));
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let h = headers(&[("x-forwarded-for", b"10.9.9.9, 10.8.8.8")]);
        assert_eq!(xff().client_ip(peer(), &h), Ok(ip("10.9.9.9")));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let h = headers(&[("x-forwarded-for", b"::ffff:198.51.100.1")]);
        let mapped_proxy: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap_or(peer());
        assert_eq!(xff().client_ip(mapped_proxy, &h), Ok(ip("198.51.100.1")));
        let mapped_client: SocketAddr = "[::ffff:198.51.100.2]:80".parse().unwrap_or(peer());
        assert_eq!(xff().client_ip(mapped_client, &h), Ok(ip("198.51.100.2")));
    }

    #[test]
    fn an_untrusted_peer_is_always_the_client() {
        let h = headers(&[
            ("x-forwarded-for", b"1.1.1.1"),
            ("forwarded", b"for=2.2.2.2"),
        ]);
        let peer: SocketAddr = "198.51.100.3:1".parse().unwrap_or(peer());
        for header in [ClientIpHeader::XForwardedFor, ClientIpHeader::Forwarded] {
            assert_eq!(proxies(header).client_ip(peer, &h), Ok(ip("198.51.100.3")));
        }
    }
}
