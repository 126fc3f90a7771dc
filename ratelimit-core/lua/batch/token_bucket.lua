-- GCRA token bucket, one window: several calls on one bucket (see
-- `prelude/batch_arguments.lua`). One GET and at most one SET for all of them; each call's
-- answer is the single script's.
local tat, frac = now, 0
local stored = redis.call('GET', key)
if stored then
  local stored_tat, stored_frac = string.match(stored, '^(%d+):(%d+)')
  tat, frac = tonumber(stored_tat), tonumber(stored_frac)
  if tat < now then tat, frac = now, 0 end
end
local wrote = false
for i = 1, calls do
  local cost = tonumber(ARGV[2 + 2 * i])
  local inc = cost * window
  local whole = math.floor(inc / limit)
  local new_tat, new_frac = tat + whole, frac + (inc - whole * limit)
  if new_frac >= limit then new_tat, new_frac = new_tat + 1, new_frac - limit end
  local beyond = new_tat - now - window
  local allowed = beyond < 0 or (beyond == 0 and new_frac == 0)
  if allowed and consuming and cost > 0 then
    tat, frac, wrote = new_tat, new_frac, true
  end
  local remaining = math.floor(((now + window - tat) * limit - frac) / window)
  if remaining < 0 then remaining = 0 end
  if remaining > limit then remaining = limit end
  local reset_after = tat - now
  if frac > 0 then reset_after = reset_after + 1 end
  local retry_after = 0
  if not allowed then
    retry_after = beyond
    if new_frac > 0 then retry_after = retry_after + 1 end
  end
  local at = 4 * i
  reply[at - 3], reply[at - 2], reply[at - 1], reply[at] =
    allowed and 1 or 0, remaining, reset_after, retry_after
end
if wrote then
  redis.call('SET', key, string.format('%d:%d:', tat, frac) .. batch,
    'PX', format('%d', math.ceil((tat - now + 1) / 1000)))
end
return reply
