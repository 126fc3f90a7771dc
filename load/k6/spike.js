// Spike scenario: a base arrival rate, a sudden jump to SPIKE times it, a hold, and the way
// back, to see that the limiter keeps answering 200/429 (never 5xx) through the spike and that
// latency recovers after it.
//
//   k6 run load/k6/spike.js
//   k6 run -e BASE_RATE=500 -e SPIKE=10 -e BASE_URLS=http://127.0.0.1:8080 load/k6/spike.js
//
// BASE_RATE (default 500/s), SPIKE (default 10), P99_MS (default 200: the spike's queueing
// is part of the figure), and the variables of common.js. Runs 1m40s.
import { hello, scenarioOptions } from './common.js';

const BASE_RATE = parseInt(__ENV.BASE_RATE || '500', 10);
const PEAK = BASE_RATE * parseInt(__ENV.SPIKE || '10', 10);
const P99_MS = parseInt(__ENV.P99_MS || '200', 10);

export const options = scenarioOptions(
  'spike',
  {
    executor: 'ramping-arrival-rate',
    startRate: BASE_RATE,
    preAllocatedVUs: Math.max(20, Math.ceil(PEAK / 100)),
    maxVUs: Math.max(100, Math.ceil(PEAK / 10)),
    stages: [
      { target: BASE_RATE, duration: '30s' }, // steady before
      { target: PEAK, duration: '5s' }, // the spike
      { target: PEAK, duration: '20s' }, // held
      { target: BASE_RATE, duration: '5s' }, // gone
      { target: BASE_RATE, duration: '40s' }, // recovery
    ],
  },
  P99_MS,
);

export default hello;
