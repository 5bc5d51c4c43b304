-- SCALE_CYCLES: atomic read-modify-write of a member's cycle amplitudes
-- (popoto.fields.decaying): multiply, clamp to [0, DECAY_MAX_AMPLITUDE], snap below
-- DECAY_MIN_AMPLITUDE to 0.
-- KEYS: 1 instance key, 2 cycles hash. ARGV: 1 factor.
-- Returns the packed cycles (false when the member has none). Error: ERR_MISSING.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply(ERR_MISSING .. ' ' .. KEYS[1])
end
local raw = redis.call('HGET', KEYS[2], KEYS[1])
if not raw then return false end
local cycles = cmsgpack.unpack(raw)
local factor = tonumber(ARGV[1])
for _, c in ipairs(cycles) do
  local a = tonumber(c[2]) * factor
  if a > DECAY_MAX_AMPLITUDE then a = DECAY_MAX_AMPLITUDE end
  if a < DECAY_MIN_AMPLITUDE then a = 0 end
  c[2] = a
end
if #cycles == 0 then return raw end
local packed = cmsgpack.pack(cycles)
redis.call('HSET', KEYS[2], KEYS[1], packed)
return packed
