-- The arguments every batch script takes (prepended after the clock, see `src/scripts.rs`): the
-- calls of one pipeline on one key and one single-window policy, decided in one script call in
-- arrival order, exactly as one call after another at the same instant would be.
--
-- KEYS[1]  the key every call decides on
-- ARGV[1]  "allow" or "peek", the same for every call ("again" for a sliding log's batch sent
--          again, see `log_add.lua`)
-- ARGV[2]  the window's limit
-- ARGV[3]  the window's length in microseconds
-- ARGV[2 + 2i], ARGV[3 + 2i]  the cost and the nonce of call i, from i = 1
--
-- Returns four numbers a call, in order: {allowed, remaining, reset_after_us, retry_after_us},
-- what a single script of one window answers.
--
-- Sent again after its reply was lost (when the connection broke), a log's batch takes nothing
-- twice: its members are the calls' own, as the single script writes them, added with NX. The
-- counters' batches write in the single scripts' format (the token bucket stores the first
-- call's nonce as the last writer's; the fixed window's and the sliding counter's counters are
-- bare integers, and their calls' nonce argument carries their increment instead) and are never
-- sent again: a counter recognizes at most its last writer, and another writer may come between
-- (the client sends again only what is idempotent, `batch.rs`).
local key = KEYS[1]
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local consuming = ARGV[1] == 'allow' or ARGV[1] == 'again'
local calls = (#ARGV - 3) / 2
local batch = ARGV[5]
local reply = {}
