-- Exact sliding log over several windows, all or nothing: several calls on one log, decided in
-- one script call in arrival order, exactly as one call after another of `multi_window.lua` at
-- the same instant. One trim, one count a window, one TTL and (first sent) one ZADD for all of
-- them; each call's members and answer are the single script's, so a call is
-- recognized by its own members whichever way it is sent again.
--
-- KEYS[1]  the log
-- ARGV[1]  "allow" or "peek", the same for every call ("again": sent again, see `log_add.lua`)
-- ARGV[2]  w, the number of windows
-- ARGV[1 + 2i], ARGV[2 + 2i]  limit and length (µs) of window i, for i = 1..w
-- then the cost and the nonce of each call, in arrival order
--
-- Returns six numbers a call, the single script's reply: {allowed, binding window (1-based),
-- limit, remaining, reset_after_us, retry_after_us}.
local key = KEYS[1]
local consuming = ARGV[1] == 'allow' or ARGV[1] == 'again'
local w = tonumber(ARGV[2])
local limits, windows, counts = {}, {}, {}
local longest = 0
for i = 1, w do
  limits[i] = tonumber(ARGV[1 + 2 * i])
  windows[i] = tonumber(ARGV[2 + 2 * i])
  if windows[i] > longest then longest = windows[i] end
end
local first = 3 + 2 * w
local calls = (#ARGV - first + 1) / 2

redis.call('ZREMRANGEBYSCORE', key, '-inf', format('%d', now - longest))
for i = 1, w do
  -- Scores are whole microseconds: "after now - window" is "from now - window + 1".
  counts[i] = redis.call('ZCOUNT', key, format('%d', now - windows[i] + 1), '+inf')
end

-- The newest entry's score (nil for an empty log), read when first needed; anything added is
-- added now.
local newest, read_newest = nil, false
local function newest_entry()
  if not read_newest then
    local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if top[2] then newest = tonumber(top[2]) end
    read_newest = true
  end
  return newest
end

-- The binding window among the figures of each window, as `prelude/binding.lua` chooses it.
local remaining, resets, retries = {}, {}, {}
local function bind(allowed)
  local best, best_remaining, best_reset, best_retry = 0, 0, 0, -1
  for i = 1, w do
    local better
    if best == 0 then
      better = true
    elseif not allowed then
      better = retries[i] > best_retry
    else
      better = remaining[i] < best_remaining
        or (remaining[i] == best_remaining and resets[i] > best_reset)
    end
    if better then
      best, best_remaining, best_reset, best_retry = i, remaining[i], resets[i], retries[i]
    end
  end
  return best, best_remaining, best_reset, best_retry
end

local reply = {}
local added_any = false
for c = 1, calls do
  local cost = tonumber(ARGV[first + 2 * c - 2])
  local nonce = ARGV[first + 2 * c - 1]
  local consume = consuming and cost > 0
  local allowed = true
  for i = 1, w do
    if counts[i] + cost > limits[i] then allowed = false end
  end
  local done = false
  if allowed and consume then
    if add(key, nonce, cost) > 0 then
      added_any, newest, read_newest = true, now, true
      for i = 1, w do
        remaining[i], resets[i], retries[i] = limits[i] - counts[i] - cost, windows[i], 0
        counts[i] = counts[i] + cost
      end
      done = true
    end
  elseif consume then
    -- Denied by the counts: unless this is a call that was applied, sent again.
    allowed = applied(key, nonce)
  end
  if not done then
    local top = newest_entry()
    for i = 1, w do
      local left = limits[i] - counts[i]
      if left < 0 then left = 0 end
      local reset_after = 0
      if counts[i] > 0 and top then reset_after = top + windows[i] - now end
      local retry_after = 0
      if not allowed and counts[i] + cost > limits[i] then
        local skip = counts[i] + cost - limits[i] - 1
        retry_after = scored_at(skip, counts[i], function()
          return redis.call('ZRANGEBYSCORE', key, format('%d', now - windows[i] + 1), '+inf',
            'WITHSCORES', 'LIMIT', skip, 1)
        end) + windows[i] - now
      end
      remaining[i], resets[i], retries[i] = left, reset_after, retry_after
    end
  end
  local best, best_remaining, best_reset, best_retry = bind(allowed)
  local at = 6 * c
  reply[at - 5], reply[at - 4], reply[at - 3] = allowed and 1 or 0, best, limits[best]
  reply[at - 2], reply[at - 1], reply[at] = best_remaining, best_reset, best_retry
end

-- The TTL, once, as the single script leaves it: a log added to lives as long as the longest
-- window; otherwise its TTL is only ever extended, to when the newest entry leaves the longest
-- window. Set last.
flush(key)
if added_any then
  redis.call('PEXPIRE', key, format('%d', math.ceil(longest / 1000)))
else
  local top = newest_entry()
  if top then
    local needed = math.ceil((top + longest - now) / 1000)
    local ttl = redis.call('PTTL', key)
    if ttl >= 0 and ttl < needed then redis.call('PEXPIRE', key, format('%d', needed)) end
  end
end
return reply
