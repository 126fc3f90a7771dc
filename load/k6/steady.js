// Steady scenario: a constant arrival rate (open model: k6 starts RATE requests a second
// whatever the latency, so a slow server shows up as latency, not as fewer requests).
//
//   k6 run load/k6/steady.js
//   k6 run -e RATE=2000 -e DURATION=1m -e BASE_URLS=http://127.0.0.1:8080,http://127.0.0.1:8081 load/k6/steady.js
//
// RATE (default 1000/s), DURATION (default 30s), P99_MS (default 50), and the variables of
// common.js.
import { hello, scenarioOptions } from './common.js';

const RATE = parseInt(__ENV.RATE || '1000', 10);
const P99_MS = parseInt(__ENV.P99_MS || '50', 10);

export const options = scenarioOptions(
  'steady',
  {
    executor: 'constant-arrival-rate',
    rate: RATE,
    duration: __ENV.DURATION || '30s',
    // Enough virtual users for a few milliseconds of latency at this rate; k6 adds more, up to
    // maxVUs, if answers slow down (and counts dropped_iterations past that).
    preAllocatedVUs: Math.max(10, Math.ceil(RATE / 100)),
    maxVUs: Math.max(50, Math.ceil(RATE / 10)),
  },
  P99_MS,
  // The rate was held: under 1% of the planned requests could not be started for want of a
  // free virtual user.
  { dropped_iterations: [`rate<${RATE * 0.01}`] },
);

export default hello;
