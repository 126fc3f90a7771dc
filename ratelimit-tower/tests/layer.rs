//! The layer as code uses it: the builder, the hooks, keys from what the application knows,
//! reloads that keep what code set, answers a client can rely on, two layers on one limiter,
//! and a server that gives no peer address.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Capture, config, hello, hello_behind, request, send, statuses};
use http::StatusCode;
use ratelimit_core::{Algorithm, Config, FakeClock, Policy, RateLimiter, Window};
use ratelimit_core::{HeaderFamilies, LegacyReset, MissingKey};
use ratelimit_tower::{
    CookieKey, ExtensionKey, HeaderKey, PathParam, ProxyError, RateLimit, RateLimitInfo,
    RateLimitLayer, RequestInfo,
};
use tower::{Layer, ServiceBuilder, ServiceExt};

const PEER: &str = "198.51.100.20:5000";

fn from_peer() -> http::Request<String> {
    request("/", Some(PEER), &[])
}

/// A limiter on a fake clock, so that time moves only when a test says so.
fn clocked(yaml: &str) -> (RateLimiter, FakeClock) {
    let clock = FakeClock::new(1_700_000_000_000_000);
    let limiter =
        RateLimiter::new_lazy(config(yaml).with_clock(clock.clone())).expect("valid config");
    (limiter, clock)
}

// --- Answers a client can rely on ---------------------------------------------------------

#[tokio::test]
async fn retry_after_and_t_name_the_same_moment() {
    for algorithm in [
        "sliding_window",
        "token_bucket",
        "fixed_window",
        "sliding_counter",
    ] {
        let (limiter, clock) = clocked(&format!(
            "rate_limiter:\n  algorithm: {algorithm}\n  windows: [{{ max_requests: 3, duration: 1m }}]\n"
        ));
        let service = hello_behind(RateLimitLayer::from_limiter(limiter));
        // Once, then twice 2.5 s later: the fourth request is denied.
        send(&service, from_peer()).await;
        clock.advance(Duration::from_millis(2500));
        send(&service, from_peer()).await;
        send(&service, from_peer()).await;
        let denied = send(&service, from_peer()).await;
        assert_eq!(denied.status, 429, "{algorithm}: {denied:?}");
        let retry: u64 = denied
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert_eq!(
            denied.header("ratelimit"),
            Some(format!("\"default-1m\";r=0;t={retry}").as_str()),
            "{algorithm}"
        );
        assert!(
            denied.body.contains(&format!("retry in {retry} s")),
            "{algorithm}"
        );
        // Waiting exactly that long is enough, a second less is not (for the sliding log,
        // whose retry time is exact).
        if algorithm == "sliding_window" {
            assert_eq!(retry, 58, "57.5 s rounded up");
            clock.advance(Duration::from_secs(retry - 1));
            assert_eq!(send(&service, from_peer()).await.status, 429);
            clock.advance(Duration::from_secs(1));
            assert_eq!(send(&service, from_peer()).await.status, 200);
        }
    }
}

#[tokio::test]
async fn allowed_responses_carry_the_time_until_the_quota_is_back() {
    let (limiter, clock) =
        clocked("rate_limiter:\n  windows: [{ max_requests: 3, duration: 1m }]\n");
    let service = hello_behind(RateLimitLayer::from_limiter(limiter));
    let first = send(&service, from_peer()).await;
    assert_eq!(first.header("ratelimit"), Some("\"default-1m\";r=2;t=60"));
    clock.advance(Duration::from_millis(10_500));
    let second = send(&service, from_peer()).await;
    assert_eq!(second.header("ratelimit"), Some("\"default-1m\";r=1;t=60"));
}

