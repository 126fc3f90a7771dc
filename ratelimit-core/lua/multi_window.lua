-- Exact sliding log over several windows, all or nothing.
--
-- One log serves every window: an admitted request is recorded in all of them at once, so the
-- log holds at most the longest window's limit of entries, and each window counts its own tail.
--
-- KEYS[1]  the log: a sorted set, score = admission time (µs, Redis clock), member unique per permit
-- ARGV[1]  "allow" or "peek"
-- ARGV[2]  cost
-- ARGV[3]  nonce, unique per call across all clients
-- ARGV[4], ARGV[5], ...  limit and window length (µs) of each window, in pairs
--
-- Returns {allowed, binding window (1-based), limit, remaining, reset_after_us, retry_after_us} for
-- the binding window: when denied, the denying window that waits longest; when allowed, the window
-- with the fewest permits left (the longer wait on a tie).
local key = KEYS[1]

local limits, windows = {}, {}
local longest = 0
for i = 4, #ARGV, 2 do
  limits[#limits + 1] = tonumber(ARGV[i])
  windows[#windows + 1] = tonumber(ARGV[i + 1])
  if windows[#windows] > longest then longest = windows[#windows] end
end

redis.call('ZREMRANGEBYSCORE', key, '-inf', format('%d', now - longest))

local counts = {}
local allowed = true
for i = 1, #windows do
  -- Scores are whole microseconds: "after now - window" is "from now - window + 1" (written
  -- with '%d': Lua's own number-to-text, %.14g, would lose a timestamp's last two digits).
  counts[i] = redis.call('ZCOUNT', key, format('%d', now - windows[i] + 1), '+inf')
  if counts[i] + cost > limits[i] then allowed = false end
end

local consuming = op == 'allow' and cost > 0
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
    -- The newest entry is the one just added (as in the twin's log): in every window it
    -- leaves in exactly that window's length. The log lives as long as the longest.
    redis.call('PEXPIRE', key, format('%d', math.ceil(longest / 1000)))
    for i = 1, #windows do
      consider(true, i, limits[i] - counts[i] - cost, windows[i], 0)
    end
    return answer(true, limits)
  end
  replay = true
elseif consuming then
  -- Denied by the counts: unless this is a retry of a call that was applied.
  replay = redis.call('ZSCORE', key, nonce .. ':1') ~= false
  allowed = replay
end

local newest = nil
local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if top[2] then newest = tonumber(top[2]) end

for i = 1, #windows do
  local remaining = limits[i] - counts[i]
  if remaining < 0 then remaining = 0 end
  local reset_after = 0
  if counts[i] > 0 and newest then reset_after = newest + windows[i] - now end
  local retry_after = 0
  if not allowed and counts[i] + cost > limits[i] then
    local skip = counts[i] + cost - limits[i] - 1
    local nth = redis.call('ZRANGEBYSCORE', key, format('%d', now - windows[i] + 1), '+inf', 'WITHSCORES', 'LIMIT', skip, 1)
    retry_after = tonumber(nth[2]) + windows[i] - now
  end
  consider(allowed, i, remaining, reset_after, retry_after)
end

-- Nothing was added: the TTL is only ever extended, to when the newest entry leaves the longest
-- window (after a reload to longer windows, a denied client's log must not expire with the old
-- ones). Set last: Redis may judge a TTL against its real clock, and one shorter than the
-- script's own run would end the key before the reads above.
if newest then
  local needed = math.ceil((newest + longest - now) / 1000)
  local ttl = redis.call('PTTL', key)
  if ttl >= 0 and ttl < needed then redis.call('PEXPIRE', key, format('%d', needed)) end
end

return answer(allowed, limits)
