//! The small promises of the public surface: names, labels, error kinds, refusals. Each is
//! something a caller, a dashboard or an operator reads, so each is held here as written.

use std::time::Duration;

use ratelimit_core::{
    Algorithm, Config, ConfigError, Error, ErrorKind, FallbackMode, HotKeyConfig, Policy,
    PolicyError, RateLimiter, Source, UnitError, Window, parse_duration, parse_size,
};

#[test]
fn window_labels_use_the_largest_unit_that_divides() {
    for (duration, label) in [
        (Duration::from_micros(250), "250us"),
        (Duration::from_millis(500), "500ms"),
        (Duration::from_millis(1500), "1500ms"),
        (Duration::from_secs(90), "90s"),
        (Duration::from_secs(120), "2m"),
        (Duration::from_secs(7200), "2h"),
        (Duration::from_secs(2 * 86_400), "2d"),
    ] {
        assert_eq!(Window::new(1, duration).label(), label, "{duration:?}");
    }
}

#[test]
fn every_policy_refusal_names_its_window() {
    let minute = Window::per_minute(10);
    let cases: [(Policy, PolicyError); 9] = [
        (
            Policy::new("bad name!", [minute]),
            PolicyError::Name("bad name!".into()),
        ),
        (Policy::new("p", []), PolicyError::NoWindow),
        (
            Policy::new("p", [minute, Window::per_hour(0)]),
            PolicyError::ZeroLimit { index: 1 },
        ),
        (
            Policy::new("p", [Window::new(1, Duration::from_micros(999))]),
            PolicyError::WindowTooShort { index: 0 },
        ),
        (
            Policy::new("p", [Window::new(1, Duration::from_secs(31 * 86_400))]),
            PolicyError::WindowTooLong { index: 0 },
        ),
        (
            Policy::new("p", [Window::new(1 << 40, Duration::from_secs(86_400))])
                .with_algorithm(Algorithm::TokenBucket),
            PolicyError::LimitTooLarge { index: 0 },
        ),
        (
            Policy::new("p", [Window::per_hour(1_000_001)]),
            PolicyError::LogTooLarge { index: 0 },
        ),
        (
            Policy::new(
                "p",
                [
                    minute,
                    Window::new(
                        ratelimit_core::MAX_COUNTER_LIMIT + 1,
                        Duration::from_millis(1),
                    ),
                ],
            )
            .with_algorithm(Algorithm::FixedWindow),
            PolicyError::CounterTooLarge { index: 1 },
        ),
        (
            Policy::new(
                "p",
                [Window::new(
                    ratelimit_core::MAX_COUNTER_LIMIT + 1,
                    Duration::from_millis(1),
                )],
            )
            .with_algorithm(Algorithm::SlidingCounter),
            PolicyError::CounterTooLarge { index: 0 },
        ),
    ];
    for (policy, expected) in cases {
        assert_eq!(policy.validate(), Err(expected.clone()), "{policy:?}");
        assert!(!expected.to_string().is_empty());
    }
    assert_eq!(Policy::new("a/b-c_d.e", [minute]).validate(), Ok(()));
    let largest = Window::new(ratelimit_core::MAX_COUNTER_LIMIT, Duration::from_millis(1));
    assert_eq!(
        Policy::new("p", [largest])
            .with_algorithm(Algorithm::FixedWindow)
            .validate(),
        Ok(())
    );
}

#[test]
fn hot_key_settings_read_back_as_set() {
    let config = HotKeyConfig::default()
        .with_capacity(8)
        .with_min_share(0.1)
        .with_sample_every(4)
        .with_window(Duration::from_secs(30))
        .with_shield(false);
    assert!(config.enabled());
    assert_eq!(config.capacity(), 8);
    assert!((config.min_share() - 0.1).abs() < 1e-9);
    assert_eq!(config.sample_every(), 4);
    assert_eq!(config.window(), Duration::from_secs(30));
    assert!(!config.shield());
    assert!(!HotKeyConfig::disabled().enabled());
}

#[test]
fn sources_and_fallback_modes_have_stable_names() {
    for (mode, name) in [
        (FallbackMode::Open, "open"),
        (FallbackMode::Closed, "closed"),
        (FallbackMode::Local, "local"),
    ] {
        assert_eq!(mode.name(), name);
        assert_eq!(mode.to_string(), name);
    }
    for (source, name) in [
        (Source::Redis, "redis"),
        (Source::Memory, "memory"),
        (Source::Cache, "cache"),
        (Source::Fallback(FallbackMode::Open), "fallback_open"),
        (Source::Fallback(FallbackMode::Closed), "fallback_closed"),
        (Source::Fallback(FallbackMode::Local), "fallback_local"),
    ] {
        assert_eq!(source.name(), name);
    }
}

