//! Who a client is and what it is told, over real sockets: the one-liner under `axum::serve`
//! with and without connect info, tests written the way axum documents them (`MockConnectInfo`,
//! `oneshot`), a global layer and route layers sharing one limiter, the decision read by an
//! outer layer, keys from route parameters, and the forwarding-header bypasses closed,
//! through the example server's rules.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use ratelimit_axum::MatchedPathParam;
use ratelimit_core::Overrides;
use ratelimit_core::{Config, RateLimiter};
use ratelimit_tests::Backend;
use ratelimit_tower::RateLimitLayer;
use reqwest::header::HeaderValue;
use tower::ServiceExt;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn get_status(client: &reqwest::Client, url: &str) -> u16 {
    client
        .get(url)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

fn header_values(response: &reqwest::Response, name: &str) -> Vec<String> {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect()
}

/// Error events recorded on this thread while the guard lives.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl Errors {
    fn start(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn taken(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Errors {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(message.0);
        }
    }
}

/// The one-liner of the issue: a router, a layer from a `Config`, nothing else.
fn one_liner() -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(RateLimitLayer::new(Config::new(2, Duration::from_secs(60))))
}

// Everything runs on this thread (current-thread runtime), so the thread's subscriber sees the
// server's events too.
#[tokio::test(flavor = "current_thread")]
async fn axum_serve_without_connect_info_answers_500_and_says_so_once() {
    let errors = Errors::default();
    let _guard = errors.start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, one_liner()).await });
    let client = client();
    let url = format!("http://{addr}/");
    for _ in 0..3 {
        let response = client.get(&url).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let body = response.text().await.expect("body");
        assert!(!body.contains("Bad Request"), "{body}");
    }
    let logged = errors.taken();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].contains("into_make_service_with_connect_info::<SocketAddr>()"),
        "{logged:?}"
    );

    // The same one-liner, served with connect info, works as written.
    let addr = ratelimit_tests::serve(one_liner()).await;
    let url = format!("http://{addr}/");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get_status(&client, &url).await);
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert!(errors.taken().is_empty());
}

async fn oneshot_status(app: &Router, uri: &str) -> (u16, String) {
    let request = Request::get(uri).body(Body::empty()).expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body");
    (
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    )
}

#[tokio::test]
async fn tests_written_the_axum_way_work() {
    let client_addr = SocketAddr::from(([198, 51, 100, 1], 4000));
    let limiter = RateLimiter::new_lazy(Config::new(2, Duration::from_secs(60))).expect("limiter");
    for app in [
        one_liner(),
        Router::new()
            .route("/", get(|| async { "hello" }))
            .layer(ratelimit_axum::layer(limiter)),
    ] {
        let app = app.layer(MockConnectInfo(client_addr));
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(oneshot_status(&app, "/").await.0);
        }
        assert_eq!(statuses, [200, 200, 429]);
    }
}

/// An app whose outer layer copies the `RateLimitInfo` it finds on a response into an
/// `x-seen-remaining` header: what an access log around the limiter would read.
fn app_with_outer_reader(info_in_response: bool) -> Router {
    let layer = RateLimitLayer::builder()
        .per_minute(2)
        .info_in_response(info_in_response)
        .build()
        .expect("layer");
    Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer)
        .layer(axum::middleware::map_response(
            |mut response: axum::response::Response| async move {
                let seen = response
                    .extensions()
                    .get::<ratelimit_tower::RateLimitInfo>()
                    .map(|info| info.decision.remaining());
                if let Some(remaining) = seen {
                    response
                        .headers_mut()
                        .insert("x-seen-remaining", HeaderValue::from(remaining));
                }
                response
            },
        ))
}

