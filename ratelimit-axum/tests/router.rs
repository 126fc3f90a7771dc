//! The layer in a real server: `axum::serve` on a bound socket with connect info, spoken to
//! over raw HTTP/1.1, so the peer address, the rules, the headers and the 429 are checked as a
//! client sees them.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use ratelimit_axum::{RateLimited, RouterExt};
use ratelimit_core::config::Overrides;
use ratelimit_core::{Config, RateLimiter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONFIG: &str = r#"
rate_limiter:
  windows: [{ max_requests: 5, duration: 1m }]
  headers: [ietf, legacy]
  rules:
    - name: health
      match: { path: /health }
      exempt: true
    - name: api
      match: { path: "/api/*", methods: [GET] }
      windows: [{ max_requests: 3, duration: 1m }]
"#;

async fn decision(limit: RateLimited) -> String {
    format!(
        "{} {}",
        limit.rule().unwrap_or("-"),
        limit.decision().remaining()
    )
}

async fn maybe(limit: Option<RateLimited>) -> &'static str {
    if limit.is_some() { "limited" } else { "exempt" }
}

/// Serves the app on 127.0.0.1 with connect info; returns its address.
async fn serve(yaml: &str) -> SocketAddr {
    serve_with(yaml, true).await
}

/// Serves the app on 127.0.0.1, with or without connect info.
async fn serve_with(yaml: &str, connect_info: bool) -> SocketAddr {
    let config =
        Config::from_yaml_str_with(yaml, None, &Overrides::default()).expect("valid config");
    let limiter = RateLimiter::new(config).await.expect("limiter");
    let app = Router::new()
        .route("/api/hello", get(decision))
        .route("/api/users/{id}", get(decision))
        .route("/health", get(maybe))
        .route("/other", get(decision))
        .route("/maybe", get(maybe))
        .rate_limit(&limiter);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        if connect_info {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        } else {
            axum::serve(listener, app.into_make_service()).await
        }
        .expect("server");
    });
    addr
}

/// A response as read off the wire.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("{name} missing: {self:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {self:?}"))
    }
}

/// `GET path` over a fresh connection, read to the end.
async fn get_path(addr: SocketAddr, path: &str) -> Response {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("end of headers");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("header line");
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

#[tokio::test]
async fn three_allowed_then_429_with_headers() {
    let addr = serve(CONFIG).await;
    for remaining in [2u64, 1, 0] {
        let response = get_path(addr, "/api/hello").await;
        assert_eq!(response.status, 200, "{response:?}");
        // The extractor sees the decision the headers describe.
        assert_eq!(response.body, format!("api {remaining}"));
        assert_eq!(
            response.header("ratelimit-policy"),
            Some("\"api-1m\";q=3;w=60")
        );
        let ratelimit = response.header("ratelimit").expect("RateLimit header");
        let prefix = format!("\"api-1m\";r={remaining};t=");
        let reset: u64 = ratelimit
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{ratelimit} does not start with {prefix}"))
            .parse()
            .expect("t is a number");
        assert!((1..=60).contains(&reset), "{ratelimit}");
        assert_eq!(response.number("x-ratelimit-limit"), 3);
        assert_eq!(response.number("x-ratelimit-remaining"), remaining);
        // Epoch seconds by default.
        assert!(response.number("x-ratelimit-reset") > 1_700_000_000);
    }

    let denied = get_path(addr, "/api/hello").await;
    assert_eq!(denied.status, 429, "{denied:?}");
    assert_eq!(
        denied.header("content-type"),
        Some("application/problem+json")
    );
    let retry = denied.number("retry-after");
    assert!((1..=60).contains(&retry), "{denied:?}");
    assert_eq!(
        denied.header("ratelimit-policy"),
        Some("\"api-1m\";q=3;w=60")
    );
    assert_eq!(
        denied.header("ratelimit"),
        Some(format!("\"api-1m\";r=0;t={retry}").as_str()),
        "`t` and Retry-After name the same moment"
    );
    assert_eq!(denied.number("x-ratelimit-limit"), 3);
    assert_eq!(denied.number("x-ratelimit-remaining"), 0);
    let problem: serde_json::Value = serde_json::from_str(&denied.body).expect("problem json");
    assert_eq!(problem["status"], 429);
    assert_eq!(
        problem["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(problem["violated-policies"], serde_json::json!(["api-1m"]));

    // The rule covers the whole `/api/*` tree under one quota.
    let other_api = get_path(addr, "/api/users/7").await;
    assert_eq!(other_api.status, 429, "{other_api:?}");
}

#[tokio::test]
async fn exempt_rule_is_never_limited() {
    let addr = serve(CONFIG).await;
    for _ in 0..10 {
        let response = get_path(addr, "/health").await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body, "exempt");
        assert_eq!(response.header("ratelimit"), None);
        assert_eq!(response.header("x-ratelimit-limit"), None);
    }
}

#[tokio::test]
async fn unmatched_path_gets_the_default_policy() {
    let addr = serve(CONFIG).await;
    for remaining in (0..5u64).rev() {
        let response = get_path(addr, "/other").await;
        assert_eq!(response.status, 200, "{response:?}");
        assert_eq!(response.body, format!("default {remaining}"));
        assert_eq!(
            response.header("ratelimit-policy"),
            Some("\"default-1m\";q=5;w=60")
        );
        assert_eq!(response.number("x-ratelimit-remaining"), remaining);
    }
    let denied = get_path(addr, "/other").await;
    assert_eq!(denied.status, 429, "{denied:?}");
    let problem: serde_json::Value = serde_json::from_str(&denied.body).expect("problem json");
    assert_eq!(
        problem["violated-policies"],
        serde_json::json!(["default-1m"])
    );
    // The default quota is separate from the rule's.
    let api = get_path(addr, "/api/hello").await;
    assert_eq!((api.status, api.body.as_str()), (200, "api 2"));
}

#[tokio::test]
async fn header_families_follow_the_configuration() {
    let addr = serve(&CONFIG.replace("headers: [ietf, legacy]", "headers: [legacy]")).await;
    let response = get_path(addr, "/api/hello").await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("ratelimit"), None);
    assert_eq!(response.header("ratelimit-policy"), None);
    assert_eq!(response.number("x-ratelimit-limit"), 3);
}

#[tokio::test]
async fn peer_address_comes_from_connect_info() {
    let listed = serve(&format!("{CONFIG}  allow_list: {{ ips: [127.0.0.1] }}\n")).await;
    for _ in 0..6 {
        let response = get_path(listed, "/maybe").await;
        assert_eq!((response.status, response.body.as_str()), (200, "exempt"));
    }
    let unlisted = serve(&format!("{CONFIG}  allow_list: {{ ips: [10.0.0.0/8] }}\n")).await;
    let response = get_path(unlisted, "/maybe").await;
    assert_eq!((response.status, response.body.as_str()), (200, "limited"));
}

#[tokio::test]
async fn without_connect_info_ip_keys_are_a_server_error() {
    let addr = serve_with(CONFIG, false).await;
    let response = get_path(addr, "/other").await;
    assert_eq!(response.status, 500, "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json")
    );
    // Exempt routes need no key.
    assert_eq!(get_path(addr, "/health").await.status, 200);
}

#[tokio::test]
async fn extractor_rejects_where_nothing_was_limited() {
    let addr = serve(&format!("{CONFIG}  allow_list: {{ ips: [127.0.0.1] }}\n")).await;
    let response = get_path(addr, "/api/hello").await;
    assert_eq!(response.status, 500, "{response:?}");
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json")
    );
    assert!(response.body.contains("not installed"), "{response:?}");
}