#[test]
fn errors_say_their_kind_and_whether_a_fallback_stands_in() {
    let redis = |kind: redis::ErrorKind| Error::Redis(redis::RedisError::from((kind, "test")));
    let io = Error::Redis(redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "reset",
    )));
    let config_error: ConfigError = Config::from_yaml_str("rate_limiter: [").expect_err("not YAML");
    let cases = [
        (Error::Config(config_error), ErrorKind::Config, false),
        (
            Error::Policy(PolicyError::NoWindow),
            ErrorKind::Config,
            false,
        ),
        (
            Error::CostAboveLimit { cost: 5, limit: 2 },
            ErrorKind::Cost,
            false,
        ),
        (
            Error::Timeout(Duration::from_millis(5)),
            ErrorKind::Timeout,
            true,
        ),
        (io, ErrorKind::Connection, true),
        (
            redis(redis::ErrorKind::UnexpectedReturnType),
            ErrorKind::Server,
            true,
        ),
        (Error::UnexpectedReply("nil".into()), ErrorKind::Other, true),
    ];
    for (error, kind, backend) in cases {
        assert_eq!(error.kind(), kind, "{error}");
        assert_eq!(error.is_backend_failure(), backend, "{error}");
    }
}

#[test]
fn unit_errors_say_what_is_wrong() {
    assert_eq!(parse_duration("60"), Err(UnitError::NoUnit("60".into())));
    assert!(matches!(
        parse_duration("1 fortnight"),
        Err(UnitError::Duration { .. })
    ));
    assert_eq!(parse_size("MB"), Err(UnitError::Size("MB".into())));
    assert_eq!(parse_size("10XB"), Err(UnitError::SizeUnit("XB".into())));
    assert_eq!(
        parse_size("20000000000GB"),
        Err(UnitError::TooLarge("20000000000GB".into()))
    );
    let text: String = UnitError::NoUnit("60".into()).into();
    assert!(text.contains("no unit"), "{text}");
}

/// The rule refusals `Config::validate` makes, each naming the field at fault.
#[test]
fn rule_refusals_name_the_field() {
    let rule = |name: &str, path: &str| {
        format!(
            "    - name: {name}\n      match:\n        path: {path}\n      windows:\n        - max_requests: 1\n          duration: 1m\n"
        )
    };
    let config = |rules: &str| {
        format!(
            "rate_limiter:\n  windows:\n    - max_requests: 10\n      duration: 1m\n  rules:\n{rules}"
        )
    };
    for (rules, field) in [
        (rule("default", "/a"), "rate_limiter.rules[0].name"),
        (
            rule("a", "/a") + &rule("a", "/b"),
            "rate_limiter.rules[1].name",
        ),
        (rule("a", "/a/{"), "rate_limiter.rules[0].match.path"),
    ] {
        let error = Config::from_yaml_str(&config(&rules)).expect_err(field);
        assert!(
            error.field().is_some_and(|f| f.starts_with(field)),
            "{field}: {error}"
        );
    }
}

#[tokio::test]
async fn invariants_print_one_line_each() {
    let limiter = RateLimiter::new(Config::new(10, Duration::from_secs(60)))
        .await
        .expect("limiter");
    let invariants = limiter.check_invariants().await;
    let text = invariants.to_string();
    assert_eq!(text.lines().count(), invariants.iter().count(), "{text}");
    for check in invariants.iter() {
        assert!(text.contains(check.name), "{text}");
    }
    assert!(invariants.all_ok(), "{text}");
}

/// Each policy refusal in a file names the field at fault, in the top-level policy and in a rule.
#[test]
fn policy_refusals_in_a_file_name_the_field() {
    let top = |windows: &str, extra: &str| format!("rate_limiter:\n{extra}  windows:\n{windows}");
    let window = |max: &str, duration: &str| {
        format!("    - max_requests: {max}\n      duration: {duration}\n")
    };
    let cases = [
        (
            top(&window("0", "1m"), ""),
            "rate_limiter.windows[0].max_requests",
        ),
        (
            top(&window("1", "500us"), ""),
            "rate_limiter.windows[0].duration",
        ),
        (
            top(&(window("1", "1m") + &window("2", "1m")), ""),
            "rate_limiter.windows[1].duration",
        ),
        (
            top(&window("10", "1m"), "  cost: 11\n"),
            "rate_limiter.cost",
        ),
        (
            top(
                &window("10", "1m"),
                "  algorithm: token_bucket\n  spread: 0\n",
            ),
            "rate_limiter.spread",
        ),
        (
            top(&window("10", "1m"), "  fallback:\n    cool_down: 0s\n"),
            "rate_limiter.fallback.cool_down",
        ),
        (
            top(&window("10", "1m"), "")
                + "  rules:\n    - name: bad name\n      match:\n        path: /a\n",
            "rate_limiter.rules[0].name",
        ),
    ];
    for (yaml, field) in cases {
        let error = Config::from_yaml_str(&yaml).expect_err(field);
        assert_eq!(error.field(), Some(field), "{yaml}\n{error}");
    }
}