#[tokio::test]
async fn outer_layers_read_the_decision_off_responses_when_asked() {
    let client = client();
    for (info_in_response, expected) in [
        (false, [(200, vec![]), (200, vec![]), (429, vec![])]),
        (
            true,
            [
                (200, vec!["1".to_owned()]),
                (200, vec!["0".to_owned()]),
                // A denial is this layer's own response: the headers say it all.
                (429, vec![]),
            ],
        ),
    ] {
        let addr = ratelimit_tests::serve(app_with_outer_reader(info_in_response)).await;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let response = client
                .get(format!("http://{addr}/"))
                .send()
                .await
                .expect("request");
            seen.push((
                response.status().as_u16(),
                header_values(&response, "x-seen-remaining"),
            ));
        }
        assert_eq!(seen, expected, "info in response: {info_in_response}");
    }
}

async fn shared_limiter(backend: Backend) {
    let config = backend.configure(
        Config::new(100, Duration::from_secs(3600)),
        &Backend::unique_prefix("http-keys"),
    );
    let limiter = RateLimiter::new(config).await.expect("limiter");
    let login = RateLimitLayer::builder()
        .limiter(limiter.clone())
        .policy_name("login")
        .per_minute(2)
        .build()
        .expect("route layer");
    let app = Router::new()
        .route("/login", post(|| async { "welcome" }))
        .route_layer(login)
        .route("/hello", get(|| async { "hello" }))
        .layer(RateLimitLayer::from_limiter(limiter.clone()));
    let addr = ratelimit_tests::serve(app).await;
    let client = client();

    let login = || client.post(format!("http://{addr}/login")).send();
    let first = login().await.expect("request");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        header_values(&first, "ratelimit-policy"),
        ["\"login-1m\";q=2;w=60", "\"default-1h\";q=100;w=3600"],
        "{backend:?}"
    );
    assert_eq!(
        header_values(&first, "ratelimit"),
        ["\"login-1m\";r=1;t=60", "\"default-1h\";r=99;t=3600"],
        "{backend:?}"
    );
    login().await.expect("request");
    let denied = login().await.expect("request");
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry = denied.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(
        header_values(&denied, "ratelimit"),
        [
            format!("\"login-1m\";r=0;t={retry}"),
            "\"default-1h\";r=97;t=3600".to_owned()
        ],
        "{backend:?}"
    );
    let problem: serde_json::Value = denied.json().await.expect("problem");
    assert_eq!(
        problem["violated-policies"],
        serde_json::json!(["login-1m"])
    );

    // Other routes see the global layer only, and every request was counted there once.
    let hello = ratelimit_tests::http_get(&client, format!("http://{addr}/hello")).await;
    assert_eq!(
        header_values(&hello, "ratelimit"),
        ["\"default-1h\";r=96;t=3600"],
        "{backend:?}"
    );
    assert_eq!(
        limiter.peek("127.0.0.1").await.expect("peek").remaining(),
        96
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_layer_and_route_layers_share_one_limiter_in_memory() {
    shared_limiter(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_layer_and_route_layers_share_one_limiter_on_redis() {
    shared_limiter(Backend::Standalone).await;
}

#[tokio::test]
async fn route_parameters_key_requests_behind_nested_routers() {
    let per_tenant = RateLimitLayer::builder()
        .per_minute(1)
        .key(MatchedPathParam::new("tenant"))
        .build()
        .expect("layer");
    let tenants = Router::new()
        .route("/{tenant}/orders", get(|| async { "orders" }))
        .route("/{tenant}/users/{id}", get(|| async { "user" }))
        .route_layer(per_tenant);
    let app = Router::new()
        .nest("/t", tenants)
        .layer(MockConnectInfo(SocketAddr::from(([198, 51, 100, 2], 1))));
    assert_eq!(oneshot_status(&app, "/t/acme/orders").await.0, 200);
    assert_eq!(oneshot_status(&app, "/t/%61cme/users/7").await.0, 429);
    assert_eq!(oneshot_status(&app, "/t/globex/orders").await.0, 200);
}

/// The example server (rules and all) with `yaml`, trusting the test client as its proxy.
async fn example_server(yaml: &str) -> SocketAddr {
    let config =
        Config::from_yaml_str_with(yaml, None, &Overrides::default()).expect("valid config");
    let limiter = RateLimiter::new(config).await.expect("limiter");
    ratelimit_tests::serve(example_api_server::app(limiter)).await
}

const BEHIND_A_PROXY: &str = "
rate_limiter:
  trusted_proxies: [127.0.0.1]
  windows: [{ max_requests: 100, duration: 1m }]
  rules:
    - name: hello
      match: { path: /api/hello }
      windows: [{ max_requests: 2, duration: 1m }]
";

async fn statuses_with(
    client: &reqwest::Client,
    addr: SocketAddr,
    headers: &[Vec<(&str, String)>],
) -> Vec<u16> {
    let mut out = Vec::new();
    for set in headers {
        let mut request = client.get(format!("http://{addr}/api/hello"));
        for (name, value) in set {
            request = request.header(*name, HeaderValue::from_str(value).expect("value"));
        }
        out.push(request.send().await.expect("request").status().as_u16());
    }
    out
}

/// Three requests, each with the same `Forwarded` and `X-Forwarded-For` values.
fn three_forwarded(forwarded: &str, x_forwarded_for: &str) -> Vec<Vec<(&'static str, String)>> {
    let headers = vec![
        ("forwarded", forwarded.to_owned()),
        ("x-forwarded-for", x_forwarded_for.to_owned()),
    ];
    vec![headers; 3]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_bypasses_are_closed_on_a_real_server() {
    let client = client();
    // A new `Forwarded: for=` on every request is not a new key behind an XFF proxy.
    let addr = example_server(BEHIND_A_PROXY).await;
    let spoofing: Vec<_> = (0..3)
        .map(|i| {
            vec![
                ("forwarded", format!("for=198.51.100.{i}")),
                ("x-forwarded-for", "203.0.113.7".to_owned()),
            ]
        })
        .collect();
    assert_eq!(
        statuses_with(&client, addr, &spoofing).await,
        [200, 200, 429]
    );

    // `Forwarded: proto=https` is neither a 400 nor a free pass.
    for action in ["reject", "allow"] {
        let yaml = format!("{BEHIND_A_PROXY}  on_missing_key: {action}\n");
        let addr = example_server(&yaml).await;
        let proto_only = three_forwarded("proto=https", "203.0.113.8");
        assert_eq!(
            statuses_with(&client, addr, &proto_only).await,
            [200, 200, 429],
            "{action}"
        );
    }

    // Nor does it make a client allow-listed.
    let yaml = format!("{BEHIND_A_PROXY}  allow_list: {{ ips: [192.0.2.0/24] }}\n");
    let addr = example_server(&yaml).await;
    let exempt_claim = three_forwarded("for=192.0.2.1", "203.0.113.9");
    assert_eq!(
        statuses_with(&client, addr, &exempt_claim).await,
        [200, 200, 429]
    );

    // Garbage left of the client's entry is not parsed.
    let addr = example_server(BEHIND_A_PROXY).await;
    let garbage = vec![
        vec![("x-forwarded-for", "not-an-ip, 203.0.113.99".to_owned())],
        vec![(
            "x-forwarded-for",
            "unknown, _hidden, 203.0.113.99".to_owned(),
        )],
        vec![("x-forwarded-for", "203.0.113.99".to_owned())],
    ];
    assert_eq!(
        statuses_with(&client, addr, &garbage).await,
        [200, 200, 429]
    );

    // An IPv6 client rotating through its /64 has one quota.
    let rotating: Vec<_> = (1..=3)
        .map(|i| vec![("x-forwarded-for", format!("2001:db8:7:7::{i}"))])
        .collect();
    assert_eq!(
        statuses_with(&client, addr, &rotating).await,
        [200, 200, 429]
    );

    // Behind proxies that write Forwarded, that header and only that one is believed.
    let yaml = format!("{BEHIND_A_PROXY}  client_ip_header: forwarded\n");
    let addr = example_server(&yaml).await;
    let forwarded: Vec<_> = (0..3)
        .map(|i| {
            vec![
                ("forwarded", "proto=http, for=203.0.113.10".to_owned()),
                ("x-forwarded-for", format!("198.51.100.{i}")),
            ]
        })
        .collect();
    assert_eq!(
        statuses_with(&client, addr, &forwarded).await,
        [200, 200, 429]
    );
}
