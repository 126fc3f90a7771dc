-- Sliding window counters: per window, the count of the current fixed window (aligned to the
-- Unix epoch, Redis clock) and of the one before it; the previous count weighs as much as the
-- share of the previous window the sliding window still covers. All windows or none.
--
-- Constant memory a key, like fixed windows, without their double burst at a boundary; the
-- previous window is assumed to have been spent evenly, which is where it can admit more than
-- the limit within some window's length. Integer arithmetic below 2^53 throughout, as in
-- `algorithm/sliding_counter.rs`, so the two agree to the microsecond.
--
-- KEYS[i]  window i's counts, stored as "<window number>:<current>:<previous>:<nonce>"
-- ARGV[1]  "allow" or "peek"
-- ARGV[2]  cost
-- ARGV[3]  nonce, unique per call: a call retried after its reply was lost (the cluster client
--          retries on I/O errors) finds its own nonce stored and consumes nothing twice
-- ARGV[4], ARGV[5], ...  limit and window length (µs) of each window, in pairs
--
-- Returns {allowed, binding window (1-based), limit, remaining, reset_after_us, retry_after_us}.

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
if n == 1 then
  local key, limit, window = KEYS[1], tonumber(ARGV[4]), tonumber(ARGV[5])
  local number = idiv(now, window)
  local current, previous, replay = 0, 0, false
  local stored = redis.call('GET', key)
  if stored then
    local stored_number, stored_current, stored_previous, stored_nonce =
      string.match(stored, '^(%d+):(%d+):(%d+):?(.*)$')
    stored_number = tonumber(stored_number)
    replay = stored_nonce == nonce
    if stored_number == number then
      current, previous = tonumber(stored_current), tonumber(stored_previous)
    elseif stored_number + 1 == number then
      previous = tonumber(stored_current)
    end
  end
  local start = number * window
  local e = now - start
  local fits = current + cost <= limit
    and previous * (window - e) <= (limit - current - cost) * window
  -- A retry of a call that was applied: its permits are taken already.
  local allowed = replay or fits
  if allowed and op == 'allow' and cost > 0 and not replay then
    current = current + cost
    redis.call('SET', key, string.format('%d:%d:%d:', number, current, previous) .. nonce,
      'PX', math.ceil((start + 2 * window - now) / 1000))
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
  if allowed then return {1, 1, limit, remaining, reset_after, 0} end
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
  return {0, 1, limit, remaining, reset_after, retry_after}
end

-- Whether a request of `cost` fits window i's counts.
local function fits(limit, window, elapsed, current, previous)
  return current + cost <= limit
    and previous * (window - elapsed) <= (limit - current - cost) * window
end

local limits, windows, numbers, elapsed, currents, previouses = {}, {}, {}, {}, {}, {}
local allowed = true
local replay = false
for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  local number = idiv(now, window)
  local current, previous = 0, 0
  local stored = redis.call('GET', KEYS[i])
  if stored then
    local stored_number, stored_current, stored_previous, stored_nonce =
      string.match(stored, '^(%d+):(%d+):(%d+):?(.*)$')
    stored_number = tonumber(stored_number)
    stored_current, stored_previous = tonumber(stored_current), tonumber(stored_previous)
    if i == 1 and stored_nonce == nonce then replay = true end
    if stored_number == number then
      current, previous = stored_current, stored_previous
    elseif stored_number + 1 == number then
      previous = stored_current
    end
  end
  limits[i], windows[i], numbers[i] = limit, window, number
  elapsed[i], currents[i], previouses[i] = now - number * window, current, previous
  if not fits(limit, window, elapsed[i], current, previous) then allowed = false end
end

-- A retry of a call that was applied: its permits are taken already.
if replay then allowed = true end
local consume = allowed and op == 'allow' and cost > 0 and not replay
for i = 1, n do
  local limit, window, e = limits[i], windows[i], elapsed[i]
  local start = numbers[i] * window
  if consume then
    currents[i] = currents[i] + cost
    local ttl = math.ceil((start + 2 * window - now) / 1000)
    redis.call('SET', KEYS[i],
      string.format('%d:%d:%d:', numbers[i], currents[i], previouses[i]) .. nonce, 'PX', ttl)
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
