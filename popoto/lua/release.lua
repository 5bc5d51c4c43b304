-- RELEASE: drops a claim the holder's write no longer needs (popoto.engine.claims).
-- KEYS: claim hash; ARGV: field, holder.
-- -> 1 held plainly by the holder: deleted | 2 pending for the same holder (another save
--    of that instance in flight): marked released, so that save's confirm asks the
--    instance's record before keeping it | 0 anything else: untouched
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
if cur == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
local _, who = string.match(cur, '^~(%d+)~(.*)$')
if who == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], CLAIM_RELEASED_MARK .. cur)
  return 2
end
return 0
