// rate-limiter-flexible's side of the peer comparison (scripts/compare-peer.sh): the workload of
// load/src/bin/peer-workload.rs on RateLimiterRedis over one ioredis client, printed as the same
// JSON line: {"decisions_per_sec":…,"exact_pass":…}.
//
// - Throughput: CALLERS concurrent callers, each taking the next key of k0..k{KEYS-1} from one
//   shared counter, for DURATION; RateLimiterRedis (a fixed window) of 1,000,000 points per 60 s.
//   The figure is completed calls (allowed or denied) over the time until the last caller ended.
// - Exactness: 200 concurrent calls on one fresh key, 100 points per 60 s; how many passed.
//
//   node load/peer/rate-limiter-flexible.js [--redis-url URL] [--duration 5s] [--callers 50] [--keys 10000]
//
// Each option falls back to an environment variable (THROWAWAY_REDIS_URL, PEER_DURATION,
// PEER_CALLERS, PEER_KEYS), then to the default. rate-limiter-flexible and ioredis must be
// resolvable (scripts/compare-peer.sh installs them in a throwaway directory and sets NODE_PATH).
// Any Redis error ends the run with a non-zero status: no figure is printed without every call
// having been decided by Redis.
'use strict';

const { parseArgs } = require('node:util');
const { performance } = require('node:perf_hooks');
const Redis = require('ioredis');
const { RateLimiterRedis } = require('rate-limiter-flexible');

const EXACT_CALLS = 200;
const EXACT_POINTS = 100;
const WINDOW_SECONDS = 60;
const THROUGHPUT_POINTS = 1000000;

// A duration as the Rust side writes it: `5s`, `500ms`, `1m`.
function parseDuration(text) {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(String(text).trim());
  if (!match) {
    throw new Error(`\`${text}\` is not a duration: write it like \`500ms\`, \`5s\` or \`1m\``);
  }
  const unit = { ms: 1, s: 1000, m: 60000 }[match[2]];
  return Number(match[1]) * unit;
}

function positiveInteger(name, text) {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`--${name} must be a positive integer, not \`${text}\``);
  }
  return value;
}

function options() {
  const { values } = parseArgs({
    options: {
      'redis-url': { type: 'string' },
      duration: { type: 'string' },
      callers: { type: 'string' },
      keys: { type: 'string' },
    },
  });
  const env = process.env;
  const url = values['redis-url'] ?? env.THROWAWAY_REDIS_URL;
  if (!url) {
    throw new Error('no Redis: give --redis-url or set THROWAWAY_REDIS_URL');
  }
  return {
    url,
    durationMs: parseDuration(values.duration ?? env.PEER_DURATION ?? '5s'),
    callers: positiveInteger('callers', values.callers ?? env.PEER_CALLERS ?? '50'),
    keys: positiveInteger('keys', values.keys ?? env.PEER_KEYS ?? '10000'),
  };
}

// consume() rejects with a RateLimiterRes when the limit is reached (a decision), and with an
// Error when Redis could not decide.
async function decide(limiter, key) {
  try {
    await limiter.consume(key);
    return true;
  } catch (rejection) {
    if (rejection instanceof Error) {
      throw rejection;
    }
    return false;
  }
}

// A limiter of `points` a window under `keyPrefix`, connected and its script loaded (one
// decision on a key of its own) before anything is measured.
async function readyLimiter(client, keyPrefix, points) {
  const limiter = new RateLimiterRedis({
    storeClient: client,
    keyPrefix,
    points,
    duration: WINDOW_SECONDS,
  });
  await decide(limiter, 'warm-up');
  return limiter;
}

async function throughput(client, { durationMs, callers, keys }) {
  const limiter = await readyLimiter(client, 'peer', THROUGHPUT_POINTS);
  let next = 0;
  let decisions = 0;
  const started = performance.now();
  const deadline = started + durationMs;
  const caller = async () => {
    while (performance.now() < deadline) {
      const key = `k${next % keys}`;
      next += 1;
      await decide(limiter, key);
      decisions += 1;
    }
  };
  await Promise.all(Array.from({ length: callers }, caller));
  const elapsedMs = performance.now() - started;
  return decisions / (elapsedMs / 1000);
}

async function exactness(client) {
  const limiter = await readyLimiter(client, 'peer-exact', EXACT_POINTS);
  const key = `exact-${process.hrtime.bigint()}`;
  const passed = await Promise.all(
    Array.from({ length: EXACT_CALLS }, () => decide(limiter, key)),
  );
  return passed.filter(Boolean).length;
}

async function main() {
  const opts = options();
  // One failed connection attempt is an error, not a retry loop.
  const client = new Redis(opts.url, { maxRetriesPerRequest: 1, retryStrategy: () => null });
  client.on('error', (error) => console.error(`rate-limiter-flexible: redis: ${error.message}`));
  try {
    const decisionsPerSec = await throughput(client, opts);
    const exactPass = await exactness(client);
    console.log(JSON.stringify({ decisions_per_sec: decisionsPerSec, exact_pass: exactPass }));
  } finally {
    client.disconnect();
  }
}

main().catch((error) => {
  console.error(`rate-limiter-flexible: ${error.message}`);
  process.exitCode = 1;
});
