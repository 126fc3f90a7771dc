-- Sliding window counters: per window, the count of the current fixed window (aligned to the
-- Unix epoch, Redis clock) and of the one before it; the previous count weighs as much as the
-- share of the previous window the sliding window still covers. All windows or none.
--
-- Constant memory a key, like fixed windows, without their double burst at a boundary; the
-- previous window is assumed to have been spent evenly, which is where it can admit more than
-- the limit within some window's length. Integer arithmetic below 2^53 throughout, as in
-- `algorithm/sliding_counter.rs`, so the two agree to the microsecond.
--
-- KEYS[2i - 1], KEYS[2i]  window i's two counters: the count of the fixed windows whose number
--          (time / length) is even, and odd. Each is one integer, count * 65536 + tag, as the
--          fixed window's (`fixed_window.lua`: the tag is the window's number modulo 65535, plus
--          1), written when its window opens with a TTL to the end of the window after it, where
--          it is the previous count; a counter whose tag is neither this window's nor the one
--          before's counts nothing. A counter of the earlier layout ("<window number>:<current>:
--          <previous>:<nonce>", under the even counter's name) is read as it was and written
--          again as integers.
-- ARGV[1]  "allow" or "peek"
-- ARGV[2]  cost
-- ARGV[3]  not a nonce: what the call adds to its counter (cost * 65536), written by the client
--          for a call of one window that consumes a cost from 1 to the limit, empty otherwise.
--          A counter cannot tell a retried call from a new one, so a call is never sent again.
-- ARGV[4], ARGV[5], ...  limit and window length (µs) of each window, in pairs
--
-- Returns {allowed, binding window (1-based), limit, remaining, reset_after_us, retry_after_us};
-- for a policy of one window only {allowed, remaining, reset_after_us, retry_after_us}: the window
-- is the binding one, and the client knows its limit.

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


-- One window, the common case: the same steps as the loops below, without their tables.
local limit, window, number, cur, prev, tag, prev_tag, start, e
local current, previous, allowed = 0, 0, nil
if n == 2 then
  limit, window = tonumber(ARGV[4]), tonumber(ARGV[5])
  number = idiv(now, window)
  local parity = number % 2
  cur, prev = KEYS[1 + parity], KEYS[2 - parity]
  tag, prev_tag = number % (SPAN - 1) + 1, (number - 1) % (SPAN - 1) + 1
  start = number * window
  e = now - start
  -- A consuming call: GET the previous count and INCRBY this window's, which keeps the TTL
  -- its window's first call set; a counter of the earlier layout is left to the general path.
  if nonce ~= '' then
    local stored = redis.call('GET', prev)
    local value = stored and tonumber(stored)
    if not stored or value then
      local counted = redis.pcall('INCRBY', cur, nonce)
      if type(counted) == 'number' then
        if value and value % SPAN == prev_tag then previous = (value - prev_tag) / SPAN end
        -- Another tag: the counter of an earlier window of this parity, or none.
        local opened = counted % SPAN ~= tag
        if not opened then current = (counted - tag) / SPAN - cost end
        allowed = current + cost <= limit
          and previous * (window - e) <= (limit - current - cost) * window
        if allowed then
          current = current + cost
          if opened then
            redis.call('SET', cur, current * SPAN + tag, 'PX',
              format('%d', math.ceil((start + 2 * window - now) / 1000)))
          end
        elseif counted == tonumber(nonce) then
          -- Denied, and the counter did not exist: as it was.
          redis.call('DEL', cur)
        else
          redis.call('DECRBY', cur, nonce)
        end
      end
    end
  end
end

