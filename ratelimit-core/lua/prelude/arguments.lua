-- The arguments every script takes (prepended after the other preludes, see `src/scripts.rs`):
-- ARGV[1] "allow" or "peek", ARGV[2] the cost, ARGV[3] the call's nonce, then the windows'
-- limits and lengths in pairs; KEYS holds the decision's keys, all in one hash slot.
local op = ARGV[1]
local cost = tonumber(ARGV[2])
local nonce = ARGV[3]
local n = #KEYS
