--! include: remove_entries run_commands save_one
-- BULK_SAVE: the writes of a chunk of instances of one tag group in one call
-- (popoto.models.bulk), each exactly as the save script would write it, in order.
-- KEYS: every instance's save keys, one after the other.
-- ARGV: n, then per instance: its first KEYS position - 1, its ARGV length, its ARGV.
-- Returns one reply per instance: 1, the released claims, or an error (that instance
-- wrote nothing, or for a command error part of itself, as its own save would; the
-- others are written).
local n = tonumber(ARGV[1])
local pos = 2
local out = {}
for i = 1, n do
  local kb, argc = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1])
  -- a command error inside one save (e.g. WRONGTYPE) is that instance's reply only
  local ok, reply = pcall(save_one, kb, pos + 1)
  if ok then out[i] = reply
  elseif type(reply) == 'table' and reply.err then out[i] = reply
  else out[i] = redis.error_reply(tostring(reply)) end
  pos = pos + 2 + argc
end
return out