#[tokio::test]
async fn legacy_reset_is_epoch_seconds_unless_configured() {
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    };
    let yaml = "rate_limiter:\n  windows: [{ max_requests: 1, duration: 1m }]\n";
    let service = hello_behind(RateLimitLayer::new(config(yaml)));
    let before = now();
    let allowed = send(&service, from_peer()).await;
    let denied = send(&service, from_peer()).await;
    let after = now();
    for reply in [&allowed, &denied] {
        let reset: u64 = reply
            .header("x-ratelimit-reset")
            .and_then(|v| v.parse().ok())
            .expect("reset");
        // A client computing `reset - now` waits about the window, never less.
        assert!(
            (before + 60..=after + 61).contains(&reset),
            "{reset} not a minute after {before}"
        );
    }
    let delta = format!("{yaml}  legacy_reset: delta_seconds\n");
    let service = hello_behind(RateLimitLayer::new(config(&delta)));
    send(&service, from_peer()).await;
    let denied = send(&service, from_peer()).await;
    assert_eq!(
        denied.header("x-ratelimit-reset"),
        denied.header("retry-after")
    );
    // In code, over the configuration.
    let service = hello_behind(
        RateLimitLayer::new(config(yaml)).with_legacy_reset(LegacyReset::DeltaSeconds),
    );
    let reply = send(&service, from_peer()).await;
    assert_eq!(reply.header("x-ratelimit-reset"), Some("60"));
}

