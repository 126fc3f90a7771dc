-- Prelude shared by every script (prepended when the crate is built, see `src/scripts.rs`).
--
-- The time, from Redis's own clock, in microseconds: instances whose clocks disagree still agree
-- on it. Read once, before anything else, into a plain local (no function to create per call).
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
