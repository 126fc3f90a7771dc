//! The load itself: `connections` keep-alive connections spread round-robin over the
//! instances (connection `i` goes to instance `i mod N`), each sending `GET /api/hello` with
//! a random key of the population, either back to back (closed loop) or at a fixed arrival
//! rate shared by all connections (open loop).
//!
//! At a fixed rate, latency is measured from when a request was *due*, not from when a busy
//! connection got round to sending it, so a stall shows up in the percentiles instead of
//! being hidden by fewer requests (no coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::StatusCode;
use hyper::header::HeaderValue;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::http::Connection;

/// The route every request goes to.
const PATH: &str = "/api/hello";
/// A request that takes longer than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Highest latency the histogram holds (higher values are recorded as this), in µs.
const MAX_LATENCY_US: u64 = 60_000_000;
/// How many distinct error messages a report keeps.
const ERROR_SAMPLES: usize = 5;

/// What to send, where, for how long.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) instances: Vec<SocketAddr>,
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
    /// Distinct keys; keys `0..free_keys` are sent in the free tier.
    pub(crate) keys: u64,
    pub(crate) free_keys: u64,
    /// Requests a second in all, or `None` for as fast as the connections go.
    pub(crate) rate: Option<u64>,
}

/// What one phase of load saw.
pub(crate) struct Tally {
    pub(crate) ok: u64,
    pub(crate) too_many: u64,
    /// Any other status, by code.
    pub(crate) other: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection refused or closed, timeout).
    pub(crate) errors: u64,
    pub(crate) error_samples: Vec<String>,
    /// Latency of every answered request, in µs.
    pub(crate) latency_us: Histogram<u64>,
    /// From the first request sent to the last answer received.
    pub(crate) elapsed: Duration,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: 0,
            too_many: 0,
            other: BTreeMap::new(),
            errors: 0,
            error_samples: Vec::new(),
            latency_us: latency_histogram(),
            elapsed: Duration::ZERO,
        }
    }

    /// Requests that got an answer or an error.
    pub(crate) fn requests(&self) -> u64 {
        self.ok + self.too_many + self.other.values().sum::<u64>() + self.errors
    }

    fn record_error(&mut self, message: String) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.too_many += other.too_many;
        for (status, n) in other.other {
            *self.other.entry(status).or_default() += n;
        }
        for message in other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&message) {
                self.error_samples.push(message);
            }
        }
        self.errors += other.errors;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }
}

fn latency_histogram() -> Histogram<u64> {
    // 3 significant digits from 1 µs to a minute: about 200 KB, once per connection.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant bounds are valid")
}

/// Sends load as `plan` says and tallies the answers.
pub(crate) async fn drive(plan: &Plan) -> Tally {
    let start = Instant::now();
    let end = start + plan.duration;
    let ticket = Arc::new(AtomicU64::new(0));
    let mut workers = JoinSet::new();
    for index in 0..plan.connections {
        let addr = plan.instances[index % plan.instances.len()];
        let plan = plan.clone();
        let ticket = Arc::clone(&ticket);
        workers.spawn(async move { worker(index, addr, &plan, start, end, &ticket).await });
    }
    let mut tally = Tally::new();
    while let Some(result) = workers.join_next().await {
        match result {
            Ok(worker_tally) => tally.merge(worker_tally),
            Err(e) => tally.record_error(format!("a load task failed: {e}")),
        }
    }
    tally.elapsed = start.elapsed();
    tally
}

/// One connection's loop.
async fn worker(
    index: usize,
    addr: SocketAddr,
    plan: &Plan,
    start: Instant,
    end: Instant,
    ticket: &AtomicU64,
) -> Tally {
    let mut tally = Tally::new();
    let mut rng = SmallRng::seed_from_u64(index as u64);
    let interval = plan
        .rate
        .map(|rate| Duration::from_secs_f64(1.0 / rate as f64));
    // Connected before the first request, so that connecting is not counted as its latency
    // (a failure here is retried, and counted, by the first request).
    let mut connection = Connection::open(addr).await.ok();
    loop {
        // When this request is due: now (closed loop), or its slot in the schedule (open loop).
        let due = match interval {
            None => Instant::now(),
            Some(interval) => {
                let n = ticket.fetch_add(1, Ordering::Relaxed);
                let due = start + interval.mul_f64(n as f64);
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                due
            }
        };
        if due >= end {
            break;
        }
        let key = rng.random_range(0..plan.keys);
        let mut headers = Vec::with_capacity(2);
        match HeaderValue::from_str(&format!("load-{key}")) {
            Ok(value) => headers.push(("x-api-key", value)),
            Err(e) => {
                tally.record_error(format!("key header: {e}"));
                continue;
            }
        }
        if key < plan.free_keys {
            headers.push(("x-tier", HeaderValue::from_static("free")));
        }
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if connection.is_none() {
                connection = Some(Connection::open(addr).await?);
            }
            match connection.as_mut() {
                Some(c) => c.get(PATH, &headers).await,
                None => Err("no connection".to_owned()),
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {addr} within {REQUEST_TIMEOUT:?}")));
        match outcome {
            Ok((status, _)) => {
                let micros = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally
                    .latency_us
                    .saturating_record(micros.clamp(1, MAX_LATENCY_US));
                match status {
                    StatusCode::OK => tally.ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => tally.too_many += 1,
                    other => *tally.other.entry(other.as_u16()).or_default() += 1,
                }
            }
            Err(message) => {
                tally.record_error(message);
                // Start afresh, and do not spin on a dead instance.
                connection = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tally
}
