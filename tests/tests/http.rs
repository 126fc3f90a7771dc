//! The example API server, bound to a port and spoken to by a real HTTP client: exact status
//! codes and header values, trusted and untrusted proxies, rule order and exemptions, exactness
//! under 500 parallel requests, and hostile headers.

use std::net::SocketAddr;
use std::time::Duration;

use ratelimit_core::Overrides;
use ratelimit_core::{Config, RateLimiter};
use ratelimit_tests::Backend;
use reqwest::StatusCode;
use reqwest::header::HeaderValue;

/// A running app; the server stops when the test's runtime ends.
struct App {
    addr: SocketAddr,
    client: reqwest::Client,
}

impl App {
    async fn start(yaml: &str, backend: Backend) -> Self {
        let config = Config::from_yaml_str_with(yaml, None, &Overrides::default())
            .unwrap_or_else(|e| panic!("test config refused: {e}"));
        let prefix = Backend::unique_prefix("http");
        let limiter = RateLimiter::new(backend.configure(config, &prefix))
            .await
            .expect("limiter");
        let app = example_api_server::app(limiter);
        let addr = ratelimit_tests::serve(app).await;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Self { addr, client }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str, headers: &[(&str, HeaderValue)]) -> reqwest::Response {
        let mut request = self.client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, value.clone());
        }
        request.send().await.expect("request")
    }
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
}

/// Asserts the value of header `name` on `response` (`None`: absent).
#[track_caller]
fn assert_header(response: &reqwest::Response, name: &str, expected: Option<&str>) {
    assert_eq!(header(response, name).as_deref(), expected, "header {name}");
}

