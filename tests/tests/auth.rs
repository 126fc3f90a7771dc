//! Redis AUTH: passwords come from a file or the environment, never from the YAML, work for the
//! default user and for ACL users, and never show up in debug output or errors.

use std::path::Path;
use std::time::Duration;

use ratelimit_core::Overrides;
use ratelimit_core::{Config, RateLimiter, Source};
use ratelimit_tests::RedisServer;

fn config(redis: &RedisServer, auth: &str) -> String {
    format!(
        "rate_limiter:
  redis:
    addrs: [{}]
    timeout: 1s
{auth}
  windows:
    - max_requests: 2
      duration: 1m
",
        redis.addr()
    )
}

fn parse(text: &str) -> Result<Config, ratelimit_core::ConfigError> {
    Config::from_yaml_str_with(text, Some(Path::new("config.yaml")), &Overrides::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_from_a_file_authenticates() {
    let redis = RedisServer::start_with_args(&["--requirepass", "s3cret-from-file"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("redis-password");
    std::fs::write(&secret, "s3cret-from-file\n").expect("write secret");
    let yaml = config(&redis, &format!("    password_file: {}", secret.display()));
    let config = parse(&yaml).expect("config");
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "the password leaked into Debug"
    );
    let limiter = RateLimiter::new(config).await.expect("authenticated");
    let decision = limiter.allow("user:1").await.expect("allow");
    assert_eq!(decision.source(), Source::Redis);
    assert!(decision.allowed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_authenticates_and_a_wrong_password_is_refused() {
    // Only this user may do anything, and only on the limiter's keys.
    let redis = RedisServer::start_with_args(&[
        "--user",
        "limiter",
        "on",
        ">acl-pass",
        "~ratelimit:*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]);
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    std::fs::write(&good, "acl-pass").expect("write");
    let auth = format!(
        "    username: limiter\n    password_file: {}",
        good.display()
    );
    let limiter = RateLimiter::new(parse(&config(&redis, &auth)).expect("config"))
        .await
        .expect("the ACL user authenticates");
    assert_eq!(
        limiter.allow("user:1").await.expect("allow").source(),
        Source::Redis
    );

    let bad = dir.path().join("bad");
    std::fs::write(&bad, "wrong-pass").expect("write");
    let auth = format!(
        "    username: limiter\n    password_file: {}",
        bad.display()
    );
    let refused = RateLimiter::new(parse(&config(&redis, &auth)).expect("config")).await;
    let error = refused
        .expect_err("a wrong password is refused")
        .to_string();
    assert!(
        !error.contains("wrong-pass"),
        "the password leaked into the error: {error}"
    );
    // Built lazily, the limiter does not fail: it falls back.
    let lazy = RateLimiter::new_lazy(parse(&config(&redis, &auth)).expect("config")).expect("lazy");
    let decision = lazy.allow("user:1").await.expect("allow");
    assert!(matches!(decision.source(), Source::Fallback(_)));
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[test]
fn missing_secrets_are_named_with_their_field_and_line() {
    let redis = RedisServer::start();
    let unset = "RATELIMIT_TEST_SURELY_UNSET_PASSWORD_VARIABLE";
    let err = parse(&config(&redis, &format!("    password_env: {unset}")))
        .expect_err("an unset variable is refused");
    assert_eq!(err.field(), Some("rate_limiter.redis.password_env"));
    assert_eq!(err.location().and_then(|l| l.line()), Some(5));
    assert!(err.to_string().contains(unset));

    let err = parse(&config(&redis, "    password_file: /nonexistent/secret"))
        .expect_err("a missing file is refused");
    assert_eq!(err.field(), Some("rate_limiter.redis.password_file"));

    let err = parse(&config(&redis, "    username: app")).expect_err("a user without a password");
    assert_eq!(err.field(), Some("rate_limiter.redis.username"));

    let err = parse(&config(&redis, "    password: inline"))
        .expect_err("a password written in the YAML is refused");
    assert_eq!(err.field(), Some("rate_limiter.redis.password"));
}
