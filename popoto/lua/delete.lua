--! include: remove_entries run_commands
-- DELETE: removes one instance and its index entries (WriteBatch.delete_args).
-- KEYS: 1 instance key, 2 class set, 3.. the other keys it touches (declared only)
-- ARGV: flags (FLAG_EXTERNAL: claims are external), n_owners, (owner base)*,
--       n_cmds, (nargs cmd args...)*
-- Returns 1/0 (existed); with FLAG_EXTERNAL {existed, (claim hash, claim field)*} of the
-- claims to release.
local key, class_set = KEYS[1], KEYS[2]
local released = nil
if ARGV[1] == FLAG_EXTERNAL then released = {} end
local n_owners = tonumber(ARGV[2])
local pos = 3
for _ = 1, n_owners do
  remove_entries(redis.call('HGET', key, IDX_PREFIX .. ARGV[pos]), key, ARGV[pos + 1], nil,
    released)
  pos = pos + 2
end
local existed = redis.call('DEL', key)
redis.call('SREM', class_set, key)
local n_cmds = tonumber(ARGV[pos]); pos = pos + 1
if existed == 1 then run_commands(ARGV, pos, n_cmds) end
if released then
  local out = {existed}
  for _, c in pairs(released) do out[#out + 1] = c[1]; out[#out + 1] = c[2] end
  return out
end
return existed