-- Reading and writing counters in general, only created when a call needs them.
local counts, read, write
if allowed == nil then
  -- The counts a stored counter gives the window numbered `number` (tagged `tag`) and the one
  -- before it (`prev_tag`): the current count, the previous count, and whether it was a counter
  -- of the earlier text layout.
  function counts(stored, number, tag, prev_tag)
    if not stored then return 0, 0, false end
    local value = tonumber(stored)
    if value then
      local t = value % SPAN
      if t == tag then return (value - t) / SPAN, 0, false end
      if t == prev_tag then return 0, (value - t) / SPAN, false end
      return 0, 0, false
    end
    local stored_number, stored_current, stored_previous =
      string.match(stored, '^(%d+):(%d+):(%d+)')
    stored_number = tonumber(stored_number)
    if stored_number == number then
      return tonumber(stored_current), tonumber(stored_previous), true
    elseif stored_number and stored_number + 1 == number then
      return 0, tonumber(stored_current), true
    end
    return 0, 0, false
  end

  -- Reads window i's counters (`cur` this window's, `prev` the one before's) with GET and returns
  -- the current and previous counts, and whether the current counter is of the earlier layout
  -- (writing it must then move the previous count it carried into `prev`).
  function read(cur, prev, number, tag, prev_tag)
    local c1, p1, legacy = counts(redis.call('GET', cur), number, tag, prev_tag)
    local c2, p2 = counts(redis.call('GET', prev), number, tag, prev_tag)
    if c2 > c1 then c1 = c2 end
    if p2 > p1 then p1 = p2 end
    return c1, p1, legacy
  end

  -- Writes `current` into this window's counter, which lives until the end of the next window,
  -- and, after a counter of the earlier layout, `previous` into the other one.
  function write(cur, prev, current, previous, legacy, tag, prev_tag, start, window)
    redis.call('SET', cur, format('%d', current * SPAN + tag), 'PX', format('%d', math.ceil((start + 2 * window - now) / 1000)))
    if legacy and previous > 0 then
      redis.call('SET', prev, format('%d', previous * SPAN + prev_tag), 'PX', format('%d', math.ceil((start + window - now) / 1000)))
    end
  end
end

if n == 2 then
  -- A peek, a cost of 0 or above the limit, or a counter of the earlier layout.
  if allowed == nil then
    local legacy
    current, previous, legacy = read(cur, prev, number, tag, prev_tag)
    allowed = current + cost <= limit
      and previous * (window - e) <= (limit - current - cost) * window
    if allowed and op == 'allow' and cost > 0 then
      current = current + cost
      write(cur, prev, current, previous, legacy, tag, prev_tag, start, window)
    end
  end
  -- ceil(previous * (window - e) / window), on integers
  local product = previous * (window - e)
  local weighted = idiv(product, window)
  if weighted * window < product then weighted = weighted + 1 end
  local remaining = limit - current - weighted
  if remaining < 0 then remaining = 0 end
  local reset_after = 0
  if current > 0 then
    reset_after = start + 2 * window - now
  elseif previous > 0 then
    reset_after = start + window - now
  end
  if allowed then return {1, remaining, reset_after, 0} end
  local retry_after
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
  return {0, remaining, reset_after, retry_after}
end

-- Whether a request of `cost` fits window i's counts.
local function fits(limit, window, elapsed, current, previous)
  return current + cost <= limit
    and previous * (window - elapsed) <= (limit - current - cost) * window
end

local limits, windows, numbers, elapsed, currents, previouses, legacies =
  {}, {}, {}, {}, {}, {}, {}
local allowed = true
for i = 1, n / 2 do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  local number = idiv(now, window)
  local parity = number % 2
  local current, previous, legacy = read(KEYS[2 * i - 1 + parity], KEYS[2 * i - parity], number,
    number % (SPAN - 1) + 1, (number - 1) % (SPAN - 1) + 1)
  limits[i], windows[i], numbers[i] = limit, window, number
  elapsed[i], currents[i], previouses[i], legacies[i] = now - number * window, current, previous, legacy
  if not fits(limit, window, elapsed[i], current, previous) then allowed = false end
end

local consume = allowed and op == 'allow' and cost > 0
for i = 1, n / 2 do
  local limit, window, e = limits[i], windows[i], elapsed[i]
  local number = numbers[i]
  local start = number * window
  if consume then
    currents[i] = currents[i] + cost
    local parity = number % 2
    write(KEYS[2 * i - 1 + parity], KEYS[2 * i - parity], currents[i], previouses[i], legacies[i],
      number % (SPAN - 1) + 1, (number - 1) % (SPAN - 1) + 1, start, window)
  end
  local current, previous = currents[i], previouses[i]
  -- ceil(previous * (window - e) / window), on integers
  local product = previous * (window - e)
  local weighted = idiv(product, window)
  if weighted * window < product then weighted = weighted + 1 end
  local remaining = limit - current - weighted
  if remaining < 0 then remaining = 0 end
  local reset_after = 0
  if current > 0 then
    reset_after = start + 2 * window - now
  elseif previous > 0 then
    reset_after = start + window - now
  end
  local retry_after = 0
  if not allowed and not fits(limit, window, e, current, previous) then
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
  consider(allowed, i, remaining, reset_after, retry_after)
end

return answer(allowed, limits)
