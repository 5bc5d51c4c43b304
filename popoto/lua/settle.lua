-- SETTLE: replaces a claim's value if it is still the expected one (popoto.engine.claims).
-- KEYS: claim hash; ARGV: field, expected value, new value ('' deletes).
-- -> 1 done | 2 the expected pending value was marked released: left as is | 0 otherwise
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur ~= ARGV[2] then
  if cur and cur == CLAIM_RELEASED_MARK .. ARGV[2] then return 2 end
  return 0
end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
