-- Prelude for tests only (prepended instead of `clock.lua`, with `clock_argument_end.lua`
-- appended): the time is the last argument, in microseconds, so a script and its Rust twin can
-- be compared at any instant. The script's body is the same; the argument is removed before the
-- body reads ARGV, and the body runs as a function so that the postlude can report the TTL it
-- left on each key.
local now = tonumber(table.remove(ARGV))
local format = string.format
local function decide()
