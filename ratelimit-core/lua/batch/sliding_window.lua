-- Exact sliding log, one window: several calls on one log (see `prelude/batch_arguments.lua`).
-- One trim, one count, one TTL and (first sent) one ZADD for all of them; each call's
-- members and answer are the single script's, so a call is recognized by its own members
-- whichever way it is sent again.
redis.call('ZREMRANGEBYSCORE', key, '-inf', format('%d', now - window))
local count = redis.call('ZCARD', key)
local added_any = false
-- The newest entry's score, read when first needed; anything added is added now.
local newest = nil

for i = 1, calls do
  local cost, nonce = tonumber(ARGV[2 + 2 * i]), ARGV[3 + 2 * i]
  local consume = consuming and cost > 0
  local allowed = count + cost <= limit
  local at = 4 * i
  local done = false
  if allowed and consume then
    if add(key, nonce, cost) > 0 then
      count = count + cost
      added_any, newest = true, now
      reply[at - 3], reply[at - 2], reply[at - 1], reply[at] = 1, limit - count, window, 0
      done = true
    end
  elseif consume then
    -- Denied by the count: unless this is a call that was applied, sent again.
    allowed = applied(key, nonce)
  end
  if not done then
    local remaining = limit - count
    if remaining < 0 then remaining = 0 end
    local reset_after = 0
    if count > 0 then
      if not newest then newest = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]) end
      reset_after = newest + window - now
    end
    local retry_after = 0
    if not allowed then
      local nth = count + cost - limit - 1
      retry_after = scored_at(nth, count, function()
        return redis.call('ZRANGE', key, nth, nth, 'WITHSCORES')
      end) + window - now
    end
    reply[at - 3], reply[at - 2], reply[at - 1], reply[at] =
      allowed and 1 or 0, remaining, reset_after, retry_after
  end
end

-- The TTL, once, as the single script leaves it: a log added to lives one window; otherwise
-- its TTL is only ever extended, to when the newest entry leaves the window. Set last.
flush(key)
if added_any then
  redis.call('PEXPIRE', key, format('%d', math.ceil(window / 1000)))
elseif count > 0 then
  if not newest then newest = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]) end
  local needed = math.ceil((newest + window - now) / 1000)
  local ttl = redis.call('PTTL', key)
  if ttl >= 0 and ttl < needed then redis.call('PEXPIRE', key, format('%d', needed)) end
end
return reply
