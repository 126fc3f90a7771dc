//! TLS (`rediss://`): a server whose certificate comes from a throwaway CA is trusted when
//! `tls_ca_file` names that CA and refused without it; the plain port keeps working.

use std::path::{Path, PathBuf};
use std::process::Command;

use ratelimit_core::Overrides;
use ratelimit_core::{Config, RateLimiter, Source};
use ratelimit_tests::RedisServer;
use ratelimit_tests::ports::{release_port, reserve_port};

/// A throwaway CA and a server certificate it signed for `127.0.0.1` and `localhost`.
struct Certs {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("the TLS tests need the `openssl` command-line tool to make certificates: {e}")
        });
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn make_certs() -> Certs {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    openssl(
        path,
        &[
            &["req", "-x509", "-nodes", "-days", "1"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=ratelimit test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        path,
        &[
            &["req", "-nodes"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        path.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("write extensions");
    openssl(
        path,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    Certs {
        ca: path.join("ca.crt"),
        cert: path.join("server.crt"),
        key: path.join("server.key"),
        _dir: dir,
    }
}

/// A server with its usual plain port (which the harness pings) and a TLS port.
fn start_tls_server(certs: &Certs) -> (RedisServer, u16) {
    let tls_port = reserve_port(false).to_string();
    let (ca, cert, key) = (
        certs.ca.display().to_string(),
        certs.cert.display().to_string(),
        certs.key.display().to_string(),
    );
    let redis = RedisServer::start_with_args(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    (redis, tls_port.parse().expect("port"))
}

fn config(addr: &str, extra: &str) -> String {
    format!(
        "rate_limiter:
  redis:
    addrs: [\"{addr}\"]
    timeout: 2s
{extra}
  windows:
    - max_requests: 2
      duration: 1m
"
    )
}

fn parse(text: &str) -> Result<Config, ratelimit_core::ConfigError> {
    Config::from_yaml_str_with(text, Some(Path::new("config.yaml")), &Overrides::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_configured_ca_decides_in_redis() {
    let certs = make_certs();
    let (redis, tls_port) = start_tls_server(&certs);
    let url = format!("rediss://127.0.0.1:{tls_port}");

    // (a) The CA from `tls_ca_file` is trusted.
    let yaml = config(&url, &format!("    tls_ca_file: {}", certs.ca.display()));
    let limiter = RateLimiter::new(parse(&yaml).expect("config"))
        .await
        .expect("TLS connection with the configured CA");
    for _ in 0..2 {
        let decision = limiter.allow("user:tls").await.expect("allow");
        assert_eq!(decision.source(), Source::Redis);
        assert!(decision.allowed());
    }
    let decision = limiter.allow("user:tls").await.expect("allow");
    assert_eq!(decision.source(), Source::Redis);
    assert!(
        !decision.allowed(),
        "the third request in the window is denied"
    );

    // (b) Without it, the self-made CA is not trusted and the error says why.
    let refused = RateLimiter::new(parse(&config(&url, "")).expect("config")).await;
    let error = refused
        .expect_err("an untrusted certificate is refused")
        .to_string();
    let lower = error.to_lowercase();
    assert!(
        lower.contains("certificate") || lower.contains("tls"),
        "the error should name TLS or the certificate: {error}"
    );

    // (c) The plain port still answers, both to the harness and to a limiter.
    let mut plain = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("plain connection");
    let pong: String = redis::cmd("PING")
        .query_async(&mut plain)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
    let limiter = RateLimiter::new(parse(&config(&redis.addr(), "")).expect("config"))
        .await
        .expect("plain connection");
    let decision = limiter.allow("user:tls").await.expect("allow");
    assert_eq!(decision.source(), Source::Redis);
    assert!(
        !decision.allowed(),
        "the same Redis state behind both ports"
    );

    drop(redis);
    release_port(tls_port);
}

#[test]
fn tls_ca_file_errors_name_the_field() {
    let err = parse(&config(
        "rediss://127.0.0.1:6390",
        "    tls_ca_file: /nonexistent/ca.crt",
    ))
    .expect_err("a missing CA file is refused");
    assert_eq!(err.field(), Some("rate_limiter.redis.tls_ca_file"));
    assert!(err.to_string().contains("/nonexistent/ca.crt"));

    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("ca.crt");
    std::fs::write(&not_pem, "not a certificate").expect("write");
    let err = parse(&config(
        "rediss://127.0.0.1:6390",
        &format!("    tls_ca_file: {}", not_pem.display()),
    ))
    .expect_err("a file without a certificate is refused");
    assert_eq!(err.field(), Some("rate_limiter.redis.tls_ca_file"));

    let certs = make_certs();
    let err = parse(&config(
        "127.0.0.1:6390",
        &format!("    tls_ca_file: {}", certs.ca.display()),
    ))
    .expect_err("a CA without a rediss:// address is refused");
    assert_eq!(err.field(), Some("rate_limiter.redis.tls_ca_file"));
}