#[tokio::test]
async fn policies_are_named_and_counted_in_requests() {
    let yaml = "
rate_limiter:
  windows: [{ max_requests: 10, duration: 1m }, { max_requests: 100, duration: 1h }]
";
    let service = hello_behind(RateLimitLayer::new(config(yaml)));
    let reply = send(&service, from_peer()).await;
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"default-1m\";q=10;w=60, \"default-1h\";q=100;w=3600")
    );
    assert_eq!(reply.header("ratelimit"), Some("\"default-1m\";r=9;t=60"));
    // A policy charging 4 permits a request: 10 permits are 2 requests.
    let layer = RateLimitLayer::builder()
        .policy_name("exports")
        .per_minute(10)
        .cost(4)
        .build()
        .expect("layer");
    let service = hello_behind(layer);
    let first = send(&service, from_peer()).await;
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"exports-1m\";q=2;w=60")
    );
    assert_eq!(first.header("ratelimit"), Some("\"exports-1m\";r=1;t=60"));
    assert_eq!(first.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("1"));
    send(&service, from_peer()).await;
    let denied = send(&service, from_peer()).await;
    assert_eq!(denied.status, 429);
    let problem = denied.json();
    assert_eq!(
        problem["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(problem["status"], 429);
    assert_eq!(
        problem["violated-policies"],
        serde_json::json!(["exports-1m"])
    );
    assert!(problem.get("policy").is_none() && problem.get("retry_after").is_none());
}

#[tokio::test]
async fn two_layers_append_their_items() {
    let limiter =
        RateLimiter::new_lazy(Config::new(100, Duration::from_secs(3600))).expect("limiter");
    let global = RateLimitLayer::from_limiter(limiter.clone());
    let route = RateLimitLayer::builder()
        .limiter(limiter.clone())
        .policy_name("login")
        .per_minute(2)
        .build()
        .expect("route layer");
    let service = ServiceBuilder::new()
        .layer(global)
        .layer(route)
        .service_fn(hello);
    let reply = send(&service, from_peer()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.all("ratelimit-policy"),
        ["\"login-1m\";q=2;w=60", "\"default-1h\";q=100;w=3600"]
    );
    assert_eq!(
        reply.all("ratelimit"),
        ["\"login-1m\";r=1;t=60", "\"default-1h\";r=99;t=3600"]
    );
    // The legacy family holds one policy: the one with the fewest requests left.
    assert_eq!(reply.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("1"));
    send(&service, from_peer()).await;
    let denied = send(&service, from_peer()).await;
    assert_eq!(denied.status, 429);
    assert_eq!(denied.all("ratelimit").len(), 2, "{denied:?}");
    // Each request counted once under each policy: 3 requests reached the global layer.
    let global = limiter.peek("198.51.100.20").await.expect("peek");
    assert_eq!(global.remaining(), 97);
}

// --- The builder ----------------------------------------------------------------------------

#[tokio::test]
async fn the_builder_makes_a_layer_in_one_expression() {
    let layer = RateLimitLayer::builder()
        .per_minute(2)
        .per_hour(10)
        .algorithm(Algorithm::SlidingWindow)
        .key(HeaderKey::new(http::HeaderName::from_static("x-api-key")))
        .on_missing_key(MissingKey::Deny)
        .headers(HeaderFamilies {
            ietf: true,
            legacy: false,
        })
        .build()
        .expect("layer");
    let service = hello_behind(layer);
    let keyed = || request("/", Some(PEER), &[("x-api-key", b"k1")]);
    assert_eq!(statuses(&service, 3, keyed).await, [200, 200, 429]);
    let reply = send(&service, request("/", Some(PEER), &[("x-api-key", b"k2")])).await;
    assert_eq!(
        reply.header("ratelimit-policy"),
        Some("\"default-1m\";q=2;w=60, \"default-1h\";q=10;w=3600")
    );
    assert_eq!(reply.header("x-ratelimit-limit"), None);
    assert_eq!(
        send(&service, from_peer()).await.status,
        429,
        "no key: deny"
    );
}

#[test]
fn the_builder_refuses_what_cannot_work() {
    assert!(RateLimitLayer::builder().build().is_err(), "no window");
    assert!(RateLimitLayer::builder().per_minute(0).build().is_err());
    assert!(
        RateLimitLayer::builder()
            .per_minute(2)
            .cost(3)
            .build()
            .is_err()
    );
    let limiter = RateLimiter::new_lazy(Config::new(5, Duration::from_secs(1))).expect("limiter");
    let unnamed = RateLimitLayer::builder()
        .limiter(limiter.clone())
        .per_minute(2)
        .build();
    assert!(
        matches!(unnamed, Err(ratelimit_tower::Error::UnnamedPolicy)),
        "{unnamed:?}"
    );
    // Sharing the limiter's own policy is fine.
    assert!(RateLimitLayer::builder().limiter(limiter).build().is_ok());
    let error = RateLimitLayer::builder()
        .per_minute(0)
        .build()
        .expect_err("zero limit");
    assert!(error.to_string().contains("at least 1"), "{error}");
}

#[test]
fn new_never_panics_on_a_valid_config() {
    for config in [
        Config::new(2, Duration::from_secs(60)),
        Config::new(1, Duration::from_millis(1)).with_redis("redis://127.0.0.1:1"),
        config("rate_limiter:\n  windows: [{ max_requests: 3, duration: 1h }]\n"),
    ] {
        drop(RateLimitLayer::new(config));
    }
}

// --- Reloads keep what code set -------------------------------------------------------------

#[tokio::test]
async fn reloads_keep_what_code_set() {
    let yaml = "rate_limiter:\n  windows: [{ max_requests: 1, duration: 1m }]\n";
    let limiter = RateLimiter::new_lazy(config(yaml)).expect("limiter");
    let shadowed = RateLimitLayer::from_limiter(limiter.clone())
        .with_shadow(true)
        .on_denied(|_| {});
    let legacy_only = RateLimitLayer::from_limiter(limiter.clone()).with_headers(HeaderFamilies {
        ietf: false,
        legacy: true,
    });
    let with_info = RateLimitLayer::from_limiter(limiter.clone()).with_info_in_response(true);
    let reloads = [
        shadowed.reload_handle(),
        legacy_only.reload_handle(),
        with_info.reload_handle(),
    ];
    let shadowed = hello_behind(shadowed);
    let legacy_only = hello_behind(legacy_only);
    let with_info = hello_behind(with_info);
    assert_eq!(statuses(&shadowed, 3, from_peer).await, [200, 200, 200]);
    // The file says shadow: false and both families; code said otherwise, and still does.
    let file = format!("{yaml}  shadow: false\n  headers: [ietf, legacy]\n");
    for reload in &reloads {
        reload.apply(limiter.reconfigure(config(&file)).expect("reconfigure"));
    }
    assert_eq!(statuses(&shadowed, 3, from_peer).await, [200, 200, 200]);
    let reply = send(&legacy_only, request("/", Some("198.51.100.21:1"), &[])).await;
    assert_eq!(reply.header("ratelimit"), None);
    assert_eq!(reply.header("x-ratelimit-limit"), Some("1"));
    let response = with_info
        .oneshot(request("/", Some("198.51.100.22:1"), &[]))
        .await
        .expect("infallible");
    let info = response.extensions().get::<RateLimitInfo>();
    assert_eq!(info.map(|info| info.decision.remaining()), Some(0));

    // A key set in code survives too, while the windows follow the file.
    let limiter = RateLimiter::new_lazy(config(yaml)).expect("limiter");
    let layer = RateLimitLayer::builder()
        .limiter(limiter.clone())
        .key(HeaderKey::new(http::HeaderName::from_static("x-user")))
        .build()
        .expect("layer");
    let reload = layer.reload_handle();
    let service = hello_behind(layer);
    let user = || request("/", Some(PEER), &[("x-user", b"ann")]);
    assert_eq!(statuses(&service, 2, user).await, [200, 429]);
    let two = "rate_limiter:\n  windows: [{ max_requests: 3, duration: 1m }]\n";
    reload.apply(limiter.reconfigure(config(two)).expect("reconfigure"));
    assert_eq!(statuses(&service, 3, user).await, [200, 200, 429]);
}

// --- Hooks ----------------------------------------------------------------------------------

#[tokio::test]
async fn hooks_see_every_denial_and_shape_the_response() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let layer = RateLimitLayer::builder()
        .per_minute(1)
        .on_denied(move |denial| {
            let mut log = log.lock().expect("lock");
            log.push(format!(
                "{} {} {} {}",
                denial.policy_id().unwrap_or("-"),
                denial.request().uri.path(),
                String::from_utf8_lossy(denial.key()),
                denial.shadow()
            ));
        })
        .denied_response(|denial, mut response| {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
                .headers_mut()
                .insert("x-denied-by", http::HeaderValue::from_static("ratelimit"));
            *response.body_mut() = Bytes::from(format!("wait {} s", denial.retry_after_secs()));
            response
        })
        .build()
        .expect("layer");
    let service = hello_behind(layer);
    assert_eq!(
        send(&service, request("/a", Some(PEER), &[])).await.status,
        200
    );
    let denied = send(&service, request("/b", Some(PEER), &[])).await;
    assert_eq!(denied.status, 503);
    assert_eq!(denied.body, "wait 60 s");
    assert_eq!(denied.header("x-denied-by"), Some("ratelimit"));
    assert_eq!(
        denied.header("retry-after"),
        Some("60"),
        "the layer's headers stay"
    );
    assert_eq!(
        *seen.lock().expect("lock"),
        ["default-1m /b 198.51.100.20 false"]
    );

    // Shadow denials are reported too, and answered by the inner service.
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    let layer = RateLimitLayer::new(Config::new(1, Duration::from_secs(60)))
        .with_shadow(true)
        .on_denied(move |denial| {
            assert!(denial.shadow());
            counter.fetch_add(1, Ordering::Relaxed);
        });
    let service = hello_behind(layer);
    assert_eq!(statuses(&service, 4, from_peer).await, [200, 200, 200, 200]);
    assert_eq!(count.load(Ordering::Relaxed), 3);
}

