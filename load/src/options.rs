//! What a run does, built in code with [`Options`] or read from the command line with
//! [`Command::parse`].

use std::path::PathBuf;
use std::time::Duration;

use crate::error::LoadError;
use crate::redis_setup::RedisChoice;

/// The command-line usage.
pub const USAGE: &str = "\
usage: ratelimit-load [OPTIONS]

Starts Redis and N api-server instances sharing it, drives HTTP load over them, and prints
requests/s, statuses, latency, Redis commands/s per node and the instances' memory as
Markdown. Exits non-zero if any answer is neither 200 nor 429, or a request gets no answer.

  --redis KIND          standalone | cluster | none       (default: standalone)
  --redis-url URL,...   use an existing Redis (several URLs = a cluster) instead
  --instances N         api-server instances              (default: 3)
  --server-bin PATH     the api-server binary (default: built with
                        `cargo build --release -p example-api-server`)
  --config FILE         the instances' configuration      (default: load/config.yaml)
  --connections N       client connections, round-robin over the instances (default: 64)
  --duration D          measured load, e.g. 10s, 500ms, 1m (a bare number is seconds)
                                                          (default: 10s)
  --warmup D            unmeasured load before it         (default: 1s)
  --keys N              distinct API keys                 (default: 10000)
  --free-share F        share of the keys in the free tier, mostly denied (default: 0.1)
  --rate R              fixed arrival rate, requests/s in all (default: as fast as possible)
  --json FILE           also write the report as JSON to FILE (`-`: to stdout, instead
                        of the Markdown)
  -h, --help            this text";

/// The parameters of a run. Every setter takes and returns the options, so a run reads as one
/// expression; [`run`](crate::run) checks them.
///
/// ```
/// use std::time::Duration;
/// use ratelimit_load::{Options, RedisChoice};
///
/// let options = Options::default()
///     .with_redis(RedisChoice::Standalone)
///     .with_instances(2)
///     .with_duration(Duration::from_secs(2));
/// assert!(options.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) redis: RedisChoice,
    pub(crate) instances: usize,
    pub(crate) server_bin: Option<PathBuf>,
    pub(crate) config: PathBuf,
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) keys: u64,
    pub(crate) free_share: f64,
    pub(crate) rate: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            redis: RedisChoice::Standalone,
            instances: 3,
            server_bin: None,
            config: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml")),
            connections: 64,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            keys: 10_000,
            free_share: 0.1,
            rate: None,
        }
    }
}

impl Options {
    /// Which Redis the instances share.
    pub fn with_redis(mut self, redis: RedisChoice) -> Self {
        self.redis = redis;
        self
    }

    /// How many api-server instances to start.
    pub fn with_instances(mut self, instances: usize) -> Self {
        self.instances = instances;
        self
    }

    /// The api-server binary to start; without it, a release build is made with cargo.
    pub fn with_server_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.server_bin = Some(path.into());
        self
    }

    /// The instances' configuration file.
    pub fn with_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = path.into();
        self
    }

    /// Client connections, spread round-robin over the instances.
    pub fn with_connections(mut self, connections: usize) -> Self {
        self.connections = connections;
        self
    }

    /// How long the measured load lasts.
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// How long the unmeasured load before it lasts (zero: none).
    pub fn with_warmup(mut self, warmup: Duration) -> Self {
        self.warmup = warmup;
        self
    }

    /// How many distinct keys the requests carry.
    pub fn with_keys(mut self, keys: u64) -> Self {
        self.keys = keys;
        self
    }

    /// The share of the keys (0 to 1) sent in the free tier, whose small limit denies most of
    /// their requests.
    pub fn with_free_share(mut self, share: f64) -> Self {
        self.free_share = share;
        self
    }

    /// A fixed arrival rate, in requests a second over all connections; `None` sends as fast
    /// as the connections go.
    pub fn with_rate(mut self, rate: Option<u64>) -> Self {
        self.rate = rate;
        self
    }

    /// Refuses options that cannot make a run.
    pub fn validate(&self) -> Result<(), LoadError> {
        let invalid = |message: &str| Err(LoadError::InvalidOptions(message.to_owned()));
        if self.instances == 0 {
            return invalid("--instances must be at least 1");
        }
        if self.connections == 0 {
            return invalid("--connections must be at least 1");
        }
        if self.duration.is_zero() {
            return invalid("--duration must be longer than zero");
        }
        if self.keys == 0 {
            return invalid("--keys must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.free_share) {
            return invalid("--free-share must be between 0 and 1");
        }
        if self.rate == Some(0) {
            return invalid("--rate must be at least 1 request a second");
        }
        if matches!(&self.redis, RedisChoice::Urls(urls) if urls.is_empty()) {
            return invalid("--redis-url needs at least one URL");
        }
        Ok(())
    }

    /// Keys `0..free_keys()` are in the free tier.
    pub(crate) fn free_keys(&self) -> u64 {
        ((self.keys as f64 * self.free_share).round() as u64).min(self.keys)
    }
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Print the usage.
    Help,
    /// Run with these options; write JSON to this file (`-`: stdout) if given.
    Run(Options, Option<PathBuf>),
}

