//! The configuration surface: the YAML format of the design document, errors that name the
//! field, the file and the line, environment overrides, human units and builder validation.
//!
//! Every test parses with explicit [`Overrides`] (never the process environment), except the
//! ones about the environment, which run in a child process so no other test can see the
//! variable.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ratelimit_core::{Algorithm, Config, Error, FallbackMode, RateLimiter, RedisConfig, Window};
use ratelimit_core::{ConfigError, Overrides, UnitError, parse_duration, parse_size};

/// The `rate_limiter` block of the design document, unchanged.
const DESIGN: &str = "\
rate_limiter:
  redis:
    addrs: [redis-1:6379, redis-2:6379, redis-3:6379]
    pool_size: 100
    timeout: 100ms
  windows:
    - max_requests: 100
      duration: 1m
    - max_requests: 1000
      duration: 1h
  cache:
    enabled: true
    ttl: 500ms
    max_size: 100MB
  fallback:
    mode: local
    circuit_breaker_threshold: 10
";

/// `rate_limiter:` and one window, then `$rest`: a case about a section beside the windows.
macro_rules! minimal_then {
    ($rest:literal) => {
        concat!(
            "\
rate_limiter:
  windows:
    - max_requests: 10
      duration: 1m
",
            $rest
        )
    };
}

/// `rate_limiter:` and a Redis section of one address, then `$rest` (more of that section),
/// then one window: a case about the Redis section.
macro_rules! redis_then {
    ($rest:literal) => {
        concat!(
            "\
rate_limiter:
  redis:
    addrs:
      - redis-1:6379
",
            $rest,
            "  windows:
    - max_requests: 10
      duration: 1m
"
        )
    };
}

/// Lines written by [`minimal_then!`] and [`redis_then!`] before `$rest`: its first line is
/// line `HEAD + 1`.
const HEAD: usize = 4;

/// The smallest valid block: one window, no Redis.
const MINIMAL: &str = minimal_then!("");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_str_with(text, None, &Overrides::default())
}

fn parse_as(text: &str, origin: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_str_with(text, Some(Path::new(origin)), &Overrides::default())
}

fn with_redis_url(text: &str, url: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_str_with(
        text,
        None,
        &Overrides {
            redis_url: Some(url.to_owned()),
        },
    )
}

fn line_of(err: &ConfigError) -> Option<usize> {
    err.location().and_then(|l| l.line())
}

#[test]
fn design_block_parses_and_every_value_reads_back() {
    let config = parse(DESIGN).expect("the design block is valid");

    let redis = config.redis().expect("the design block configures Redis");
    assert_eq!(
        redis.addrs(),
        ["redis-1:6379", "redis-2:6379", "redis-3:6379"]
    );
    assert_eq!(
        redis.urls(),
        [
            "redis://redis-1:6379",
            "redis://redis-2:6379",
            "redis://redis-3:6379"
        ]
    );
    assert!(redis.is_cluster(), "several addresses mean a cluster");
    assert_eq!(redis.pool_size(), 100);
    assert_eq!(redis.timeout(), Duration::from_millis(100));

    let policy = config.policy();
    assert_eq!(
        policy.windows(),
        [
            Window::new(100, Duration::from_secs(60)),
            Window::new(1000, Duration::from_secs(3600)),
        ]
    );
    assert_eq!(policy.windows()[0].label(), "1m");
    assert_eq!(policy.windows()[1].label(), "1h");
    assert_eq!(policy.algorithm(), Algorithm::SlidingWindow);
    assert_eq!(policy.cost(), 1);

    let cache = config.cache();
    assert!(cache.enabled());
    assert_eq!(cache.ttl(), Duration::from_millis(500));
    assert_eq!(cache.max_size(), 100_000_000);

    let fallback = config.fallback();
    assert_eq!(fallback.mode(), FallbackMode::Local);
    assert_eq!(fallback.circuit_breaker_threshold(), 10);
    assert_eq!(fallback.cool_down(), Duration::from_secs(1));

    assert_eq!(config.prefix(), "ratelimit:");
    assert_eq!(config.memory().max_keys(), 1_000_000);
    assert_eq!(config.source(), None);
    assert!(config.validate().is_ok());
}

