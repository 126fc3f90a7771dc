//! Rule paths that could never mean what their author expects are refused when the file is
//! read, with its path, the line of the pattern and the field; the same file read again after a
//! fix is accepted. A rule that silently matches nothing is a rule clients walk around.

use std::io::Write;

use ratelimit_core::Config;
use ratelimit_core::{ConfigError, Overrides};

/// A file whose second rule's `path` is on line 11.
fn file_with(path: &str) -> String {
    format!(
        "\
rate_limiter:
  windows:
    - max_requests: 10
      duration: 1m
  rules:
    - name: health
      match:
        path: /health
      exempt: true
    - name: api
      match:
        path: \"{path}\"
        methods: [GET]
"
    )
}

const PATTERN_LINE: usize = 12;

fn read(text: &str) -> (Result<Config, ConfigError>, tempfile::NamedTempFile) {
    let mut file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temporary file");
    file.write_all(text.as_bytes()).expect("write");
    let config = Config::from_yaml_str_with(text, Some(file.path()), &Overrides::default());
    (config, file)
}

#[test]
fn patterns_that_never_match_what_they_say_are_refused_with_file_line_and_field() {
    let refused: &[(&str, &str)] = &[
        ("/api/{*rest}/x", "only allowed as the last segment"),
        ("/api/*/x", "only allowed as the last segment"),
        ("/api/users/%6De", "percent-encoded"),
        ("/api%2Fusers", "percent-encoded"),
        ("/api//users", "`//`"),
        ("/api/users/", "trailing `/`"),
        ("/api/../admin", "`..`"),
        ("/api/./users", "`.`"),
        ("/api/users/:id", "axum 0.7"),
        ("/files/*rest", "axum 0.7"),
        ("/api/users/{id", "braces"),
        ("/api/users/{id}.json", "braces"),
        ("/api/users/{}", "braces"),
        ("/api/a*", "`*` is a wildcard only"),
        ("/api/users?id=1", "query"),
        ("api/users", "starts with `/`"),
    ];
    for &(pattern, says) in refused {
        let (result, file) = read(&file_with(pattern));
        let error = result.expect_err(pattern);
        assert_eq!(
            error.field(),
            Some("rate_limiter.rules[1].match.path"),
            "{pattern}: {error}"
        );
        let location = error.location().expect("a location");
        assert_eq!(location.file(), Some(file.path()), "{pattern}: {error}");
        assert_eq!(location.line(), Some(PATTERN_LINE), "{pattern}: {error}");
        let message = error.to_string();
        assert!(
            message.contains(says),
            "{pattern}: `{message}` lacks `{says}`"
        );
        assert!(
            message.starts_with(&format!("{}:{PATTERN_LINE}", file.path().display())),
            "{message}"
        );
    }
}

#[test]
fn the_patterns_axum_routes_are_accepted() {
    for pattern in [
        "/",
        "/*",
        "/api/users/{id}",
        "/api/users/me",
        "/files/{*rest}",
        "/api/*",
        "/{*path}",
        "/a b/café",
        "/v1.2/x;y",
    ] {
        let (result, _file) = read(&file_with(pattern));
        let config = result.unwrap_or_else(|e| panic!("{pattern}: {e}"));
        assert_eq!(
            config.http().rules[1].matches.path.as_deref(),
            Some(pattern)
        );
    }
}
