//! Client IP behind trusted proxies: never panics; an untrusted peer's headers are ignored.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ratelimit_core::config::IpBlock;
use ratelimit_tower::proxy::client_ip;

const NAMES: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

fuzz_target!(|data: &[u8]| {
    // Peer: 1 tag byte, then 4 (IPv4) or 16 (IPv6) address bytes and 2 port bytes.
    let Some((&tag, rest)) = data.split_first() else {
        return;
    };
    let (ip, rest) = if tag & 1 == 0 {
        let Some((a, rest)) = rest.split_first_chunk::<4>() else {
            return;
        };
        (IpAddr::V4(Ipv4Addr::from(*a)), rest)
    } else {
        let Some((a, rest)) = rest.split_first_chunk::<16>() else {
            return;
        };
        (IpAddr::V6(Ipv6Addr::from(*a)), rest)
    };
    let Some((port, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let peer = SocketAddr::new(ip, u16::from_be_bytes(*port));

    // Headers: the rest split on 0x00; each piece's first byte picks the header name.
    let mut headers = HeaderMap::new();
    for piece in rest.split(|&b| b == 0) {
        let Some((&which, value)) = piece.split_first() else {
            continue;
        };
        let name = HeaderName::from_static(NAMES[usize::from(which) % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }

    let trusted = [
        IpBlock::parse("10.0.0.0/8").expect("valid block"),
        IpBlock::parse("127.0.0.1").expect("valid block"),
    ];
    let result = client_ip(peer, &headers, &trusted);

    let peer_trusted = trusted.iter().any(|b| b.contains(peer.ip()));
    if !peer_trusted {
        // IpBlock::contains and client_ip both match IPv4-mapped IPv6 as IPv4.
        let expected = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer.ip(), IpAddr::V4),
            v4 => v4,
        };
        assert_eq!(
            result,
            Ok(expected),
            "untrusted peer {peer} must be the client, headers ignored: {headers:?}"
        );
    }
});
