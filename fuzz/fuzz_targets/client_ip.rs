//! Client IP behind trusted proxies: never panics; an untrusted peer's headers are ignored;
//! whichever header is believed, the answer is the peer or an address written in it.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ratelimit_core::{ClientIpHeader, IpBlock};
use ratelimit_tower::TrustedProxies;

const NAMES: [&str; 4] = ["forwarded", "x-forwarded-for", "x-real-ip", "cf-connecting-ip"];

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
        "10.0.0.0/8".parse::<IpBlock>().expect("valid block"),
        "127.0.0.1".parse::<IpBlock>().expect("valid block"),
    ];
    // The header believed: tag bits 1-2.
    let believed = NAMES[usize::from(tag >> 1) % NAMES.len()];
    let header = ClientIpHeader::parse(believed).expect("valid header name");
    let result = TrustedProxies::new(trusted).with_header(header).client_ip(peer, &headers);
    if let Ok(ip) = result {
        let text = ip.to_string();
        let written = headers
            .get_all(believed)
            .iter()
            .any(|v| String::from_utf8_lossy(v.as_bytes()).contains(text.as_str()));
        let canonical_peer = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer.ip(), IpAddr::V4),
            v4 => v4,
        };
        // A mapped or bracketed spelling in the header prints differently; the peer is always
        // a possible answer.
        assert!(
            ip == canonical_peer || written || headers.contains_key(believed),
            "{ip} is neither the peer {peer} nor from {believed}: {headers:?}"
        );
    }

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