// --- Keys from what the application knows --------------------------------------------------

#[derive(Clone)]
struct UserId(u64);

#[tokio::test]
async fn keys_from_an_extension_a_cookie_a_path_and_a_closure() {
    // An authenticated user, set by an earlier layer.
    let by_user = RateLimitLayer::builder()
        .per_minute(1)
        .key(ExtensionKey::new(|user: &UserId| {
            format!("user:{}", user.0)
        }))
        .build()
        .expect("layer");
    let service = ServiceBuilder::new()
        .map_request(|mut request: http::Request<String>| {
            let user = if request.uri().path() == "/ann" { 1 } else { 2 };
            request.extensions_mut().insert(UserId(user));
            request
        })
        .layer(by_user)
        .service_fn(hello);
    let got = [
        send(&service, request("/ann", Some(PEER), &[]))
            .await
            .status,
        send(&service, request("/ann", Some(PEER), &[]))
            .await
            .status,
        send(&service, request("/bob", Some(PEER), &[]))
            .await
            .status,
    ];
    assert_eq!(got, [200, 429, 200], "one quota a user, the same peer");

    // A cookie, in code and from the configuration.
    let yaml =
        "rate_limiter:\n  key: cookie:session\n  windows: [{ max_requests: 1, duration: 1m }]\n";
    for layer in [
        RateLimitLayer::new(config(yaml)),
        RateLimitLayer::builder()
            .per_minute(1)
            .key(CookieKey::new("session"))
            .build()
            .expect("layer"),
    ] {
        let service = hello_behind(layer);
        let with = |cookie: &'static [u8]| request("/", Some(PEER), &[("cookie", cookie)]);
        assert_eq!(
            send(&service, with(b"theme=dark; session=s1")).await.status,
            200
        );
        assert_eq!(send(&service, with(b"session=s1")).await.status, 429);
        assert_eq!(send(&service, with(b"session=s2")).await.status, 200);
        assert_eq!(
            send(&service, with(b"theme=dark")).await.status,
            400,
            "no session: no key"
        );
    }

    // A path parameter, however it is spelled.
    let by_tenant = RateLimitLayer::builder()
        .per_minute(1)
        .key(PathParam::new("/t/{tenant}/orders", "tenant").expect("pattern"))
        .build()
        .expect("layer");
    let service = hello_behind(by_tenant);
    let path = |p: &str| request(p, Some(PEER), &[]);
    assert_eq!(send(&service, path("/t/acme/orders")).await.status, 200);
    assert_eq!(send(&service, path("/t/%61cme/orders")).await.status, 429);
    assert_eq!(send(&service, path("/t/other/orders")).await.status, 200);

    // A closure.
    let by_method = RateLimitLayer::builder()
        .per_minute(1)
        .key(|r: &RequestInfo<'_>| Some(r.method.as_str().to_owned()))
        .build()
        .expect("layer");
    let service = hello_behind(by_method);
    assert_eq!(
        statuses(&service, 2, || request("/x", Some(PEER), &[])).await,
        [200, 429]
    );
}

// --- A server that gives no peer address ----------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn a_missing_peer_is_a_server_error_reported_once() {
    let capture = Capture::default();
    let _guard = capture.start();
    let service = hello_behind(RateLimitLayer::new(Config::new(2, Duration::from_secs(60))));
    for _ in 0..3 {
        let reply = send(&service, request("/", None, &[])).await;
        assert_eq!(reply.status, 500, "{reply:?}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert!(!reply.body.contains("Bad Request"));
    }
    let errors = capture.at(tracing::Level::ERROR);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("into_make_service_with_connect_info"),
        "{errors:?}"
    );
    assert!(errors[0].contains("PeerAddr"), "{errors:?}");

    // A key that needs no peer is not affected, and a missing key is still the client's.
    let by_header = RateLimitLayer::builder()
        .per_minute(1)
        .key(HeaderKey::new(http::HeaderName::from_static("x-api-key")))
        .build()
        .expect("layer");
    let service = hello_behind(by_header);
    let keyed = send(&service, request("/", None, &[("x-api-key", b"k")])).await;
    assert_eq!(keyed.status, 200);
    assert_eq!(send(&service, request("/", None, &[])).await.status, 400);
    // With on_missing_key: allow, a missing peer is no free pass.
    let yaml =
        "rate_limiter:\n  on_missing_key: allow\n  windows: [{ max_requests: 1, duration: 1m }]\n";
    let service = hello_behind(RateLimitLayer::new(config(yaml)));
    assert_eq!(send(&service, request("/", None, &[])).await.status, 500);
}

