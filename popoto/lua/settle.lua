-- SETTLE: replaces a claim's value if it is still the expected one (popoto.engine.claims).
-- KEYS: claim hash; ARGV: field, expected value, new value ('' deletes). Returns 1 or 0.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1])
else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
