//! The HTTP settings that decide who a client is and what it is told: `client_ip_header`,
//! `ipv6_prefix`, `legacy_reset` and `cookie:` keys, read from YAML, with defaults, and refused
//! with file, line and field when wrong.

use std::path::Path;

use ratelimit_core::Config;
use ratelimit_core::{ClientIpHeader, HttpConfig, KeySource, LegacyReset, Overrides};

fn read(yaml: &str) -> Result<Config, ratelimit_core::ConfigError> {
    Config::from_yaml_str_with(yaml, Some(Path::new("limits.yaml")), &Overrides::default())
}

const BASE: &str = "rate_limiter:\n  windows: [{ max_requests: 5, duration: 1m }]\n";

#[test]
fn defaults_believe_x_forwarded_for_and_key_ipv6_by_64() {
    let config = read(BASE).expect("valid");
    let http = config.http();
    assert_eq!(http.client_ip_header, ClientIpHeader::XForwardedFor);
    assert_eq!(http.ipv6_prefix, 64);
    assert_eq!(http.legacy_reset, LegacyReset::EpochSeconds);
    assert_eq!(*http, HttpConfig::default());
    let in_code = Config::new(5, std::time::Duration::from_secs(60));
    assert_eq!(in_code.http().ipv6_prefix, 64);
}

#[test]
fn the_settings_are_read() {
    let yaml = format!(
        "{BASE}  client_ip_header: CF-Connecting-IP\n  ipv6_prefix: 56\n  legacy_reset: delta_seconds\n  key: cookie:SID+ip\n"
    );
    let config = read(&yaml).expect("valid");
    let http = config.http();
    assert_eq!(
        http.client_ip_header,
        ClientIpHeader::Other("cf-connecting-ip".into())
    );
    assert_eq!(http.ipv6_prefix, 56);
    assert_eq!(http.legacy_reset, LegacyReset::DeltaSeconds);
    assert_eq!(
        http.key,
        Some(KeySource::All(vec![
            KeySource::Cookie("SID".into()),
            KeySource::ClientIp
        ]))
    );
    for (text, header) in [
        ("forwarded", ClientIpHeader::Forwarded),
        ("x-real-ip", ClientIpHeader::XRealIp),
        ("X-Forwarded-For", ClientIpHeader::XForwardedFor),
    ] {
        let config = read(&format!("{BASE}  client_ip_header: {text}\n")).expect("valid");
        assert_eq!(config.http().client_ip_header, header);
    }
}

#[test]
fn wrong_values_name_the_file_line_and_field() {
    let cases = [
        (
            "  ipv6_prefix: 129\n",
            "rate_limiter.ipv6_prefix",
            "between 0 and 128",
        ),
        ("  ipv6_prefix: 300\n", "rate_limiter.ipv6_prefix", ""),
        (
            "  client_ip_header: \"x forwarded\"\n",
            "rate_limiter.client_ip_header",
            "not a header name",
        ),
        ("  legacy_reset: minutes\n", "rate_limiter.legacy_reset", ""),
        ("  key: cookie:\n", "rate_limiter.key", "not a key source"),
        (
            "  client_ip_headers: forwarded\n",
            "rate_limiter.client_ip_headers",
            "unknown field",
        ),
    ];
    for (line, field, message) in cases {
        let yaml = format!("{BASE}{line}");
        let error = read(&yaml).expect_err(line);
        let text = error.to_string();
        assert_eq!(error.field(), Some(field), "{text}");
        assert!(text.starts_with("limits.yaml:3"), "{text}");
        assert!(text.contains(message), "{text}");
    }
}
