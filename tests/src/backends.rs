//! The three backends as test subjects: every conformance test runs unchanged against each.

use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use ratelimit_core::{Config, RateLimiter, RedisConfig, RedisMode};

use crate::inspect::{all_keys, keys_without_ttl};
use crate::shared::{shared_cluster, shared_standalone};

/// The Redis timeout of conformance tests: they test semantics, not latency, and run in debug
/// builds on small machines with every test of the binary in parallel. The timeout itself is
/// tested by the degradation suites.
const TEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Which backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-memory backend.
    Memory,
    /// The shared standalone `redis-server` of this test binary.
    Standalone,
    /// The shared 3-master cluster of this test binary.
    Cluster,
}

impl Backend {
    /// A key prefix no other test uses, so tests can share one Redis.
    pub fn unique_prefix(test: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!(
            "t{}-{}:{test}:",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// `config` pointed at this backend, under `prefix`.
    pub fn configure(self, config: Config, prefix: &str) -> Config {
        let config = config.with_prefix(prefix);
        match self {
            Self::Memory => config,
            Self::Standalone => config.with_redis_config(
                RedisConfig::new([shared_standalone().url()]).with_timeout(TEST_TIMEOUT),
            ),
            Self::Cluster => config.with_redis_config(
                RedisConfig::new(shared_cluster().urls())
                    .with_mode(RedisMode::Cluster)
                    .with_timeout(TEST_TIMEOUT),
            ),
        }
    }

    /// A limiter for `config` on this backend, under `prefix`.
    pub async fn limiter(self, config: Config, prefix: &str) -> RateLimiter {
        RateLimiter::new(self.configure(config, prefix))
            .await
            .unwrap_or_else(|e| panic!("building a limiter on {self:?}: {e}"))
    }

    /// The Redis nodes holding data (every master of the cluster); none for memory.
    pub fn redis_urls(self) -> Vec<String> {
        match self {
            Self::Memory => Vec::new(),
            Self::Standalone => vec![shared_standalone().url()],
            Self::Cluster => shared_cluster().master_urls(),
        }
    }

    /// Every Redis key under `prefix`.
    pub fn keys_under(self, prefix: &str) -> Vec<String> {
        all_keys(&self.redis_urls())
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect()
    }

    /// Panics if any Redis key under `prefix` has no TTL.
    pub fn assert_every_key_expires(self, prefix: &str) {
        let stuck: Vec<String> = keys_without_ttl(&self.redis_urls())
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect();
        assert!(
            stuck.is_empty(),
            "keys without a TTL on {self:?}: {stuck:?}"
        );
    }
}

/// Generates one `#[tokio::test]` per backend for each listed `async fn name(Backend)`.
#[macro_export]
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Backend::Memory).await
                }
            )*
        }
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Backend::Standalone).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Backend::Cluster).await
                }
            )*
        }
    };
}
