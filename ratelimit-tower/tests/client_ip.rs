//! Who the client is, through the whole layer: which forwarding header is believed, what a
//! client may write to the left of its own entry, IPv6 prefixes and IPv4-mapped peers, and the
//! allow-list. Each test is a bypass that the layer used to allow.

mod common;

use common::{config, hello_behind, request, send, statuses, statuses_of};
use http::Request;
use ratelimit_core::ClientIpHeader;
use ratelimit_tower::{PeerIp, RateLimitLayer};

/// The proxy that talks to us.
const PROXY: &str = "10.0.0.1:443";

/// `GET /` straight from `peer`.
fn from_peer(peer: &str) -> Request<String> {
    request("/", Some(peer), &[])
}

/// `GET /` from [`PROXY`], with `headers`.
fn from_proxy(headers: &[(&str, &[u8])]) -> Request<String> {
    request("/", Some(PROXY), headers)
}

/// Two requests a minute per client IP, behind proxies in 10.0.0.0/8 writing `HEADER`.
fn two_per_ip(extra: &str) -> String {
    format!(
        "
rate_limiter:
  key: ip
  trusted_proxies: [10.0.0.0/8]
  windows: [{{ max_requests: 2, duration: 1m }}]
{extra}"
    )
}

#[tokio::test]
async fn forwarded_is_ignored_behind_an_x_forwarded_for_proxy() {
    let layer = RateLimitLayer::new(config(&two_per_ip("")));
    let service = hello_behind(layer);
    // The proxy appends the real client to X-Forwarded-For and passes the client's own
    // Forwarded through: a new `for=` on every request used to be a new key.
    let spoofing = (0..4).map(|i| {
        let spoof = format!("for=198.51.100.{i}");
        from_proxy(&[
            ("forwarded", spoof.as_bytes()),
            ("x-forwarded-for", b"203.0.113.7"),
        ])
    });
    assert_eq!(statuses_of(&service, spoofing).await, [200, 200, 429, 429]);
}

#[tokio::test]
async fn forwarded_cannot_make_a_client_exempt() {
    let yaml = two_per_ip("  allow_list: { ips: [192.0.2.0/24] }\n");
    let service = hello_behind(RateLimitLayer::new(config(&yaml)));
    let spoofing = || {
        from_proxy(&[
            ("forwarded", b"for=192.0.2.1"),
            ("x-real-ip", b"192.0.2.2"),
            ("x-forwarded-for", b"203.0.113.8"),
        ])
    };
    assert_eq!(statuses(&service, 3, spoofing).await, [200, 200, 429]);
    // The allow-listed client, as the proxy reports it, is exempt.
    let listed = || from_proxy(&[("x-forwarded-for", b"192.0.2.9")]);
    assert_eq!(statuses(&service, 3, listed).await, [200, 200, 200]);
}

#[tokio::test]
async fn client_ip_header_names_the_one_header_believed() {
    for (header, name) in [
        ("forwarded", "forwarded"),
        ("x-real-ip", "x-real-ip"),
        ("CF-Connecting-IP", "cf-connecting-ip"),
        ("fly-client-ip", "fly-client-ip"),
    ] {
        let yaml = two_per_ip(&format!("  client_ip_header: {header}\n"));
        let service = hello_behind(RateLimitLayer::new(config(&yaml)));
        let value: &[u8] = if name == "forwarded" {
            b"for=203.0.113.9"
        } else {
            b"203.0.113.9"
        };
        // X-Forwarded-For changes on every request, and is not believed.
        let requests = (0..3).map(|i| {
            let xff = format!("198.51.100.{i}");
            from_proxy(&[(name, value), ("x-forwarded-for", xff.as_bytes())])
        });
        assert_eq!(
            statuses_of(&service, requests).await,
            [200, 200, 429],
            "{header}"
        );
        // Another client, in the believed header, has its own quota.
        let other: &[u8] = if name == "forwarded" {
            b"for=\"[2001:db8::1]:80\""
        } else {
            b"2001:db8::1"
        };
        let reply = send(&service, from_proxy(&[(name, other)])).await;
        assert_eq!(reply.status, 200, "{header}");
    }
}

#[tokio::test]
async fn a_forwarded_element_without_for_is_no_error_behind_an_x_forwarded_for_proxy() {
    for missing_key in ["reject", "allow"] {
        let yaml = two_per_ip(&format!("  on_missing_key: {missing_key}\n"));
        let service = hello_behind(RateLimitLayer::new(config(&yaml)));
        // Was 400 on every request (reject) or a free pass (allow).
        let proto_only = || {
            from_proxy(&[
                ("forwarded", b"proto=https"),
                ("x-forwarded-for", b"203.0.113.10"),
            ])
        };
        assert_eq!(
            statuses(&service, 3, proto_only).await,
            [200, 200, 429],
            "on_missing_key: {missing_key}"
        );
    }
}

