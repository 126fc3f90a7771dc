-- Postlude for tests only: the body's answer, then the TTL (ms) the body left on each key, read
-- inside the script (Redis's clock stands still while a script runs, so it is exact), and the
-- key made persistent: with the clock injected, real time passing between two calls must not
-- expire what the injected clock still needs. -1 for a key that was not written this call.
end
local reply = decide()
for i = 1, #KEYS do
  reply[#reply + 1] = redis.call('PTTL', KEYS[i])
  redis.call('PERSIST', KEYS[i])
end
return reply