impl Command {
    /// Reads the arguments (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, LoadError> {
        let mut options = Options::default();
        let mut json = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| LoadError::Usage(format!("{name} needs a value\n\n{USAGE}")))
            };
            match arg.as_str() {
                "-h" | "--help" => return Ok(Self::Help),
                "--redis" => {
                    options.redis = match value("--redis")?.as_str() {
                        "standalone" => RedisChoice::Standalone,
                        "cluster" => RedisChoice::Cluster,
                        "none" | "memory" => RedisChoice::None,
                        other => {
                            return Err(LoadError::Usage(format!(
                                "--redis: `{other}` is not standalone, cluster or none"
                            )));
                        }
                    };
                }
                "--redis-url" => {
                    let urls = value("--redis-url")?
                        .split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(|u| {
                            if u.contains("://") {
                                u.to_owned()
                            } else {
                                format!("redis://{u}")
                            }
                        })
                        .collect();
                    options.redis = RedisChoice::Urls(urls);
                }
                "--instances" => options.instances = number("--instances", &value("--instances")?)?,
                "--server-bin" => options.server_bin = Some(value("--server-bin")?.into()),
                "--config" => options.config = value("--config")?.into(),
                "--connections" => {
                    options.connections = number("--connections", &value("--connections")?)?;
                }
                "--duration" => options.duration = duration("--duration", &value("--duration")?)?,
                "--warmup" => options.warmup = duration("--warmup", &value("--warmup")?)?,
                "--keys" => options.keys = number("--keys", &value("--keys")?)?,
                "--free-share" => {
                    options.free_share = number("--free-share", &value("--free-share")?)?
                }
                "--rate" => options.rate = Some(number("--rate", &value("--rate")?)?),
                "--json" => json = Some(value("--json")?.into()),
                other => {
                    return Err(LoadError::Usage(format!(
                        "unknown argument `{other}`\n\n{USAGE}"
                    )));
                }
            }
        }
        options.validate()?;
        Ok(Self::Run(options, json))
    }
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, LoadError> {
    text.trim()
        .parse()
        .map_err(|_| LoadError::Usage(format!("{name}: `{text}` is not a valid number")))
}

/// `500ms`, `10s`, `2m`, or a bare number of seconds (`1.5`).
fn duration(name: &str, text: &str) -> Result<Duration, LoadError> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .and_then(|n| Duration::try_from_secs_f64(n * scale).ok())
        .ok_or_else(|| {
            LoadError::Usage(format!(
                "{name}: `{text}` is not a duration like 500ms, 10s or 1m"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, LoadError> {
        Command::parse(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn every_option_is_read() {
        let Ok(Command::Run(options, json)) = parse(&[
            "--redis",
            "cluster",
            "--instances",
            "5",
            "--server-bin",
            "/bin/api",
            "--config",
            "c.yaml",
            "--connections",
            "8",
            "--duration",
            "1500ms",
            "--warmup",
            "0",
            "--keys",
            "77",
            "--free-share",
            "0.5",
            "--rate",
            "1000",
            "--json",
            "-",
        ]) else {
            panic!("the arguments are valid");
        };
        assert_eq!(options.redis, RedisChoice::Cluster);
        assert_eq!(options.instances, 5);
        assert_eq!(options.server_bin, Some(PathBuf::from("/bin/api")));
        assert_eq!(options.config, PathBuf::from("c.yaml"));
        assert_eq!(options.connections, 8);
        assert_eq!(options.duration, Duration::from_millis(1500));
        assert_eq!(options.warmup, Duration::ZERO);
        assert_eq!(options.keys, 77);
        assert_eq!(options.free_keys(), 39);
        assert_eq!(options.rate, Some(1000));
        assert_eq!(json, Some(PathBuf::from("-")));
    }

    #[test]
    fn redis_urls_get_a_scheme() {
        let Ok(Command::Run(options, _)) =
            parse(&["--redis-url", "127.0.0.1:7000, redis://h:7001"])
        else {
            panic!("the arguments are valid");
        };
        assert_eq!(
            options.redis,
            RedisChoice::Urls(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://h:7001".into()
            ])
        );
    }

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(duration("d", "10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(duration("d", "2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(
            duration("d", "250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(duration("d", "3").ok(), Some(Duration::from_secs(3)));
        assert!(duration("d", "soon").is_err());
        assert!(duration("d", "-1s").is_err());
    }

    #[test]
    fn bad_arguments_are_refused_with_their_name() {
        for (args, needle) in [
            (&["--instances", "0"][..], "--instances"),
            (&["--keys", "many"][..], "--keys"),
            (&["--free-share", "2"][..], "--free-share"),
            (&["--redis", "sentinel"][..], "sentinel"),
            (&["--rate"][..], "--rate needs a value"),
            (&["--bogus"][..], "unknown argument `--bogus`"),
        ] {
            match parse(args) {
                Err(e) => assert!(e.to_string().contains(needle), "{args:?}: {e}"),
                Ok(c) => panic!("{args:?} accepted as {c:?}"),
            }
        }
        assert!(matches!(parse(&["-h"]), Ok(Command::Help)));
    }
}
