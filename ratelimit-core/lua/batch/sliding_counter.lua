-- Sliding window counter, one window: several calls on one pair of counts (see
-- `prelude/batch_arguments.lua`). One GET and at most one SET for all of them; each call's
-- answer is the single script's. Integer arithmetic below 2^53, as in `sliding_counter.lua`.

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
local current, previous = 0, 0
local stored = redis.call('GET', key)
if stored then
  local stored_number, stored_current, stored_previous =
    string.match(stored, '^(%d+):(%d+):(%d+)')
  stored_number = tonumber(stored_number)
  if stored_number == number then
    current, previous = tonumber(stored_current), tonumber(stored_previous)
  elseif stored_number + 1 == number then
    previous = tonumber(stored_current)
  end
end
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
if wrote then
  redis.call('SET', key, string.format('%d:%d:%d:', number, current, previous) .. batch,
    'PX', math.ceil((start + 2 * window - now) / 1000))
end
return reply
