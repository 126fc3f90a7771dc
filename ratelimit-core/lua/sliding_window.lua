-- Exact sliding log, one window.
--
-- KEYS[1]  the log: a sorted set, score = admission time (µs, Redis clock), member unique per permit
-- ARGV[1]  "allow" (consume when permitted) or "peek" (evaluate only)
-- ARGV[2]  cost: permits this request needs
-- ARGV[3]  nonce: unique per call across all clients (makes members unique within one microsecond)
-- ARGV[4]  limit: permits allowed in any interval of the window's length
-- ARGV[5]  window length in microseconds
--
-- Returns {allowed, remaining, reset_after_us, retry_after_us}: one window, the binding one, whose
-- limit the client knows.
-- remaining is what is left after this call (allow) or what could be taken now (peek);
-- reset_after_us is the time until every permit in the log has returned;
-- retry_after_us is the time until a request of this cost can succeed (0 when it can now).
local key = KEYS[1]
local limit = tonumber(ARGV[4])
local window = tonumber(ARGV[5])

-- An entry admitted at s counts while now < s + window.
redis.call('ZREMRANGEBYSCORE', key, '-inf', format('%d', now - window))
local count = redis.call('ZCARD', key)
local consuming = op == 'allow' and cost > 0
local allowed = count + cost <= limit
local replay = false

if allowed and consuming then
  -- The common path. NX: a retry of a call that was applied (its reply lost, the cluster client
  -- retried) finds its own members and adds nothing; its permits are taken already. A call's
  -- members share one score, so they stay or leave the log together: all are added or none.
  local added
  if cost == 1 then
    added = redis.call('ZADD', key, 'NX', format('%d', now), nonce .. ':1')
  else
    added = 0
    local batch, now_text = {'NX'}, format('%d', now)
    for i = 1, cost do
      batch[#batch + 1] = now_text
      batch[#batch + 1] = nonce .. ':' .. i
      if #batch >= 1001 or i == cost then
        added = added + redis.call('ZADD', key, unpack(batch))
        batch = {'NX'}
      end
    end
  end
  if added > 0 then
    -- The newest entry is the one just added (as in the twin's log): it leaves the window in
    -- exactly one window's length. The log lives as long.
    redis.call('PEXPIRE', key, format('%d', math.ceil(window / 1000)))
    count = count + cost
    return {1, limit - count, window, 0}
  end
  replay = true
elseif consuming then
  -- Denied by the count: unless this is a retry of a call that was applied.
  replay = redis.call('ZSCORE', key, nonce .. ':1') ~= false
  allowed = replay
end

local remaining = limit - count
if remaining < 0 then remaining = 0 end

local reset_after = 0
if count > 0 then
  local newest = tonumber(redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2])
  reset_after = newest + window - now
end

local retry_after = 0
if not allowed then
  -- The request fits once the oldest (count + cost - limit) entries have left the window.
  local nth = redis.call('ZRANGE', key, count + cost - limit - 1, count + cost - limit - 1, 'WITHSCORES')
  retry_after = tonumber(nth[2]) + window - now
end

-- Nothing was added: the TTL is only ever extended, to when the newest entry leaves the window
-- (after a reload to a longer window, a denied client's log must not expire with the old one).
-- Set last: Redis may judge a TTL against its real clock, and one shorter than the script's own
-- run would end the key before the reads above.
if count > 0 then
  local needed = math.ceil(reset_after / 1000)
  local ttl = redis.call('PTTL', key)
  if ttl >= 0 and ttl < needed then redis.call('PEXPIRE', key, format('%d', needed)) end
end

return {allowed and 1 or 0, remaining, reset_after, retry_after}
