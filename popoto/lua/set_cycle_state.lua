-- SET_CYCLE_STATE: HSET a member's value in a companion hash if the member exists
-- (popoto.fields.decaying). KEYS: 1 instance key, 2 companion hash. ARGV: 1 value.
-- Returns 1. Error: ERR_MISSING.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply(ERR_MISSING .. ' ' .. KEYS[1])
end
redis.call('HSET', KEYS[2], KEYS[1], ARGV[1])
return 1
