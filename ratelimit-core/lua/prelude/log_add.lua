-- For the sliding logs' batch scripts (prepended after the clock, see `src/backend/coalesce.rs`):
-- adds the members of a call of `cost` permits to the log at `key`, at `now`, as the single
-- scripts do (NX: none that is there already; members "<nonce>:<j>", at most 500 a ZADD), and
-- returns how many were added. `now` is written as a score once, for every call of the batch.
local now_text = format('%d', now)
local function add(key, nonce, cost)
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
