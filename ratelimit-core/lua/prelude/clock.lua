-- Prelude shared by every script (prepended when the crate is built, see `src/scripts.rs`).
--
-- The time, from Redis's own clock: instances whose clocks disagree still agree on it.
local function clock_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
