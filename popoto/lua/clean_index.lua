-- CLEAN_INDEX: removes the stale members of one index (popoto.models.maintenance.clean).
-- KEYS[1]: the index. ARGV: 1 mode: 'class' (class set), or the kind of the index's
-- entries (KIND_SET, KIND_ZSET: also geo entries, KIND_CLAIM: a claim hash); 2 the owner
-- whose @idx record must list an entry; 3 its record base (relative rows); 4.. the
-- members (claim fields) to check.
-- Returns how many were removed.
local idx, mode, owner, base = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local kinds = ({[KIND_SET] = KIND_SET, [KIND_ZSET] = KIND_ZSET .. KIND_GEO,
                [KIND_CLAIM] = KIND_CLAIM})[mode]
local function is_hash(k)
  return redis.call('TYPE', k)['ok'] == 'hash'
end
local function owns(inst, m)
  local packed = redis.call('HGET', inst, IDX_PREFIX .. owner)
  if not packed then return false end
  local ok, entries = pcall(cmsgpack.unpack, packed)
  if not ok or type(entries) ~= 'table' then return false end
  for _, e in ipairs(entries) do
    local kind, k = e[1], e[2]
    local upper = string.upper(kind)
    if upper ~= kind then kind, k = upper, base .. (k or '') end
    if k == idx and (e[3] or inst) == m and string.find(kinds, kind, 1, true) then
      return true
    end
  end
  return false
end
local removed = 0
for i = 4, #ARGV do
  local m = ARGV[i]
  if mode == 'class' then
    if not is_hash(m) then removed = removed + redis.call('SREM', idx, m) end
  elseif mode == KIND_CLAIM then
    local holder = redis.call('HGET', idx, m)
    if holder and not (is_hash(holder) and owns(holder, m)) then
      removed = removed + redis.call('HDEL', idx, m)
    end
  elseif not (is_hash(m) and owns(m, m)) then
    if mode == KIND_SET then
      removed = removed + redis.call('SREM', idx, m)
    else
      removed = removed + redis.call('ZREM', idx, m)
    end
  end
end
return removed