#[tokio::test]
async fn nothing_a_client_writes_left_of_its_own_entry_is_parsed() {
    let service = hello_behind(RateLimitLayer::new(config(&two_per_ip(""))));
    let many = vec!["garbage"; 500].join(", ");
    let lefts: [&[u8]; 7] = [
        b"not-an-ip",
        b"unknown",
        b"_hidden",
        b"\xff\xfe\x80",
        b"\"",
        b"",
        many.as_bytes(),
    ];
    // Each of these is keyed as 203.0.113.99: two pass, the rest are denied, none is a 400.
    let requests = lefts.map(|left| {
        let xff = [left, b", 203.0.113.99"].concat();
        from_proxy(&[("x-forwarded-for", &xff)])
    });
    assert_eq!(
        statuses_of(&service, requests).await,
        [200, 200, 429, 429, 429, 429, 429]
    );
    // Repeated lines are one list: the client is on the first line, a trusted hop on the next.
    let split = from_proxy(&[
        ("x-forwarded-for", b"junk, 203.0.113.99"),
        ("x-forwarded-for", b"10.1.1.1"),
    ]);
    assert_eq!(send(&service, split).await.status, 429);
    // Behind a Forwarded proxy, the client's garbage elements are not parsed either.
    let yaml = two_per_ip("  client_ip_header: forwarded\n");
    let service = hello_behind(RateLimitLayer::new(config(&yaml)));
    let lefts: [&[u8]; 4] = [b"proto=https", b"for", b"for=\"1.2.3.4", b"secret"];
    let requests = lefts.map(|left| {
        let value = [left, b", for=203.0.113.98"].concat();
        from_proxy(&[("forwarded", &value)])
    });
    assert_eq!(statuses_of(&service, requests).await, [200, 200, 429, 429]);
}

#[tokio::test]
async fn the_entry_the_proxy_wrote_must_be_an_address() {
    let service = hello_behind(RateLimitLayer::new(config(&two_per_ip(""))));
    let reply = send(
        &service,
        from_proxy(&[("x-forwarded-for", b"1.2.3.4, zq9x")]),
    )
    .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(!reply.body.contains("zq9x"), "no echo: {}", reply.body);
}

#[tokio::test]
async fn ipv6_clients_rotating_through_a_64_share_one_quota() {
    // Peers.
    let service = hello_behind(RateLimitLayer::new(config(&two_per_ip(""))));
    let rotating = || (1..=4).map(|i| from_peer(&format!("[2001:db8:1:2::{i:x}]:40000")));
    assert_eq!(
        statuses_of(&service, rotating()).await,
        [200, 200, 429, 429]
    );
    let neighbour = send(&service, from_peer("[2001:db8:1:3::1]:1")).await;
    assert_eq!(neighbour.status, 200, "another /64, another quota");
    // Behind a proxy.
    let proxied = (1..=3).map(|i| {
        let xff = format!("2001:db8:9:9:{i}::1");
        from_proxy(&[("x-forwarded-for", xff.as_bytes())])
    });
    assert_eq!(statuses_of(&service, proxied).await, [200, 200, 429]);
    // The prefix is configurable: /128 keys every address apart.
    let service = hello_behind(RateLimitLayer::new(config(&two_per_ip(
        "  ipv6_prefix: 128\n",
    ))));
    assert_eq!(
        statuses_of(&service, rotating()).await,
        [200, 200, 200, 200]
    );
}

#[tokio::test]
async fn ipv4_mapped_peers_are_keyed_as_ipv4() {
    let yaml = "
rate_limiter:
  key: peer
  windows: [{ max_requests: 2, duration: 1m }]
";
    let service = hello_behind(RateLimitLayer::new(config(yaml)));
    let one_client = ["192.0.2.1:1", "[::ffff:192.0.2.1]:2", "[::ffff:c000:201]:3"].map(from_peer);
    assert_eq!(
        statuses_of(&service, one_client).await,
        [200, 200, 429],
        "one client, however its address is written"
    );
    // And in code.
    let layer = RateLimitLayer::builder()
        .per_minute(1)
        .key(PeerIp::new())
        .build()
        .expect("layer");
    let service = hello_behind(layer);
    let one_client = ["[::ffff:192.0.2.5]:1", "192.0.2.5:1"].map(from_peer);
    assert_eq!(statuses_of(&service, one_client).await, [200, 429]);
}

#[tokio::test]
async fn allow_lists_match_the_whole_address_not_the_prefix() {
    let yaml = "
rate_limiter:
  allow_list: { ips: ['2001:db8::1'] }
  windows: [{ max_requests: 1, duration: 1m }]
";
    let service = hello_behind(RateLimitLayer::new(config(yaml)));
    let listed = || from_peer("[2001:db8::1]:1");
    assert_eq!(statuses(&service, 3, listed).await, [200, 200, 200]);
    let neighbour = || from_peer("[2001:db8::2]:1");
    assert_eq!(statuses(&service, 2, neighbour).await, [200, 429]);
}

#[tokio::test]
async fn client_ip_in_code_takes_a_header_and_a_prefix() {
    let layer = RateLimitLayer::builder()
        .per_minute(1)
        .key(
            ratelimit_tower::ClientIp::new(["10.0.0.0/8"
                .parse::<ratelimit_core::IpBlock>()
                .expect("block")])
            .header("fly-client-ip".parse::<ClientIpHeader>().expect("name"))
            .ipv6_prefix(48),
        )
        .build()
        .expect("layer");
    let service = hello_behind(layer);
    let from = |ip: &'static str| move || from_proxy(&[("fly-client-ip", ip.as_bytes())]);
    assert_eq!(statuses(&service, 1, from("2001:db8:5:1::1")).await, [200]);
    assert_eq!(
        statuses(&service, 1, from("2001:db8:5:2::1")).await,
        [429],
        "same /48"
    );
    assert_eq!(statuses(&service, 1, from("2001:db8:6::1")).await, [200]);
}
