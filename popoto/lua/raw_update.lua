-- RAW_UPDATE: Model.raw_update (popoto.models.bulk): HSET only where the hash exists.
-- KEYS: instance keys (one tag group); ARGV: (field value)*. Returns how many were updated.
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, unpack(ARGV))
    n = n + 1
  end
end
return n
