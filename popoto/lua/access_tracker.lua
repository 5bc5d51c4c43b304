-- ACCESS_TRACKER: records one access of each instance (popoto.behaviours.access_tracker).
-- KEYS: (instance hash, access log)*. ARGV: 1 now, 2 max log length, 3 count field,
-- 4 last field. Returns the new count per instance (0 when its hash is gone).
local out = {}
local cap = tonumber(ARGV[2])
for i = 1, #KEYS, 2 do
  local h, log = KEYS[i], KEYS[i + 1]
  if redis.call('EXISTS', h) == 1 then
    out[#out + 1] = redis.call('HINCRBY', h, ARGV[3], 1)
    redis.call('HSET', h, ARGV[4], ARGV[1])
    redis.call('RPUSH', log, ARGV[1])
    redis.call('LTRIM', log, -cap, -1)
    local ttl = redis.call('PTTL', h)
    if ttl > 0 then redis.call('PEXPIRE', log, ttl) else redis.call('PERSIST', log) end
  else
    out[#out + 1] = 0
  end
end
return out
