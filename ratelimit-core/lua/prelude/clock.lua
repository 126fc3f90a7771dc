-- Prelude shared by every script (prepended when the crate is built, see `src/scripts.rs`).
--
-- The time, from Redis's own clock, in microseconds: instances whose clocks disagree still agree
-- on it. Read once, before anything else, into a plain local (no function to create per call).
local time = redis.call('TIME')
local now = time[1] * 1000000 + time[2]
-- Whole numbers go to redis.call as text written with '%d': Redis 7.0 writes a Lua number with
-- "%.17g", a multi-precision conversion (about 1,600 CPU instructions more for a timestamp).
local format = string.format