/// The response's status, then each `(header, expected value)`.
fn assert_status_and_headers(
    response: &reqwest::Response,
    status: StatusCode,
    expected: &[(&str, Option<&str>)],
) {
    assert_eq!(response.status(), status);
    for (name, value) in expected {
        assert_header(response, name, *value);
    }
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).expect("header value")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_and_denied_responses_carry_exact_headers() {
    let app = App::start(&ratelimit_tests::hello_rule_config(100, 3), Backend::Memory).await;
    let first = app.get("/api/hello", &[]).await;
    assert_status_and_headers(
        &first,
        StatusCode::OK,
        &[
            ("ratelimit-policy", Some("\"hello-1m\";q=3;w=60")),
            ("ratelimit", Some("\"hello-1m\";r=2;t=60")),
            ("x-ratelimit-limit", Some("3")),
            ("x-ratelimit-remaining", Some("2")),
        ],
    );
    // Epoch seconds (the default `legacy_reset`): a minute from now, rounded up.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let reset: u64 = header(&first, "x-ratelimit-reset")
        .and_then(|v| v.parse().ok())
        .expect("numeric reset");
    assert!((now + 60..=now + 62).contains(&reset), "{reset} vs {now}");
    assert_header(&first, "retry-after", None);
    let body: serde_json::Value = first.json().await.expect("json");
    assert_eq!(body["quota"]["rule"], "hello");
    assert_eq!(body["quota"]["remaining"], 2);

    app.get("/api/hello", &[]).await;
    let third = app.get("/api/hello", &[]).await;
    assert_eq!(third.status(), StatusCode::OK);
    assert_header(&third, "x-ratelimit-remaining", Some("0"));

    let denied = app.get("/api/hello", &[]).await;
    assert_status_and_headers(
        &denied,
        StatusCode::TOO_MANY_REQUESTS,
        &[
            ("content-type", Some("application/problem+json")),
            ("retry-after", Some("60")),
            ("ratelimit", Some("\"hello-1m\";r=0;t=60")),
            ("x-ratelimit-remaining", Some("0")),
        ],
    );
    let problem: serde_json::Value = denied.json().await.expect("problem json");
    assert_eq!(problem["status"], 429);
    assert_eq!(
        problem["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(
        problem["violated-policies"],
        serde_json::json!(["hello-1m"])
    );
    assert!(problem["type"].is_string() && problem["detail"].is_string());

    // Unmatched routes use the default policy; operational routes are never limited.
    let other = app.get("/api/users/7", &[]).await;
    assert_eq!(other.status(), StatusCode::OK);
    assert_header(&other, "x-ratelimit-limit", Some("100"));
    for _ in 0..10 {
        let health = app.get("/health", &[]).await;
        assert_eq!(health.status(), StatusCode::OK);
        assert_header(&health, "x-ratelimit-limit", None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_families_are_configurable() {
    let yaml = "
rate_limiter:
  headers: [ietf]
  windows:
    - max_requests: 5
      duration: 1h
";
    let app = App::start(yaml, Backend::Memory).await;
    let response = app.get("/api/hello", &[]).await;
    assert_header(&response, "ratelimit", Some("\"default-1h\";r=4;t=3600"));
    assert_header(&response, "x-ratelimit-limit", None);
}

const TWO_PER_IP: &str = "
rate_limiter:
  key: ip
  trusted_proxies: [TRUSTED]
  windows:
    - max_requests: 2
      duration: 1m
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_ignored_from_an_untrusted_peer() {
    let app = App::start(
        &TWO_PER_IP.replace("TRUSTED", "10.0.0.0/8"),
        Backend::Memory,
    )
    .await;
    // The test client is 127.0.0.1, not a trusted proxy: every spoofed address is the same key.
    for (i, spoof) in ["1.1.1.1", "2.2.2.2", "3.3.3.3"].iter().enumerate() {
        let response = app
            .get("/api/hello", &[("x-forwarded-for", value(spoof))])
            .await;
        let expected = if i < 2 {
            StatusCode::OK
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(response.status(), expected, "request {i} spoofing {spoof}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_honoured_from_a_trusted_proxy() {
    let app = App::start(&TWO_PER_IP.replace("TRUSTED", "127.0.0.1"), Backend::Memory).await;
    for _ in 0..2 {
        let ok = app
            .get(
                "/api/hello",
                &[("x-forwarded-for", value("6.6.6.6, 1.1.1.1"))],
            )
            .await;
        assert_eq!(ok.status(), StatusCode::OK);
    }
    let denied = app
        .get(
            "/api/hello",
            &[("x-forwarded-for", value("7.7.7.7, 1.1.1.1"))],
        )
        .await;
    assert_eq!(
        denied.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the rightmost untrusted entry is the client, whatever is written to its left"
    );
    let other = app
        .get("/api/hello", &[("x-forwarded-for", value("2001:db8::1"))])
        .await;
    assert_eq!(
        other.status(),
        StatusCode::OK,
        "another client has its own quota"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_apply_in_order_with_exemptions() {
    let yaml = "
rate_limiter:
  windows:
    - max_requests: 1
      duration: 1m
  rules:
    - name: internal
      match:
        path: /api/users/{id}
        headers:
          x-tier: internal
      exempt: true
    - name: users
      match:
        path: /api/users/{id}
        methods: [GET]
      windows:
        - max_requests: 2
          duration: 1m
    - name: everything
      match:
        path: /api/*
      windows:
        - max_requests: 3
          duration: 1m
";
    let app = App::start(yaml, Backend::Memory).await;
    let internal = [("x-tier", value("internal"))];
    for _ in 0..5 {
        let response = app.get("/api/users/1", &internal).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "x-ratelimit-limit"),
            None,
            "exempt: no headers"
        );
    }
    let statuses: Vec<u16> = futures_in_order(&app, "/api/users/2", 3).await;
    assert_eq!(
        statuses,
        [200, 200, 429],
        "the `users` rule comes before `everything`"
    );
    let statuses: Vec<u16> = futures_in_order(&app, "/api/hello", 4).await;
    assert_eq!(
        statuses,
        [200, 200, 200, 429],
        "`/api/*` catches the rest of /api"
    );
}

async fn futures_in_order(app: &App, path: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(app.get(path, &[]).await.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rules_count_but_never_deny() {
    let yaml = "
rate_limiter:
  windows:
    - max_requests: 100
      duration: 1m
  rules:
    - name: trial
      match:
        path: /api/hello
      shadow: true
      windows:
        - max_requests: 1
          duration: 1m
";
    let app = App::start(yaml, Backend::Memory).await;
    for _ in 0..5 {
        let response = app.get("/api/hello", &[]).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "ratelimit"),
            None,
            "shadow decisions are invisible"
        );
    }
}

async fn parallel_requests_admit_exactly_the_limit(backend: Backend) {
    let yaml = "
rate_limiter:
  windows:
    - max_requests: 1000
      duration: 1h
  rules:
    - name: orders
      match:
        path: /api/orders
        methods: [POST]
      windows:
        - max_requests: 50
          duration: 1h
";
    let app = std::sync::Arc::new(App::start(yaml, backend).await);
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                app.client
                    .post(app.url("/api/orders"))
                    .send()
                    .await
                    .expect("request")
                    .status()
            })
        })
        .collect();
    let (mut created, mut denied) = (0, 0);
    for task in tasks {
        match task.await.expect("task") {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => denied += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((created, denied), (50, 450), "{backend:?}");
}

ratelimit_tests::tokio_test_cases!(parallel_requests_admit_exactly_the_limit {
    parallel_requests_admit_exactly_the_limit_in_memory => Backend::Memory,
    parallel_requests_admit_exactly_the_limit_on_redis => Backend::Standalone,
    parallel_requests_admit_exactly_the_limit_on_a_cluster => Backend::Cluster,
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_headers_get_clear_answers() {
    let trusting = TWO_PER_IP.replace("TRUSTED", "127.0.0.1");
    // The proxy writes `Forwarded`: the entry it wrote for the client must be an address.
    let forwarded = trusting.replace("key: ip", "key: ip\n  client_ip_header: forwarded");
    let app = App::start(&forwarded, Backend::Memory).await;
    for malformed in [
        "for",
        "for=\"1.2.3.4",
        "proto=zq9x",
        "for=zq9x-not-an-ip",
        "for=unknown",
    ] {
        let response = app
            .get("/api/hello", &[("forwarded", value(malformed))])
            .await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "Forwarded: {malformed}"
        );
        assert_header(&response, "content-type", Some("application/problem+json"));
        let body = response.text().await.expect("body");
        assert!(
            !body.contains("zq9x") && !body.contains("1.2.3.4"),
            "no echo: {body}"
        );
    }
    let app = App::start(&trusting, Backend::Memory).await;
    let binary = HeaderValue::from_bytes(b"1.2.3.4\xff\xfe").expect("obs-text value");
    let response = app.get("/api/hello", &[("x-forwarded-for", binary)]).await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "non-UTF-8 X-Forwarded-For"
    );

    let by_key = "
rate_limiter:
  key: header:x-api-key
  windows:
    - max_requests: 1
      duration: 1m
";
    let app = App::start(by_key, Backend::Standalone).await;
    let huge = value(&"k".repeat(64 * 1024));
    let first = app.get("/api/hello", &[("x-api-key", huge.clone())]).await;
    assert_eq!(
        first.status(),
        StatusCode::OK,
        "a 64 KB key is hashed, not refused"
    );
    let second = app.get("/api/hello", &[("x-api-key", huge)]).await;
    assert_eq!(
        second.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "and still limited"
    );
    let binary = HeaderValue::from_bytes(b"key-\xff\x80").expect("obs-text value");
    let response = app.get("/api/hello", &[("x-api-key", binary)]).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a non-UTF-8 key is a key"
    );
    let missing = app.get("/api/hello", &[]).await;
    assert_eq!(
        missing.status(),
        StatusCode::BAD_REQUEST,
        "no key: 400 by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_keys_follow_the_configuration() {
    for (action, expected) in [
        ("reject", StatusCode::BAD_REQUEST),
        ("deny", StatusCode::TOO_MANY_REQUESTS),
        ("allow", StatusCode::OK),
    ] {
        let yaml = format!(
            "
rate_limiter:
  key: header:x-api-key
  on_missing_key: {action}
  windows:
    - max_requests: 1
      duration: 1m
"
        );
        let app = App::start(&yaml, Backend::Memory).await;
        assert_eq!(
            app.get("/api/hello", &[]).await.status(),
            expected,
            "{action}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lists_exempt_ips_and_keys() {
    let yaml = "
rate_limiter:
  key: header:x-api-key
  on_missing_key: allow
  allow_list:
    keys: [batch-job]
  windows:
    - max_requests: 1
      duration: 1m
";
    let app = App::start(yaml, Backend::Memory).await;
    for _ in 0..3 {
        let response = app
            .get("/api/hello", &[("x-api-key", value("batch-job"))])
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let yaml = "
rate_limiter:
  allow_list:
    ips: [127.0.0.0/8]
  windows:
    - max_requests: 1
      duration: 1m
";
    let app = App::start(yaml, Backend::Memory).await;
    for _ in 0..3 {
        assert_eq!(app.get("/api/hello", &[]).await.status(), StatusCode::OK);
    }
}