// --- The service and the types --------------------------------------------------------------

#[tokio::test]
async fn the_service_gives_access_to_what_it_wraps() {
    #[derive(Clone, Debug, PartialEq)]
    struct Inner(u32);
    let mut service: RateLimit<Inner> =
        RateLimitLayer::new(Config::new(1, Duration::from_secs(1))).layer(Inner(1));
    assert_eq!(service.get_ref(), &Inner(1));
    service.get_mut().0 = 2;
    assert!(format!("{service:?}").contains("RateLimit"));
    assert_eq!(service.into_inner(), Inner(2));
}

#[test]
fn public_types_are_errors_and_debug() {
    fn is_error<E: std::error::Error + Send + Sync + 'static>() {}
    is_error::<ProxyError>();
    is_error::<ratelimit_tower::Error>();
    assert!(!ProxyError::Hidden.to_string().is_empty());
    let builder = RateLimitLayer::builder().per_minute(1);
    assert!(format!("{builder:?}").contains("RateLimitLayerBuilder"));
    let layer = builder.build().expect("layer");
    assert!(format!("{layer:?}").contains("RateLimitLayer"));
    assert!(format!("{:?}", layer.reload_handle()).contains("ReloadHandle"));
    let policy = Policy::new("p", [Window::per_minute(1)]);
    let target = ratelimit_tower::Target::new(policy, None, false);
    assert_eq!(target.policy_id(0), Some("p-1m"));
    assert!(format!("{:?}", ExtensionKey::new(|u: &UserId| u.0.to_string())).contains("UserId"));
}