#[test]
fn defaults_fill_the_sections_left_out() {
    let config = parse(MINIMAL).expect("the minimal block is valid");
    assert!(config.redis().is_none(), "no redis section: in memory");
    assert_eq!(config.policy().windows(), [Window::per_minute(10)]);
    assert!(!config.cache().enabled(), "no cache section: no cache");
    assert_eq!(config.fallback().mode(), FallbackMode::Local);
    assert_eq!(config.fallback().circuit_breaker_threshold(), 10);

    let one = parse(
        "\
rate_limiter:
  redis:
    addrs:
      - 127.0.0.1:6379
  windows:
    - max_requests: 10
      duration: 1m
  cache: {}
",
    )
    .expect("one address, empty cache section");
    let redis = one.redis().expect("redis section");
    assert!(!redis.is_cluster(), "one address means standalone");
    assert_eq!(redis.pool_size(), RedisConfig::DEFAULT_POOL_SIZE);
    assert_eq!(redis.timeout(), RedisConfig::DEFAULT_TIMEOUT);
    assert!(one.cache().enabled(), "a cache section turns the cache on");
    assert_eq!(one.cache().ttl(), Duration::from_millis(500));
}

/// A refused configuration: the field the error must name (`None` for a YAML syntax error,
/// whose field is not asserted) and the 1-based line of that field in `yaml` (`HEAD + n`: the
/// `n`th line after the head a macro wrote).
struct Case {
    name: &'static str,
    yaml: &'static str,
    field: Option<&'static str>,
    line: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "unknown field at the top",
        yaml: minimal_then!(
            "  bogus: 1
"
        ),
        field: Some("rate_limiter.bogus"),
        line: HEAD + 1,
    },
    Case {
        name: "unknown field outside rate_limiter",
        yaml: minimal_then!(
            "ratelimiter:
  prefix: app
"
        ),
        field: Some("ratelimiter"),
        line: HEAD + 1,
    },
    Case {
        name: "unknown field in redis",
        yaml: redis_then!(
            "    pool_sise: 4
"
        ),
        field: Some("rate_limiter.redis.pool_sise"),
        line: HEAD + 1,
    },
    Case {
        name: "unknown field in windows[1]",
        yaml: minimal_then!(
            "    - max_requests: 100
      duraton: 1h
"
        ),
        field: Some("rate_limiter.windows[1].duraton"),
        line: HEAD + 2,
    },
    Case {
        name: "unknown field in cache",
        yaml: minimal_then!(
            "  cache:
    ttl: 100ms
    max_bytes: 1MB
"
        ),
        field: Some("rate_limiter.cache.max_bytes"),
        line: HEAD + 3,
    },
    Case {
        name: "unknown field in fallback",
        yaml: minimal_then!(
            "  fallback:
    mode: local
    threshold: 5
"
        ),
        field: Some("rate_limiter.fallback.threshold"),
        line: HEAD + 3,
    },
    Case {
        name: "zero max_requests",
        yaml: minimal_then!(
            "    - max_requests: 0
      duration: 1h
"
        ),
        field: Some("rate_limiter.windows[1].max_requests"),
        line: HEAD + 1,
    },
    Case {
        name: "negative max_requests",
        yaml: "\
rate_limiter:
  windows:
    - max_requests: -5
      duration: 1m
",
        field: Some("rate_limiter.windows[0].max_requests"),
        line: 3,
    },
    Case {
        name: "duration without a unit",
        yaml: minimal_then!(
            "    - max_requests: 100
      duration: 60
"
        ),
        field: Some("rate_limiter.windows[1].duration"),
        line: HEAD + 2,
    },
    Case {
        name: "garbage duration",
        yaml: "\
rate_limiter:
  windows:
    - max_requests: 10
      duration: soon
",
        field: Some("rate_limiter.windows[0].duration"),
        line: 4,
    },
    Case {
        name: "zero duration",
        yaml: minimal_then!(
            "    - max_requests: 100
      duration: 0s
"
        ),
        field: Some("rate_limiter.windows[1].duration"),
        line: HEAD + 2,
    },
    Case {
        name: "duplicate window durations (1m and 60s)",
        yaml: minimal_then!(
            "    - max_requests: 100
      duration: 60s
"
        ),
        field: Some("rate_limiter.windows[1].duration"),
        line: HEAD + 2,
    },
    Case {
        name: "empty windows",
        yaml: "\
rate_limiter:
  prefix: app
  windows: []
",
        field: Some("rate_limiter.windows"),
        line: 3,
    },
    Case {
        name: "missing windows",
        yaml: "\
rate_limiter:
  prefix: app
",
        field: Some("rate_limiter"),
        line: 1,
    },
    Case {
        name: "empty addrs",
        yaml: "\
rate_limiter:
  redis:
    addrs: []
  windows:
    - max_requests: 10
      duration: 1m
",
        field: Some("rate_limiter.redis.addrs"),
        line: 3,
    },
    Case {
        name: "bad address",
        yaml: redis_then!(
            "      - \"redis://:notaport\"
"
        ),
        field: Some("rate_limiter.redis.addrs[1]"),
        line: HEAD + 1,
    },
    Case {
        name: "zero pool_size",
        yaml: redis_then!(
            "    pool_size: 0
"
        ),
        field: Some("rate_limiter.redis.pool_size"),
        line: HEAD + 1,
    },
    Case {
        name: "zero timeout",
        yaml: redis_then!(
            "    pool_size: 8
    timeout: 0ms
"
        ),
        field: Some("rate_limiter.redis.timeout"),
        line: HEAD + 2,
    },
    Case {
        name: "timeout above 60s",
        yaml: "\
rate_limiter:
  redis:
    timeout: 5m
    addrs:
      - redis-1:6379
  windows:
    - max_requests: 10
      duration: 1m
",
        field: Some("rate_limiter.redis.timeout"),
        line: 3,
    },
    Case {
        name: "cache ttl as long as the shortest window",
        yaml: "\
rate_limiter:
  windows:
    - max_requests: 100
      duration: 1m
    - max_requests: 10
      duration: 1s
  cache:
    enabled: true
    ttl: 1s
",
        field: Some("rate_limiter.cache.ttl"),
        line: 9,
    },
    Case {
        name: "cache max_size with a bad unit",
        yaml: minimal_then!(
            "  cache:
    ttl: 100ms
    max_size: 10XB
"
        ),
        field: Some("rate_limiter.cache.max_size"),
        line: HEAD + 3,
    },
    Case {
        name: "unknown algorithm",
        yaml: "\
rate_limiter:
  prefix: app
  algorithm: leaky_bucket
  windows:
    - max_requests: 10
      duration: 1m
",
        field: Some("rate_limiter.algorithm"),
        line: 3,
    },
    Case {
        name: "unknown fallback mode",
        yaml: minimal_then!(
            "  fallback:
    circuit_breaker_threshold: 5
    mode: panic
"
        ),
        field: Some("rate_limiter.fallback.mode"),
        line: HEAD + 3,
    },
    Case {
        name: "zero circuit_breaker_threshold",
        yaml: minimal_then!(
            "  fallback:
    mode: open
    circuit_breaker_threshold: 0
"
        ),
        field: Some("rate_limiter.fallback.circuit_breaker_threshold"),
        line: HEAD + 3,
    },
    Case {
        name: "prefix with a brace",
        yaml: minimal_then!(
            "  prefix: \"app{1}:\"
"
        ),
        field: Some("rate_limiter.prefix"),
        line: HEAD + 1,
    },
    Case {
        name: "zero memory max_keys",
        yaml: minimal_then!(
            "  memory:
    max_keys: 0
"
        ),
        field: Some("rate_limiter.memory.max_keys"),
        line: HEAD + 2,
    },
    Case {
        name: "YAML syntax error",
        yaml: "\
rate_limiter:
  windows:
    - max_requests: 10
      duration: 1m: 2m
",
        field: None,
        line: 4,
    },
    Case {
        name: "wrong type for windows",
        yaml: "\
rate_limiter:
  prefix: app
  windows: 5
",
        field: Some("rate_limiter.windows"),
        line: 3,
    },
    Case {
        name: "sliding_window limit above a million",
        yaml: "\
rate_limiter:
  algorithm: sliding_window
  windows:
    - max_requests: 10
      duration: 1s
    - max_requests: 2000000
      duration: 1h
",
        field: Some("rate_limiter.windows[1].max_requests"),
        line: 6,
    },
    Case {
        name: "unknown redis mode",
        yaml: redis_then!(
            "    mode: sentinel
"
        ),
        field: Some("rate_limiter.redis.mode"),
        line: HEAD + 1,
    },
    Case {
        name: "zero fallback cool_down",
        yaml: minimal_then!(
            "  fallback:
    cool_down: 0s
"
        ),
        field: Some("rate_limiter.fallback.cool_down"),
        line: HEAD + 2,
    },
    Case {
        name: "standalone mode with two addresses",
        yaml: minimal_then!(
            "  redis:
    mode: standalone
    addrs:
      - redis-1:6379
      - redis-2:6379
"
        ),
        field: Some("rate_limiter.redis.mode"),
        line: HEAD + 2,
    },
];

