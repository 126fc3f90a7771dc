-- GCRA token bucket over one or more windows, all or nothing.
--
-- Each window is a bucket of `limit` permits refilled at limit/window. Its state is one value, the
-- theoretical arrival time (TAT), kept as whole microseconds plus a remainder in 1/limit of a
-- microsecond so that the emission interval window/limit is exact: a burst admits exactly `limit`.
--
-- KEYS[i]  the TAT of window i, stored as "<µs>:<remainder>:<nonce of the call that wrote it>"
-- ARGV[1]  "allow" or "peek"
-- ARGV[2]  cost
-- ARGV[3]  nonce, unique per call: a call retried after its reply was lost (the cluster client
--          retries on I/O errors) finds its own nonce stored and consumes nothing twice
-- ARGV[4], ARGV[5], ...  limit and window length (µs) of each window, in pairs
--
-- Returns {allowed, binding window (1-based), limit, remaining, reset_after_us, retry_after_us};
-- for a policy of one window only {allowed, remaining, reset_after_us, retry_after_us}: the window
-- is the binding one, and the client knows its limit.

-- One window, the common case: the same steps as the loops below, without their tables.
if n == 1 then
  local key, limit, window = KEYS[1], tonumber(ARGV[4]), tonumber(ARGV[5])
  local tat, frac, replay = now, 0, false
  local stored = redis.call('GET', key)
  if stored then
    local stored_tat, stored_frac, stored_nonce = string.match(stored, '^(%d+):(%d+):?(.*)$')
    tat, frac = tonumber(stored_tat), tonumber(stored_frac)
    replay = stored_nonce == nonce
    if tat < now then tat, frac = now, 0 end
  end
  local inc = cost * window
  local whole = math.floor(inc / limit)
  local new_tat, new_frac = tat + whole, frac + (inc - whole * limit)
  if new_frac >= limit then new_tat, new_frac = new_tat + 1, new_frac - limit end
  local beyond = new_tat - now - window
  local fits = beyond < 0 or (beyond == 0 and new_frac == 0)
  -- A retry of a call that was applied: its permits are taken already.
  local allowed = replay or fits
  if allowed and op == 'allow' and cost > 0 and not replay then
    tat, frac = new_tat, new_frac
    redis.call('SET', key, string.format('%d:%d:', tat, frac) .. nonce,
      'PX', format('%d', math.ceil((tat - now + 1) / 1000)))
  end
  local remaining = math.floor(((now + window - tat) * limit - frac) / window)
  if remaining < 0 then remaining = 0 end
  if remaining > limit then remaining = limit end
  local reset_after = tat - now
  if frac > 0 then reset_after = reset_after + 1 end
  if allowed then return {1, remaining, reset_after, 0} end
  if new_frac > 0 then beyond = beyond + 1 end
  return {0, remaining, reset_after, beyond}
end

local limits, windows, tats, fracs, new_tats, new_fracs = {}, {}, {}, {}, {}, {}
local allowed = true
local replay = false
for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  limits[i], windows[i] = limit, window
  local tat, frac = now, 0
  local stored = redis.call('GET', KEYS[i])
  if stored then
    local stored_tat, stored_frac, stored_nonce = string.match(stored, '^(%d+):(%d+):?(.*)$')
    tat, frac = tonumber(stored_tat), tonumber(stored_frac)
    if i == 1 and stored_nonce == nonce then replay = true end
    if tat < now then tat, frac = now, 0 end
  end
  tats[i], fracs[i] = tat, frac
  -- Advance the TAT by cost * window / limit, exactly.
  local inc = cost * window
  local whole = math.floor(inc / limit)
  local new_tat, new_frac = tat + whole, frac + (inc - whole * limit)
  if new_frac >= limit then new_tat, new_frac = new_tat + 1, new_frac - limit end
  new_tats[i], new_fracs[i] = new_tat, new_frac
  local ahead = new_tat - now
  if ahead > window or (ahead == window and new_frac > 0) then allowed = false end
end

-- A retry of a call that was applied: its permits are taken already.
if replay then allowed = true end
local consume = allowed and op == 'allow' and cost > 0 and not replay
for i = 1, n do
  local limit, window = limits[i], windows[i]
  local tat, frac = tats[i], fracs[i]
  if consume then
    tat, frac = new_tats[i], new_fracs[i]
    local ttl = math.ceil((tat - now + 1) / 1000)
    redis.call('SET', KEYS[i], string.format('%d:%d:', tat, frac) .. nonce, 'PX', format('%d', ttl))
  end
  -- Whole permits available: floor((now + window - TAT) / (window / limit)).
  local remaining = math.floor(((now + window - tat) * limit - frac) / window)
  if remaining < 0 then remaining = 0 end
  if remaining > limit then remaining = limit end
  local reset_after = tat - now
  if frac > 0 then reset_after = reset_after + 1 end
  local retry_after = 0
  if not allowed then
    local ahead = new_tats[i] - now - window
    if ahead > 0 or (ahead == 0 and new_fracs[i] > 0) then
      retry_after = ahead
      if new_fracs[i] > 0 then retry_after = retry_after + 1 end
    end
  end
  consider(allowed, i, remaining, reset_after, retry_after)
end

return answer(allowed, limits)
