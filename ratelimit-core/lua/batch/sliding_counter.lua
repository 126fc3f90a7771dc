-- Sliding window counter, one window: several calls on one pair of counters (see
-- `prelude/batch_arguments.lua`; KEYS[1] and KEYS[2] are the even and odd counters, as in
-- `sliding_counter.lua`). Two GETs and at most one write for all of them (two after a counter of
-- the earlier layout); each call's answer is the single script's. Integer arithmetic below
-- 2^53, as in `sliding_counter.lua`.

local SPAN = 65536

-- floor(a / b) for integers below 2^53, corrected where the division in doubles rounds up.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local number = idiv(now, window)
local parity = number % 2
local cur, prev = KEYS[1 + parity], KEYS[2 - parity]
local tag, prev_tag = number % (SPAN - 1) + 1, (number - 1) % (SPAN - 1) + 1
-- The counts a stored counter gives this window and the one before, as the single script reads
-- them (`counts` there).
local current, previous, legacy, counting = 0, 0, false, false
for k = 1, 2 do
  local stored = redis.call('GET', k == 1 and cur or prev)
  local c, p = 0, 0
  if stored then
    local value = tonumber(stored)
    if value then
      local t = value % SPAN
      if t == tag then
        c, counting = (value - t) / SPAN, counting or k == 1
      elseif t == prev_tag then
        p = (value - t) / SPAN
      end
    else
      local stored_number, stored_current, stored_previous =
        string.match(stored, '^(%d+):(%d+):(%d+)')
      stored_number = tonumber(stored_number)
      if stored_number == number then
        c, p, legacy = tonumber(stored_current), tonumber(stored_previous), legacy or k == 1
      elseif stored_number and stored_number + 1 == number then
        p, legacy = tonumber(stored_current), legacy or k == 1
      end
    end
  end
  if c > current then current = c end
  if p > previous then previous = p end
end
local first = current
local start = number * window
local e = now - start
-- ceil(previous * (window - e) / window): the previous window's weight, the same for every call
local product = previous * (window - e)
local weighted = idiv(product, window)
if weighted * window < product then weighted = weighted + 1 end
local wrote = false
for i = 1, calls do
  local cost = tonumber(ARGV[2 + 2 * i])
  local allowed = current + cost <= limit
    and previous * (window - e) <= (limit - current - cost) * window
  if allowed and consuming and cost > 0 then
    current = current + cost
    wrote = true
  end
  local remaining = limit - current - weighted
  if remaining < 0 then remaining = 0 end
  local reset_after = 0
  if current > 0 then
    reset_after = start + 2 * window - now
  elseif previous > 0 then
    reset_after = start + window - now
  end
  local retry_after = 0
  if not allowed then
    if current + cost > limit then
      local keep = idiv((limit - cost) * window, current)
      if keep > window then keep = window end
      retry_after = start + window + (window - keep) - now
    else
      local divisor = previous
      if divisor < 1 then divisor = 1 end
      local keep = idiv((limit - current - cost) * window, divisor)
      if keep > window then keep = window end
      retry_after = window - keep - e
      if retry_after < 0 then retry_after = 0 end
    end
  end
  local at = 4 * i
  reply[at - 3], reply[at - 2], reply[at - 1], reply[at] =
    allowed and 1 or 0, remaining, reset_after, retry_after
end
if wrote and counting then
  -- This window's counter exists: added to, it keeps the TTL its window's first call set.
  redis.call('INCRBY', cur, format('%d', (current - first) * SPAN))
elseif wrote then
  redis.call('SET', cur, format('%d', current * SPAN + tag), 'PX', format('%d', math.ceil((start + 2 * window - now) / 1000)))
  if legacy and previous > 0 then
    redis.call('SET', prev, format('%d', previous * SPAN + prev_tag), 'PX', format('%d', math.ceil((start + window - now) / 1000)))
  end
end
return reply
