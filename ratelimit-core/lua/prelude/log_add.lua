-- For the sliding logs' batch scripts (prepended after the clock, see `src/backend/coalesce.rs`):
-- adds the members of a call of `cost` permits to the log at `key`, at `now`, as the single
-- scripts do (NX: none that is there already; members "<nonce>:<j>", at most 500 a ZADD), and
-- returns how many were added.
--
-- ARGV[1] tells a batch's first send ("allow") from a send again ("again": the lane sends a
-- pipeline again when the connection broke under it, and the batch may have run). On a first
-- send none of the calls has run before (a nonce is unique, and a call the lane sends again is
-- marked), so none of their members can be in the log: `add` only gathers them, counts them as
-- added, and `flush` adds them all with one ZADD, where each call's own would cost Redis a
-- command's dispatch. Until then they are `unflushed`: the newest entries of the log, all at
-- `now`, which `scored_at` accounts for. Sent again, every call adds its own members with NX
-- at once, and one found there already is recognized as applied.
local now_text = format('%d', now)
local first_send = ARGV[1] == 'allow'
local pending, unflushed = {'NX'}, 0
local function flush(key)
  if unflushed == 0 then return end
  local added = redis.call('ZADD', key, unpack(pending))
  if added ~= unflushed then
    -- Not reachable while the lane marks what it sends again: the permits are taken, and the
    -- calls are answered with this error (their fallback decides), never admitted twice.
    error({err = 'ERR a batch sent as first found its calls in the log'})
  end
  pending, unflushed = {'NX'}, 0
end
local function add(key, nonce, cost)
  if first_send then
    if cost == 1 then
      pending[#pending + 1] = now_text
      pending[#pending + 1] = nonce .. ':1'
    else
      for j = 1, cost do
        pending[#pending + 1] = now_text
        pending[#pending + 1] = nonce .. ':' .. j
      end
    end
    unflushed = unflushed + cost
    if #pending >= 1001 then flush(key) end
    return cost
  end
  if cost == 1 then return redis.call('ZADD', key, 'NX', now_text, nonce .. ':1') end
  local added, members = 0, {'NX'}
  for j = 1, cost do
    members[#members + 1] = now_text
    members[#members + 1] = nonce .. ':' .. j
    if #members >= 1001 or j == cost then
      added = added + redis.call('ZADD', key, unpack(members))
      members = {'NX'}
    end
  end
  return added
end
-- Whether a call denied by the count was applied before (sent again): never on a first send.
local function applied(key, nonce)
  return not first_send and redis.call('ZSCORE', key, nonce .. ':1') ~= false
end
-- The score of the entry of rank `rank` (0-based, oldest first) among the `counted` newest of
-- the log that `reply` (ZRANGE or ZRANGEBYSCORE ... LIMIT, WITHSCORES, of the log as it is)
-- reads: the unflushed members are the newest `unflushed` of those counted, all at `now`.
local function scored_at(rank, counted, read)
  if rank >= counted - unflushed then return now end
  return tonumber(read()[2])
end