#[test]
fn broken_configs_name_the_field_and_its_line() {
    assert!(CASES.len() >= 20);
    let mut failures = Vec::new();
    for case in CASES {
        let err = match parse_as(case.yaml, "config.yaml") {
            Ok(_) => {
                failures.push(format!("{}: accepted", case.name));
                continue;
            }
            Err(err) => err,
        };
        let shown = err.to_string();
        if !matches!(err, ConfigError::Invalid { .. }) {
            failures.push(format!("{}: not Invalid: {shown}", case.name));
            continue;
        }
        if let Some(field) = case.field
            && err.field() != Some(field)
        {
            failures.push(format!(
                "{}: field {:?}, expected {field:?} ({shown})",
                case.name,
                err.field()
            ));
        }
        if line_of(&err) != Some(case.line) {
            failures.push(format!(
                "{}: line {:?}, expected {} ({shown})",
                case.name,
                line_of(&err),
                case.line
            ));
        }
        if err.location().and_then(|l| l.file()) != Some(Path::new("config.yaml")) {
            failures.push(format!("{}: file not named ({shown})", case.name));
        }
        let prefix = format!("config.yaml:{}:", case.line);
        if !shown.starts_with(&prefix) {
            failures.push(format!("{}: {shown:?} lacks {prefix:?}", case.name));
        }
        if let Some(field) = case.field
            && !shown.contains(&format!(": {field}: "))
        {
            failures.push(format!("{}: {shown:?} lacks the field", case.name));
        }

        // Without an origin the same field and line, shown as `line N`.
        match parse(case.yaml) {
            Ok(_) => failures.push(format!("{}: accepted without origin", case.name)),
            Err(bare) => {
                let shown = bare.to_string();
                if bare.field() != err.field() || line_of(&bare) != line_of(&err) {
                    failures.push(format!("{}: differs without origin: {shown}", case.name));
                }
                if bare.location().and_then(|l| l.file()).is_some() {
                    failures.push(format!("{}: file without origin: {shown}", case.name));
                }
                if !shown.starts_with(&format!("line {}:", case.line)) {
                    failures.push(format!("{}: {shown:?} lacks `line N:`", case.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn display_is_file_line_column_field_message() {
    let yaml = "\
rate_limiter:
  windows:
    - max_requests: 100
      duration: 1m
    - max_requests: 0
      duration: 1h
";
    let err = parse_as(yaml, "config.yaml").expect_err("zero limit");
    let location = err.location().expect("a location");
    assert_eq!(location.line(), Some(5));
    assert_eq!(location.column(), Some(7));
    let shown = err.to_string();
    assert!(
        shown.starts_with("config.yaml:5:7: rate_limiter.windows[1].max_requests: "),
        "{shown}"
    );
    assert!(shown.ends_with("must be at least 1"), "{shown}");
}

#[test]
fn yaml_files_are_read_and_errors_name_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");

    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "\
rate_limiter:
  windows:
    - max_requests: 10
      duration: 1m
    - max_requests: 20
      duration: 60s
",
    )
    .expect("write broken.yaml");
    let err = Config::from_yaml_file(&broken).expect_err("duplicate window");
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{}:6:", broken.display())),
        "{shown}"
    );
    assert_eq!(err.field(), Some("rate_limiter.windows[1].duration"));
    assert_eq!(
        err.location().and_then(|l| l.file()),
        Some(broken.as_path())
    );
    assert_eq!(line_of(&err), Some(6));

    let missing = dir.path().join("missing.yaml");
    let err = Config::from_yaml_file(&missing).expect_err("no such file");
    match &err {
        ConfigError::Read { path, source } => {
            assert_eq!(path, &missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Read, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert_eq!(err.field(), None);
    assert!(err.location().is_none());

    let good = dir.path().join("config.yaml");
    std::fs::write(&good, DESIGN).expect("write config.yaml");
    let config = Config::from_yaml_file(&good).expect("the design block is valid");
    assert_eq!(config.source(), Some(good.as_path()));
    assert_eq!(config.policy().windows().len(), 2);
    assert_eq!(config.cache().max_size(), 100_000_000);
}

#[test]
fn redis_url_override_replaces_the_file_addresses() {
    let yaml = "\
rate_limiter:
  redis:
    addrs:
      - redis-1:6379
      - redis-2:6379
    pool_size: 8
    timeout: 250ms
  windows:
    - max_requests: 10
      duration: 1m
";
    let config = with_redis_url(yaml, "redis://override:6380").expect("valid");
    let redis = config.redis().expect("redis");
    assert_eq!(redis.addrs(), ["redis://override:6380"]);
    assert_eq!(redis.urls(), ["redis://override:6380"]);
    assert!(!redis.is_cluster(), "one address from the override");
    assert_eq!(redis.pool_size(), 8, "the rest of the section is kept");
    assert_eq!(redis.timeout(), Duration::from_millis(250));
}

#[test]
fn redis_url_override_turns_redis_on() {
    let config = parse(MINIMAL).expect("valid");
    assert!(config.redis().is_none());

    let config = with_redis_url(MINIMAL, "127.0.0.1:6379").expect("valid");
    let redis = config.redis().expect("the override adds Redis");
    assert_eq!(redis.addrs(), ["127.0.0.1:6379"]);
    assert_eq!(redis.urls(), ["redis://127.0.0.1:6379"]);
    assert!(!redis.is_cluster());
    assert_eq!(redis.pool_size(), RedisConfig::DEFAULT_POOL_SIZE);
    assert_eq!(redis.timeout(), RedisConfig::DEFAULT_TIMEOUT);
}

#[test]
fn comma_separated_redis_url_is_a_cluster() {
    let config = with_redis_url(MINIMAL, "node-1:7000, node-2:7001,node-3:7002,").expect("valid");
    let redis = config.redis().expect("redis");
    assert_eq!(redis.addrs(), ["node-1:7000", "node-2:7001", "node-3:7002"]);
    assert!(redis.is_cluster());

    // The override is validated like the file: a standalone section refuses several nodes.
    let standalone = "\
rate_limiter:
  redis:
    mode: standalone
    addrs:
      - redis-1:6379
  windows:
    - max_requests: 10
      duration: 1m
";
    assert!(with_redis_url(standalone, "redis-9:6379").is_ok());
    let err = with_redis_url(standalone, "a:1,b:2").expect_err("standalone with two addresses");
    assert_eq!(err.field(), Some("rate_limiter.redis.mode"));
    assert_eq!(line_of(&err), Some(3));
}

/// Set by [`environment_variable_overrides_the_file`] for the child process it spawns.
const CHILD_FLAG: &str = "RATELIMIT_CONFIG_CHILD";

/// Runs only in the child process spawned by [`environment_variable_overrides_the_file`]:
/// parses through the environment-reading entry points and prints what they saw. In an ordinary
/// test run it returns at once.
#[test]
fn env_override_child() {
    if std::env::var_os(CHILD_FLAG).is_none_or(|v| v != "1") {
        return;
    }
    let from_str = Config::from_yaml_str(MINIMAL).expect("valid with the override");
    let redis = from_str.redis().expect("RATELIMIT_REDIS_URL adds Redis");
    println!("STR_ADDRS={}", redis.addrs().join(","));
    println!("STR_CLUSTER={}", redis.is_cluster());

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, DESIGN).expect("write config.yaml");
    let from_file = Config::from_yaml_file(&path).expect("valid with the override");
    let redis = from_file.redis().expect("redis");
    println!("FILE_ADDRS={}", redis.addrs().join(","));
    println!("FILE_POOL={}", redis.pool_size());
    println!("OVERRIDES={:?}", Overrides::from_env().redis_url);
}

#[test]
fn environment_variable_overrides_the_file() {
    let exe = std::env::current_exe().expect("the test binary");
    let output = Command::new(exe)
        .args(["--exact", "env_override_child", "--nocapture"])
        .env(CHILD_FLAG, "1")
        .env("RATELIMIT_REDIS_URL", "env-1:7000,env-2:7001")
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "child failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "STR_ADDRS=env-1:7000,env-2:7001",
        "STR_CLUSTER=true",
        "FILE_ADDRS=env-1:7000,env-2:7001",
        "FILE_POOL=100",
        "OVERRIDES=Some(\"env-1:7000,env-2:7001\")",
    ] {
        assert!(
            // libtest may print the test's name on the same line (one test thread): match the
            // marker anywhere in a line, up to the end of its value.
            stdout
                .lines()
                .any(|l| l.split_whitespace().any(|word| word == expected)),
            "child did not print {expected:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(
        stdout.contains("1 passed"),
        "the child test did not run:\n{stdout}"
    );
}

/// A human-unit parser against its cases: what each accepted text reads as, the texts it
/// refuses, and one refusal whose message must say why (`(text, part of the message)`).
fn check_units<T: PartialEq + std::fmt::Debug>(
    parse: fn(&str) -> Result<T, UnitError>,
    accepted: &[(&str, T)],
    refused: &[&str],
    (refusal, reason): (&str, &str),
) {
    for (text, expected) in accepted {
        assert_eq!(parse(text).as_ref(), Ok(expected), "{text:?}");
    }
    for bad in refused {
        assert!(parse(bad).is_err(), "{bad:?} accepted as {:?}", parse(bad));
    }
    let message = parse(refusal).expect_err(reason).to_string();
    assert!(message.contains(reason), "{refusal:?}: {message}");
}

#[test]
fn durations_take_human_units() {
    check_units(
        parse_duration,
        &[
            ("100ms", Duration::from_millis(100)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("30s", Duration::from_secs(30)),
        ],
        &["60", "abc", "", "10XB", "99999999999999999999999h"],
        ("60", "no unit"),
    );
}

#[test]
fn sizes_take_human_units() {
    check_units(
        parse_size,
        &[
            ("100MB", 100_000_000),
            ("64MiB", 64 * 1024 * 1024),
            ("512", 512),
            ("1KB", 1000),
            ("1kib", 1024),
            ("2GB", 2_000_000_000),
        ],
        &[
            "60XB",
            "10XB",
            "abc",
            "",
            "MB",
            "20000000000GB",
            "99999999999999999999",
        ],
        ("20000000000GB", "too large"),
    );
}

#[test]
fn builder_configs_are_validated() {
    let err = Config::new(0, Duration::from_secs(1))
        .validate()
        .expect_err("zero limit");
    assert_eq!(err.field(), Some("rate_limiter.windows[0].max_requests"));
    assert_eq!(line_of(&err), None);
    assert_eq!(err.location().and_then(|l| l.file()), None);
    let shown = err.to_string();
    assert!(
        shown.starts_with("rate_limiter.windows[0].max_requests: "),
        "{shown}"
    );
    assert!(shown.ends_with("must be at least 1"), "{shown}");

    let err = Config::new(10, Duration::from_secs(60))
        .with_window(Window::per_minute(100))
        .validate()
        .expect_err("duplicate window");
    assert_eq!(err.field(), Some("rate_limiter.windows[1].duration"));

    let err = Config::new(10, Duration::from_secs(60))
        .with_redis("redis://:notaport")
        .validate()
        .expect_err("bad address");
    assert_eq!(err.field(), Some("rate_limiter.redis.addrs[0]"));

    assert!(
        Config::new(10, Duration::from_secs(60))
            .with_redis_cluster(["a:1", "b:2"])
            .validate()
            .is_ok()
    );
}

#[tokio::test]
async fn limiter_refuses_an_invalid_builder_config() {
    let result = RateLimiter::new(Config::new(0, Duration::from_secs(1))).await;
    match result {
        Err(Error::Config(err)) => {
            assert_eq!(err.field(), Some("rate_limiter.windows[0].max_requests"));
        }
        Err(other) => panic!("expected Error::Config, got {other:?}"),
        Ok(_) => panic!("a zero limit was accepted"),
    }
}

#[test]
fn sequences_flush_with_their_key_are_located() {
    let yaml = "\
rate_limiter:
  windows:
  - max_requests: 10
    duration: 1m
  - max_requests: 0
    duration: 1h
";
    let err = parse(yaml).expect_err("a zero limit is refused");
    assert_eq!(err.field(), Some("rate_limiter.windows[1].max_requests"));
    assert_eq!(line_of(&err), Some(5));
}

#[test]
fn a_bad_address_from_the_environment_is_not_blamed_on_the_file() {
    let yaml = "\
rate_limiter:
  redis:
    addrs:
      - redis-1:6379
  windows:
    - max_requests: 10
      duration: 1m
";
    let err = with_redis_url(yaml, "redis://:bad").expect_err("a bad address is refused");
    assert_eq!(err.field(), Some("rate_limiter.redis.addrs[0]"));
    assert_eq!(line_of(&err), None, "the file's own address is fine");
    assert!(err.to_string().contains("RATELIMIT_REDIS_URL"), "{err}");
}
