//! What a run does, built in code with [`Options`] or read from the command line with
//! [`Args`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ratelimit_core::parse_duration;

use crate::error::LoadError;
use crate::redis_setup::RedisChoice;

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

/// Options setters that each store their argument in one field as it is: `with_x(x)` sets `x`.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident($field:ident: $ty:ty);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
    };
}

impl Options {
    setters! {
        /// Which Redis the instances share.
        with_redis(redis: RedisChoice);
        /// How many api-server instances to start.
        with_instances(instances: usize);
        /// Client connections, spread round-robin over the instances.
        with_connections(connections: usize);
        /// How long the measured load lasts.
        with_duration(duration: Duration);
        /// How long the unmeasured load before it lasts (zero: none).
        with_warmup(warmup: Duration);
        /// How many distinct keys the requests carry.
        with_keys(keys: u64);
        /// The share of the keys (0 to 1) sent in the free tier, whose small limit denies most of
        /// their requests.
        with_free_share(free_share: f64);
        /// A fixed arrival rate, in requests a second over all connections; `None` sends as fast
        /// as the connections go.
        with_rate(rate: Option<u64>);
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

/// The command line of `ratelimit-load`. Options left out keep the values of
/// [`Options::default`]; durations are read as the configuration reads them (`500ms`, `10s`,
/// `1m`; a bare number is refused).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ratelimit-load",
    about = "Starts Redis and N api-server instances sharing it, drives HTTP load over them, and \
             prints requests/s, statuses, latency, Redis commands/s per node and the instances' \
             memory as Markdown.",
    after_help = "Exit status: 0 when every answer was 200 or 429; 1 when any answer was \
                  neither or a request got no answer; 2 for bad arguments; 130 when interrupted."
)]
pub struct Args {
    /// The Redis the instances share: a throwaway server, a throwaway 3-master cluster, or
    /// none (instances decide in memory) [default: standalone]
    #[arg(long, value_enum, value_name = "KIND")]
    redis: Option<RedisKind>,
    /// Use an existing Redis instead (several URLs: a cluster), left running
    #[arg(
        long,
        value_name = "URL,...",
        value_delimiter = ',',
        conflicts_with = "redis"
    )]
    redis_url: Vec<String>,
    /// api-server instances [default: 3]
    #[arg(long, value_name = "N")]
    instances: Option<usize>,
    /// The api-server binary [default: built with `cargo build --release -p example-api-server`]
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// The instances' configuration [default: load/config.yaml]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Client connections, round-robin over the instances [default: 64]
    #[arg(long, value_name = "N")]
    connections: Option<usize>,
    /// Measured load, e.g. 500ms, 10s, 1m [default: 10s]
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Unmeasured load before it (0s: none) [default: 1s]
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Distinct API keys [default: 10000]
    #[arg(long, value_name = "N")]
    keys: Option<u64>,
    /// Share of the keys in the free tier, mostly denied [default: 0.1]
    #[arg(long, value_name = "F")]
    free_share: Option<f64>,
    /// Fixed arrival rate, requests/s in all [default: as fast as possible]
    #[arg(long, value_name = "R")]
    rate: Option<u64>,
    /// Also write the report as JSON to FILE (`-`: to stdout, instead of the Markdown)
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// The throwaway Redis of `--redis`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RedisKind {
    Standalone,
    Cluster,
    #[value(alias = "memory")]
    None,
}

impl Args {
    /// The run the arguments describe, checked with [`Options::validate`].
    pub fn options(&self) -> Result<Options, LoadError> {
        let defaults = Options::default();
        let redis = if !self.redis_url.is_empty() {
            RedisChoice::Urls(
                self.redis_url
                    .iter()
                    .map(|u| u.trim())
                    .filter(|u| !u.is_empty())
                    .map(|u| {
                        if u.contains("://") {
                            u.to_owned()
                        } else {
                            format!("redis://{u}")
                        }
                    })
                    .collect(),
            )
        } else {
            match self.redis {
                None => defaults.redis.clone(),
                Some(RedisKind::Standalone) => RedisChoice::Standalone,
                Some(RedisKind::Cluster) => RedisChoice::Cluster,
                Some(RedisKind::None) => RedisChoice::None,
            }
        };
        let options = Options {
            redis,
            instances: self.instances.unwrap_or(defaults.instances),
            server_bin: self.server_bin.clone().or(defaults.server_bin),
            config: self.config.clone().unwrap_or(defaults.config),
            connections: self.connections.unwrap_or(defaults.connections),
            duration: self.duration.unwrap_or(defaults.duration),
            warmup: self.warmup.unwrap_or(defaults.warmup),
            keys: self.keys.unwrap_or(defaults.keys),
            free_share: self.free_share.unwrap_or(defaults.free_share),
            rate: self.rate.or(defaults.rate),
        };
        options.validate()?;
        Ok(options)
    }

    /// Where to write the report as JSON (`-`: stdout), if asked.
    pub fn json(&self) -> Option<&Path> {
        self.json.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Options, String> {
        let args =
            Args::try_parse_from(std::iter::once("ratelimit-load").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        args.options().map_err(|e| e.to_string())
    }

    #[test]
    fn every_option_is_read() {
        let args = Args::try_parse_from([
            "ratelimit-load",
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
            "0s",
            "--keys",
            "77",
            "--free-share",
            "0.5",
            "--rate",
            "1000",
            "--json",
            "-",
        ])
        .expect("the arguments are valid");
        let options = args.options().expect("the options are valid");
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
        assert_eq!(args.json(), Some(Path::new("-")));
    }

    #[test]
    fn left_out_options_keep_the_defaults() {
        let options = parse(&[]).expect("no arguments is a valid run");
        let defaults = Options::default();
        assert_eq!(options.redis, defaults.redis);
        assert_eq!(options.duration, defaults.duration);
        assert_eq!(options.config, defaults.config);
        assert!(matches!(parse(&["--redis", "memory"]), Ok(o) if o.redis == RedisChoice::None));
    }

    #[test]
    fn redis_urls_get_a_scheme() {
        let options = parse(&["--redis-url", "127.0.0.1:7000, redis://h:7001"])
            .expect("the arguments are valid");
        assert_eq!(
            options.redis,
            RedisChoice::Urls(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://h:7001".into()
            ])
        );
    }

    #[test]
    fn durations_are_read_as_the_configuration_reads_them() {
        let duration = |text: &str| parse(&["--duration", text]).map(|o| o.duration);
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        for refused in ["3", "soon", "-1s"] {
            assert!(duration(refused).is_err(), "{refused} accepted");
        }
        assert!(duration("3").is_err_and(|e| e.contains("has no unit")));
    }

    #[test]
    fn bad_arguments_are_refused_with_their_name() {
        for (args, needle) in [
            (&["--instances", "0"][..], "--instances"),
            (&["--keys", "many"][..], "--keys"),
            (&["--free-share", "2"][..], "--free-share"),
            (&["--redis", "sentinel"][..], "sentinel"),
            (
                &["--redis", "cluster", "--redis-url", "h:1"][..],
                "--redis-url",
            ),
            (&["--rate"][..], "--rate"),
            (&["--bogus"][..], "--bogus"),
        ] {
            match parse(args) {
                Err(e) => assert!(e.contains(needle), "{args:?}: {e}"),
                Ok(o) => panic!("{args:?} accepted as {o:?}"),
            }
        }
    }
}
