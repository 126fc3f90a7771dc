-- Fixed windows aligned to the Unix epoch (Redis clock), one counter each, all or nothing.
--
-- Cheapest of the algorithms, and the least exact: a client can spend a full quota at the end of
-- one window and another at the start of the next, so up to twice the limit can pass within one
-- window's length across a boundary.
--
-- KEYS[i]  the counter of window i: one integer, count * 65536 + tag, where the tag is the
--          window's number (time / length) modulo 65535, plus 1. A counter left over from an
--          earlier window (key expiry is only millisecond-exact, so one can outlive its window by
--          a millisecond or two, never by 65535 windows) has another tag and never counts; a key
--          that did not exist reads tag 0, which no window has. As an integer, the counter is
--          added to with INCRBY, which keeps the TTL its window's first call set.
-- ARGV[1]  "allow" or "peek"
-- ARGV[2]  cost
-- ARGV[3]  not a nonce: what the call adds to its counter (cost * 65536), written by the client
--          for the common case (see below), empty otherwise. A counter cannot tell a retried
--          call from a new one, so a fixed window's call is never sent again by the limiter.
-- ARGV[4], ARGV[5], ...  limit and window length (µs) of each window, in pairs; a limit is at
--          most 2^35 - 1 (`Policy::validate`), so count + cost stays below 2^36 and the whole
--          counter below 2^52, exact in a Lua double
--
-- A counter written before this encoding ("<window number>:<count>:<nonce>") is read as it was
-- and written again as an integer.
--
-- Returns {allowed, binding window (1-based), limit, remaining, reset_after_us, retry_after_us};
-- for a policy of one window only {allowed, remaining, reset_after_us, retry_after_us}: the window
-- is the binding one, and the client knows its limit.

local SPAN = 65536

-- One window, the common case: an allowed call is TIME and one INCRBY. The client sends the
-- increment (ARGV[3]) only for a call of one window that consumes a cost from 1 to the limit.
if nonce ~= '' then
  local key, limit, window = KEYS[1], tonumber(ARGV[4]), tonumber(ARGV[5])
  local number = math.floor(now / window)
  local tag = number % (SPAN - 1) + 1
  local until_end = (number + 1) * window - now
  local value = redis.pcall('INCRBY', key, nonce)
  -- Not an integer: a counter of the earlier encoding, read below.
  if type(value) == 'number' then
    if value % SPAN == tag then
      local count = (value - tag) / SPAN
      if count <= limit then return {1, limit - count, until_end, 0} end
      -- Denied: what the INCRBY added is taken back, and nothing else changes.
      redis.call('DECRBY', key, nonce)
      count = count - cost
      local remaining = limit - count
      if remaining < 0 then remaining = 0 end
      local reset_after = 0
      if count > 0 then reset_after = until_end end
      return {0, remaining, reset_after, until_end}
    end
    -- No counter of this window (none, or an earlier window's): this call opens it.
    redis.call('SET', key, format('%d', cost * SPAN + tag), 'PX', format('%d', math.ceil(until_end / 1000)))
    return {1, limit - cost, until_end, 0}
  end
end

-- The count window `number` has spent in the counter `stored` (a GET's reply), and whether
-- that counter is of this window.
local function spent(stored, number, tag)
  if not stored then return 0, false end
  local value = tonumber(stored)
  if value then
    if value % SPAN == tag then return (value - tag) / SPAN, true end
    return 0, false
  end
  local stored_number, stored_count = string.match(stored, '^(%d+):(%d+)')
  if tonumber(stored_number) == number then return tonumber(stored_count), false end
  return 0, false
end

-- One window, any other call: a peek, a cost of 0 or above the limit, or a counter of the
-- earlier encoding.
if n == 1 then
  local key, limit, window = KEYS[1], tonumber(ARGV[4]), tonumber(ARGV[5])
  local number = math.floor(now / window)
  local tag = number % (SPAN - 1) + 1
  local until_end = (number + 1) * window - now
  local count = spent(redis.call('GET', key), number, tag)
  local allowed = count + cost <= limit
  if allowed and op == 'allow' and cost > 0 then
    -- Only a counter of the earlier encoding gets here: it is written as an integer.
    count = count + cost
    redis.call('SET', key, format('%d', count * SPAN + tag), 'PX', format('%d', math.ceil(until_end / 1000)))
  end
  local remaining = limit - count
  if remaining < 0 then remaining = 0 end
  local reset_after = 0
  if count > 0 then reset_after = until_end end
  if allowed then return {1, remaining, reset_after, 0} end
  return {0, remaining, reset_after, until_end}
end

local limits, counts, tags, currents, ends = {}, {}, {}, {}, {}
local allowed = true
for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  local number = math.floor(now / window)
  local tag = number % (SPAN - 1) + 1
  local count, current = spent(redis.call('GET', KEYS[i]), number, tag)
  limits[i], counts[i], tags[i], currents[i], ends[i] = limit, count, tag, current, (number + 1) * window
  if count + cost > limit then allowed = false end
end

local consume = allowed and op == 'allow' and cost > 0
for i = 1, n do
  if consume then
    counts[i] = counts[i] + cost
    if currents[i] then
      redis.call('INCRBY', KEYS[i], format('%d', cost * SPAN))
    else
      redis.call('SET', KEYS[i], format('%d', counts[i] * SPAN + tags[i]), 'PX', format('%d', math.ceil((ends[i] - now) / 1000)))
    end
  end
  local remaining = limits[i] - counts[i]
  if remaining < 0 then remaining = 0 end
  local reset_after = 0
  if counts[i] > 0 then reset_after = ends[i] - now end
  local retry_after = 0
  if not allowed and counts[i] + cost > limits[i] then retry_after = ends[i] - now end
  consider(allowed, i, remaining, reset_after, retry_after)
end

return answer(allowed, limits)
