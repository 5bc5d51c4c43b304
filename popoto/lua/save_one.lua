-- Fragment save_one(kb, ab): the single write of one instance (popoto.engine.write:
-- WriteBatch.save_args), shared by the save script (one instance) and the bulk_save
-- script (a chunk). Its KEYS start after KEYS[kb], its ARGV after ARGV[ab]:
-- KEYS: 1 instance key, 2 class set, 3 previous key (the key itself when none),
--       4.. every other key the call touches (declared for Redis Cluster; not read here)
-- ARGV: flags, ttl_mode, ttl_value, n_claims, (hash field owner)*,
--       n_owners_replaced, (owner base)*, n_owners_migrated, (owner base)*,
--       n_hset_pairs, (field value)*, n_hdel, field*, n_entries, (kind key member score)*,
--       n_cmds, (nargs cmd args...)*
-- Returns 1; with FLAG_EXTERNAL {(claim hash, claim field)*} of the claims to release.
-- Every check comes before the first write: an error reply means nothing was written.
local function save_one(kb, ab)
  local key, class_set, old_key = KEYS[kb + 1], KEYS[kb + 2], KEYS[kb + 3]
  local flags = ARGV[ab + 1]
  -- X<deadline ms>: claims are external (sharded model) and leased until the deadline
  local deadline = string.match(flags, FLAG_EXTERNAL .. '(%d+)')
  local released = nil
  if deadline then
    local t = redis.call('TIME')
    if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(deadline) then
      return redis.error_reply(ERR_LEASE .. ' ' .. key)
    end
    released = {}
  end
  if string.find(flags, FLAG_NEW, 1, true) and redis.call('EXISTS', key) == 1 then
    return redis.error_reply(ERR_EXISTS .. ' ' .. key)
  end
  if string.find(flags, FLAG_EXISTING, 1, true) and redis.call('EXISTS', key) == 0 then
    return redis.error_reply(ERR_MISSING .. ' ' .. key)
  end
  local pos = ab + 5
  local n_claims = tonumber(ARGV[ab + 4])
  for i = 1, n_claims do
    local h, f = ARGV[pos], ARGV[pos + 1]
    pos = pos + 2
    local owner = redis.call('HGET', h, f)
    if owner and owner ~= key and owner ~= old_key and redis.call('EXISTS', owner) == 1 then
      return redis.error_reply(ERR_UNIQUE .. ' ' .. i .. ' ' .. owner)
    end
  end
  local src = key
  if old_key ~= '' and old_key ~= key then src = old_key end
  local kept = {}
  -- a create checked above that no hash exists at key: it has no entries to remove
  local fresh = src == key and string.find(flags, FLAG_NEW, 1, true)
  -- two groups, replaced owners then migrated ones: both drop their entries from src
  for _ = 1, 2 do
    local n_owners = tonumber(ARGV[pos]); pos = pos + 1
    for _ = 1, n_owners do
      if not fresh then
        remove_entries(redis.call('HGET', src, IDX_PREFIX .. ARGV[pos]), src, ARGV[pos + 1],
          kept, released)
      end
      pos = pos + 2
    end
  end
  if src ~= key then
    redis.call('DEL', src)
    redis.call('SREM', class_set, src)
  end
  local n_pairs = tonumber(ARGV[pos]); pos = pos + 1
  if n_pairs > 0 then
    local hargs = {'HSET', key}
    for j = 0, 2 * n_pairs - 1 do hargs[#hargs + 1] = ARGV[pos + j] end
    redis.call(unpack(hargs))
    pos = pos + 2 * n_pairs
  end
  local n_hdel = tonumber(ARGV[pos]); pos = pos + 1
  if n_hdel > 0 then
    local dargs = {'HDEL', key}
    for j = 0, n_hdel - 1 do dargs[#dargs + 1] = ARGV[pos + j] end
    redis.call(unpack(dargs))
    pos = pos + n_hdel
  end
  local n_entries = tonumber(ARGV[pos]); pos = pos + 1
  for _ = 1, n_entries do
    local kind, k, m, s = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
    pos = pos + 4
    if kind == KIND_SET then redis.call('SADD', k, m)
    elseif kind == KIND_ZSET then redis.call('ZADD', k, s, m)
    elseif kind == KIND_GEO then
      local sep = string.find(s, ',', 1, true)
      redis.call('GEOADD', k, string.sub(s, sep + 1), string.sub(s, 1, sep - 1), m)
    elseif kind == KIND_CLAIM and released then released[k .. '\n' .. m] = nil
    elseif kind == KIND_CLAIM then redis.call('HSET', k, m, key)
    elseif kind == KIND_LINKED_KEY then
      local old = kept[KIND_LINKED_KEY .. m]
      kept[KIND_LINKED_KEY .. m] = nil
      if old and old[2] ~= k and redis.call('EXISTS', old[2]) == 1 then
        redis.call('RENAME', old[2], k)
      end
    elseif kind == KIND_COMPANION_FIELD then
      local old = kept[KIND_COMPANION_FIELD .. k]
      kept[KIND_COMPANION_FIELD .. k] = nil
      if old and old[3] ~= m then
        local v = redis.call('HGET', k, old[3])
        if v then
          redis.call('HDEL', k, old[3])
          redis.call('HSET', k, m, v)
        end
      end
      redis.call('HSETNX', k, m, s)
    end
  end
  for _, e in pairs(kept) do
    if e[1] == KIND_LINKED_KEY then redis.call('DEL', e[2]) else redis.call('HDEL', e[2], e[3]) end
  end
  redis.call('SADD', class_set, key)
  local ttl_mode = ARGV[ab + 2]
  if ttl_mode == TTL_SECONDS then redis.call('EXPIRE', key, ARGV[ab + 3])
  elseif ttl_mode == TTL_AT then redis.call('EXPIREAT', key, ARGV[ab + 3])
  end
  local n_cmds = tonumber(ARGV[pos]); pos = pos + 1
  run_commands(ARGV, pos, n_cmds)
  if released then
    local out = {}
    for _, c in pairs(released) do out[#out + 1] = c[1]; out[#out + 1] = c[2] end
    return out
  end
  return 1
end
