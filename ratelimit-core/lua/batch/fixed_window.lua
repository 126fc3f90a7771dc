-- Fixed window, one window: several calls on one counter (see `prelude/batch_arguments.lua`).
-- One GET and at most one write for all of them; each call's answer is the single script's.
-- The counter is the single script's integer, count * 65536 + tag (see `fixed_window.lua`).
local SPAN = 65536
local number = math.floor(now / window)
local tag = number % (SPAN - 1) + 1
local count, current = 0, false
local stored = redis.call('GET', key)
if stored then
  local value = tonumber(stored)
  if value then
    if value % SPAN == tag then count, current = (value - tag) / SPAN, true end
  else
    -- A counter of the earlier encoding: read, then written again as an integer.
    local stored_number, stored_count = string.match(stored, '^(%d+):(%d+)')
    if tonumber(stored_number) == number then count = tonumber(stored_count) end
  end
end
local start = count
local until_end = (number + 1) * window - now
local wrote = false
for i = 1, calls do
  local cost = tonumber(ARGV[2 + 2 * i])
  local allowed = count + cost <= limit
  if allowed and consuming and cost > 0 then
    count = count + cost
    wrote = true
  end
  local remaining = limit - count
  if remaining < 0 then remaining = 0 end
  local reset_after = 0
  if count > 0 then reset_after = until_end end
  local at = 4 * i
  if allowed then
    reply[at - 3], reply[at - 2], reply[at - 1], reply[at] = 1, remaining, reset_after, 0
  else
    reply[at - 3], reply[at - 2], reply[at - 1], reply[at] = 0, remaining, reset_after, until_end
  end
end
if wrote then
  if current then
    redis.call('INCRBY', key, format('%d', (count - start) * SPAN))
  else
    redis.call('SET', key, format('%d', count * SPAN + tag), 'PX', format('%d', math.ceil(until_end / 1000)))
  end
end
return reply
