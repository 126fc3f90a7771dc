// What the k6 scenarios share: the request ratelimit-load sends, against api-server instances
// started with load/config.yaml, and the checks and metrics on its answer.
//
// Environment (k6 run -e NAME=value):
//   BASE_URLS   comma-separated instances, taken round-robin   (default http://127.0.0.1:8080)
//   KEYS        distinct API keys                               (default 10000)
//   FREE_SHARE  share of the keys in the free tier (x-tier: free, 1 a minute: mostly denied)
//                                                               (default 0.1)
import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URLS = (__ENV.BASE_URLS || 'http://127.0.0.1:8080')
  .split(',')
  .map((url) => url.trim().replace(/\/+$/, ''))
  .filter((url) => url.length > 0);
const KEYS = parseInt(__ENV.KEYS || '10000', 10);
const FREE_SHARE = parseFloat(__ENV.FREE_SHARE || '0.1');
const FREE_KEYS = Math.min(KEYS, Math.round(KEYS * FREE_SHARE));

// A 429 is an expected answer of a rate limiter, not a failed request: only other statuses and
// transport errors count in http_req_failed.
http.setResponseCallback(http.expectedStatuses(200, 429));

export const allowed = new Counter('ratelimit_allowed');
export const denied = new Counter('ratelimit_denied');
export const unexpected = new Counter('ratelimit_unexpected');

// Thresholds every scenario keeps; each scenario adds its latency bounds.
export const baseThresholds = {
  // No 5xx, no other status, no transport error.
  http_req_failed: ['rate==0'],
  ratelimit_unexpected: ['count==0'],
  checks: ['rate==1'],
};

// The `options` of a script running one arrival-rate scenario `name` (timed per second):
// `scenario` holds the executor and its own settings; the base thresholds, 200 and 429 answers
// both under `p99Ms` at the 99th percentile, the scenario's `extraThresholds`, and the summary
// statistics are the same for every scenario.
export function scenarioOptions(name, scenario, p99Ms, extraThresholds = {}) {
  return {
    scenarios: { [name]: { timeUnit: '1s', ...scenario } },
    thresholds: {
      ...baseThresholds,
      'http_req_duration{status:200}': [`p(99)<${p99Ms}`],
      'http_req_duration{status:429}': [`p(99)<${p99Ms}`],
      ...extraThresholds,
    },
    summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'p(99.9)', 'max'],
  };
}

// GET /api/hello with a random key of the population, on the next instance in turn.
export function hello() {
  const key = Math.floor(Math.random() * KEYS);
  const tier = key < FREE_KEYS ? 'free' : 'paid';
  const headers = { 'x-api-key': `load-${key}` };
  if (tier === 'free') {
    headers['x-tier'] = 'free';
  }
  const base = BASE_URLS[exec.scenario.iterationInTest % BASE_URLS.length];
  const res = http.get(`${base}/api/hello`, {
    headers,
    // k6 tags every request with its `status` too: thresholds and summaries split 200 from 429.
    tags: { tier, name: 'GET /api/hello' },
  });
  if (res.status === 200) {
    allowed.add(1, { tier });
  } else if (res.status === 429) {
    denied.add(1, { tier });
  } else {
    unexpected.add(1, { tier, status: String(res.status) });
  }
  check(res, {
    'status is 200 or 429': (r) => r.status === 200 || r.status === 429,
    '429 carries Retry-After': (r) => r.status !== 429 || r.headers['Retry-After'] !== undefined,
    'answers carry RateLimit-Policy': (r) =>
      (r.status !== 200 && r.status !== 429) || r.headers['Ratelimit-Policy'] !== undefined,
  });
  return res;
}
