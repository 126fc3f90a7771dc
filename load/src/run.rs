//! One load run from start to end: Redis, instances, warm-up, measured load with snapshots of
//! the Redis and limiter counters on both sides, then the report. Everything started here is
//! owned by this function's locals, so it is stopped when the run ends, fails, panics or is
//! dropped (Ctrl-C).

use crate::driver::{Plan, drive};
use crate::error::LoadError;
use crate::instances::{Instance, Launch, LimiterCounters};
use crate::options::Options;
use crate::redis_setup::{CommandCounts, RedisSetup};
use crate::report::{InstanceMemory, Latency, NodeCommands, Report, Setup, Statuses};
use crate::server_bin::build_api_server;

/// Runs the load `options` describe and reports what it measured. Progress goes to stderr.
///
/// An `Err` means the run could not be carried out (a process did not start, Redis did not
/// answer); a run that saw wrong answers is an `Ok` report with
/// [`failures`](Report::failures).
pub async fn run(options: &Options) -> Result<Report, LoadError> {
    options.validate()?;
    let program = match &options.server_bin {
        Some(path) => path.clone(),
        None => {
            progress("building the api-server (release)");
            build_api_server().await?
        }
    };
    progress(&format!("starting Redis: {}", options.redis));
    let redis = RedisSetup::start(&options.redis).await?;
    let log_dir = tempfile::Builder::new()
        .prefix("ratelimit-load-")
        .tempdir()
        .map_err(|source| LoadError::Io {
            what: "creating a directory for the instances' logs".into(),
            source,
        })?;
    let launch = Launch {
        program: &program,
        config: &options.config,
        redis_url: redis.url.as_deref(),
        log_dir: log_dir.path(),
    };
    progress(&format!(
        "starting {} api-server instance(s) of {}",
        options.instances,
        program.display()
    ));
    let mut instances = Vec::with_capacity(options.instances);
    for index in 0..options.instances {
        instances.push(Instance::start(index, &launch).await?);
    }
    let rss_start: Vec<Option<u64>> = instances.iter().map(Instance::rss_kib).collect();

    let plan = Plan {
        instances: instances.iter().map(Instance::addr).collect(),
        connections: options.connections,
        duration: options.warmup,
        keys: options.keys,
        free_keys: options.free_keys(),
        rate: options.rate,
    };
    if !options.warmup.is_zero() {
        progress(&format!("warming up for {:?}", options.warmup));
        drive(&plan).await;
    }
    let commands_before = redis.command_counts().await?;
    let counters_before = counters(&instances).await;
    progress(&format!("measuring for {:?}", options.duration));
    let tally = drive(&Plan {
        duration: options.duration,
        ..plan
    })
    .await;
    let commands_after = redis.command_counts().await?;
    let counters_after = counters(&instances).await;
    let rss_end: Vec<Option<u64>> = instances.iter().map(Instance::rss_kib).collect();

    let seconds = tally.elapsed.as_secs_f64().max(f64::EPSILON);
    let requests = tally.requests();
    let mut failures = Vec::new();
    for (status, n) in &tally.other {
        failures.push(format!("{n} answer(s) with status {status}"));
    }
    if tally.errors > 0 {
        failures.push(format!(
            "{} request(s) without an answer, e.g. {}",
            tally.errors,
            tally.error_samples.join("; ")
        ));
    }
    if requests == 0 {
        failures.push("no request was sent".to_owned());
    }
    for instance in &mut instances {
        if instance.exited() {
            failures.push(format!("the instance on {} exited", instance.addr()));
        }
    }
    // The limiters' counters, over the instances that answered /metrics both times.
    let mut limiter = LimiterCounters::default();
    for (instance, (before, after)) in instances
        .iter()
        .zip(counters_before.iter().zip(&counters_after))
    {
        match (before, after) {
            (Ok(before), Ok(after)) => limiter = limiter.plus(after.since(*before)),
            _ => failures.push(format!(
                "the instance on {} did not answer /metrics; its counters are left out",
                instance.addr()
            )),
        }
    }
    let latency = &tally.latency_us;
    let report = Report {
        setup: Setup {
            redis: options.redis.to_string(),
            instances: options.instances,
            connections: options.connections,
            duration_secs: options.duration.as_secs_f64(),
            warmup_secs: options.warmup.as_secs_f64(),
            keys: options.keys,
            free_keys: options.free_keys(),
            rate: options.rate,
        },
        requests,
        seconds,
        requests_per_sec: requests as f64 / seconds,
        status: Statuses {
            ok: tally.ok,
            too_many_requests: tally.too_many,
            other: tally.other.clone(),
            errors: tally.errors,
            error_samples: tally.error_samples.clone(),
        },
        latency: if latency.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50_us: latency.value_at_quantile(0.5),
                p99_us: latency.value_at_quantile(0.99),
                p999_us: latency.value_at_quantile(0.999),
                max_us: latency.max(),
                mean_us: latency.mean(),
            }
        },
        redis: redis
            .nodes
            .iter()
            .zip(commands_after.iter().zip(&commands_before))
            .map(|(node, (after, before))| node_commands(node, after.since(*before), seconds))
            .collect(),
        instances: instances
            .iter()
            .zip(rss_start.iter().zip(&rss_end))
            .map(|(instance, (start, end))| InstanceMemory {
                addr: instance.addr().to_string(),
                pid: instance.pid(),
                rss_start_kib: *start,
                rss_end_kib: *end,
            })
            .collect(),
        limiter,
        failures,
    };
    progress("stopping the instances and Redis");
    drop(instances);
    drop(redis);
    Ok(report)
}

fn node_commands(node: &str, counts: CommandCounts, seconds: f64) -> NodeCommands {
    NodeCommands {
        node: node.to_owned(),
        commands: counts.total,
        commands_per_sec: counts.total as f64 / seconds,
        evalsha: counts.evalsha,
        evalsha_per_sec: counts.evalsha as f64 / seconds,
    }
}

/// Each instance's limiter counters, or why they could not be read.
async fn counters(instances: &[Instance]) -> Vec<Result<LimiterCounters, LoadError>> {
    let mut all = Vec::with_capacity(instances.len());
    for instance in instances {
        all.push(instance.counters().await);
    }
    all
}

fn progress(message: &str) {
    eprintln!("ratelimit-load: {message}");
}
