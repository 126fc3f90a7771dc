-- Fixed windows aligned to the Unix epoch (Redis clock), one counter each, all or nothing.
--
-- Cheapest of the algorithms, and the least exact: a client can spend a full quota at the end of
-- one window and another at the start of the next, so up to twice the limit can pass within one
-- window's length across a boundary.
--
-- KEYS[i]  the counter of window i, stored as "<window number>:<count>:<nonce>" so that a counter
--          left over from an earlier window (key expiry is only millisecond-exact) never counts
-- ARGV[1]  "allow" or "peek"
-- ARGV[2]  cost
-- ARGV[3]  nonce, unique per call: a call retried after its reply was lost (the cluster client
--          retries on I/O errors) finds its own nonce stored and consumes nothing twice
-- ARGV[4], ARGV[5], ...  limit and window length (µs) of each window, in pairs
--
-- Returns {allowed, binding window (1-based), limit, remaining, reset_after_us, retry_after_us}.

-- One window, the common case: the same steps as the loops below, without their tables.
if n == 1 then
  local key, limit, window = KEYS[1], tonumber(ARGV[4]), tonumber(ARGV[5])
  local number = math.floor(now / window)
  local count, replay = 0, false
  local stored = redis.call('GET', key)
  if stored then
    local stored_number, stored_count, stored_nonce = string.match(stored, '^(%d+):(%d+):?(.*)$')
    if tonumber(stored_number) == number then count = tonumber(stored_count) end
    replay = stored_nonce == nonce
  end
  -- A retry of a call that was applied: its permits are taken already.
  local allowed = replay or count + cost <= limit
  local until_end = (number + 1) * window - now
  if allowed and op == 'allow' and cost > 0 and not replay then
    count = count + cost
    redis.call('SET', key, string.format('%d:%d:', number, count) .. nonce,
      'PX', math.ceil(until_end / 1000))
  end
  local remaining = limit - count
  if remaining < 0 then remaining = 0 end
  local reset_after = 0
  if count > 0 then reset_after = until_end end
  if allowed then return {1, 1, limit, remaining, reset_after, 0} end
  return {0, 1, limit, remaining, reset_after, until_end}
end

local limits, counts, numbers, ends = {}, {}, {}, {}
local allowed = true
local replay = false
for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  local number = math.floor(now / window)
  local count = 0
  local stored = redis.call('GET', KEYS[i])
  if stored then
    local stored_number, stored_count, stored_nonce = string.match(stored, '^(%d+):(%d+):?(.*)$')
    if tonumber(stored_number) == number then count = tonumber(stored_count) end
    if i == 1 and stored_nonce == nonce then replay = true end
  end
  limits[i], counts[i], numbers[i], ends[i] = limit, count, number, (number + 1) * window
  if count + cost > limit then allowed = false end
end

-- A retry of a call that was applied: its permits are taken already.
if replay then allowed = true end
local consume = allowed and op == 'allow' and cost > 0 and not replay
for i = 1, n do
  if consume then
    counts[i] = counts[i] + cost
    local ttl = math.ceil((ends[i] - now) / 1000)
    redis.call('SET', KEYS[i], string.format('%d:%d:', numbers[i], counts[i]) .. nonce, 'PX', ttl)
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
