--! include: read_rows
-- QUERY: runs a query program compiled by popoto.engine.sources (Program): each op
-- materialises a source into a temporary sorted set or combines earlier ones.
-- KEYS: the program's keys (indexes, temporaries), addressed by position.
-- ARGV: n_ops, (op args...)*, then result position, mode ('count' | 'page'), offset,
--       count (< 0: to the end), rev ('1' | '0'), withscores ('1' | '0'), position of a
--       temporary used when the result is a plain set (popoto.query.queryset._query_call),
--       and optionally inline_max, nfields, field* (the page's rows, see read_rows.lua).
-- Returns {size} when counting, else {size, page} (+ {inlined, rows} when asked).
-- Temporaries are deleted before returning and expire after a while in case the script
-- is killed.
local ttl = 30
local pos = 1
local n_ops = tonumber(ARGV[pos]); pos = pos + 1
local temps = {}
local function tmp(i) temps[#temps + 1] = KEYS[i]; return KEYS[i] end
-- a range bound as (number, exclusive): '5', '(5', '-inf', '+inf'
local function bound(text)
  local exclusive = string.sub(text, 1, 1) == '('
  if exclusive then text = string.sub(text, 2) end
  if text == '-inf' then return -math.huge, exclusive end
  if text == '+inf' or text == 'inf' then return math.huge, exclusive end
  return tonumber(text), exclusive
end
local function in_range(s, p)
  if s < p.low or (p.lex and s == p.low) then return false end
  if s > p.high or (p.hex and s == p.high) then return false end
  return true
end
for _ = 1, n_ops do
  local op = ARGV[pos]; pos = pos + 1
  if op == OP_RANGE then
    local dst, src = tmp(tonumber(ARGV[pos])), KEYS[tonumber(ARGV[pos + 1])]
    redis.call('ZRANGESTORE', dst, src, ARGV[pos + 2], ARGV[pos + 3], 'BYSCORE')
    pos = pos + 4
  elseif op == OP_PATTERN then
    local dst, src, pat = tmp(tonumber(ARGV[pos])), KEYS[tonumber(ARGV[pos + 1])], ARGV[pos + 2]
    pos = pos + 3
    local cursor = '0'
    repeat
      local res = redis.call('SSCAN', src, cursor, 'MATCH', pat, 'COUNT', 1000)
      cursor = res[1]
      for _, m in ipairs(res[2]) do redis.call('ZADD', dst, 0, m) end
    until cursor == '0'
  elseif op == OP_KEYS then
    local dst, n = tmp(tonumber(ARGV[pos])), tonumber(ARGV[pos + 1])
    pos = pos + 2
    for j = 0, n - 1 do redis.call('ZADD', dst, 0, ARGV[pos + j]) end
    pos = pos + n
  elseif op == OP_GEO then
    local dst, src = tmp(tonumber(ARGV[pos])), KEYS[tonumber(ARGV[pos + 1])]
    redis.call('GEOSEARCHSTORE', dst, src, 'FROMLONLAT', ARGV[pos + 2], ARGV[pos + 3],
      'BYRADIUS', ARGV[pos + 4], ARGV[pos + 5], 'ASC', 'STOREDIST')
    pos = pos + 6
  elseif op == OP_LEX then
    -- an IndexedField's value registry (popoto.fields.shortcuts.LexMatch): the values in
    -- a lex range; the instances are the union of their equality sets. A value whose set
    -- is gone (no instance holds it any more) is pruned from the registry here.
    local dst, reg = tmp(tonumber(ARGV[pos])), KEYS[tonumber(ARGV[pos + 1])]
    local lo, hi, mode, set_prefix = ARGV[pos + 2], ARGV[pos + 3], ARGV[pos + 4], ARGV[pos + 5]
    pos = pos + 6
    for _, m in ipairs(redis.call('ZRANGEBYLEX', reg, lo, hi)) do
      local token = m
      if mode == 'e' then token = string.match(m, '\255(.*)$') or '' end
      local set = set_prefix .. token
      if redis.call('EXISTS', set) == 1 then
        redis.call('ZUNIONSTORE', dst, 2, dst, set, 'WEIGHTS', 1, 0)
      else
        redis.call('ZREM', reg, m)
      end
    end
  elseif op == OP_AND or op == OP_OR then
    local dst, n = tmp(tonumber(ARGV[pos])), tonumber(ARGV[pos + 1])
    pos = pos + 2
    local args = {op == OP_AND and 'ZINTERSTORE' or 'ZUNIONSTORE', dst, n}
    for j = 0, n - 1 do args[#args + 1] = KEYS[tonumber(ARGV[pos + j])] end
    args[#args + 1] = 'WEIGHTS'
    for j = 0, n - 1 do args[#args + 1] = ARGV[pos + n + j] end
    if op == OP_OR then args[#args + 1] = 'AGGREGATE'; args[#args + 1] = 'MIN' end
    redis.call(unpack(args))
    pos = pos + 2 * n
  elseif op == OP_AND_SMALL then
    -- dst, n, score_from (1-based part, 0: none), n x (OP_PART_RANGE | OP_PART_KEY,
    -- key pos, low, high)
    local dst, n, score_from = tmp(tonumber(ARGV[pos])), tonumber(ARGV[pos + 1]),
      tonumber(ARGV[pos + 2])
    pos = pos + 3
    local parts, driver = {}, nil
    for j = 1, n do
      local part = {kind = ARGV[pos], key = KEYS[tonumber(ARGV[pos + 1])]}
      if part.kind == OP_PART_RANGE then
        part.low, part.lex = bound(ARGV[pos + 2])
        part.high, part.hex = bound(ARGV[pos + 3])
        part.lowarg, part.higharg = ARGV[pos + 2], ARGV[pos + 3]
        part.zset = true
        part.size = redis.call('ZCOUNT', part.key, part.lowarg, part.higharg)
      else
        local t = redis.call('TYPE', part.key)['ok']
        part.zset = t == 'zset'
        if part.zset then part.size = redis.call('ZCARD', part.key)
        elseif t == 'set' then part.size = redis.call('SCARD', part.key)
        else part.size = 0 end
      end
      pos = pos + 4
      parts[j] = part
      if not driver or part.size < parts[driver].size then driver = j end
    end
    local d = parts[driver]
    if d.size > 0 then
      local members
      if d.kind == OP_PART_RANGE then
        members = redis.call('ZRANGEBYSCORE', d.key, d.lowarg, d.higharg)
      elseif d.zset then
        members = redis.call('ZRANGE', d.key, 0, -1)
      else
        members = redis.call('SMEMBERS', d.key)
      end
      local batch = {}
      for _, m in ipairs(members) do
        local ok, score = true, 0
        for j = 1, n do
          local p = parts[j]
          if j ~= driver or j == score_from then
            if p.zset then
              local s = redis.call('ZSCORE', p.key, m)
              if not s then ok = false
              else
                s = tonumber(s)
                if p.kind == OP_PART_RANGE and not in_range(s, p) then ok = false end
                if j == score_from then score = s end
              end
            elseif redis.call('SISMEMBER', p.key, m) == 0 then ok = false
            elseif j == score_from then score = 1 end
          end
          if not ok then break end
        end
        if ok then
          batch[#batch + 1] = score
          batch[#batch + 1] = m
          if #batch >= 2000 then
            redis.call('ZADD', dst, unpack(batch))
            batch = {}
          end
        end
      end
      if #batch > 0 then redis.call('ZADD', dst, unpack(batch)) end
    end
  elseif op == OP_NOT then
    local dst = tmp(tonumber(ARGV[pos]))
    redis.call('ZDIFFSTORE', dst, 2, KEYS[tonumber(ARGV[pos + 1])], KEYS[tonumber(ARGV[pos + 2])])
    pos = pos + 3
  end
  if #temps > 0 then redis.call('EXPIRE', temps[#temps], ttl) end
end
local result = KEYS[tonumber(ARGV[pos])]
local mode, offset, count, rev, withscores =
  ARGV[pos + 1], tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3]), ARGV[pos + 4], ARGV[pos + 5]
if redis.call('TYPE', result)['ok'] == 'set' then
  local conv = tmp(tonumber(ARGV[pos + 6]))
  redis.call('ZUNIONSTORE', conv, 1, result, 'WEIGHTS', 0)
  result = conv
end
local out
if mode == 'count' then
  out = {redis.call('ZCARD', result)}
else
  local stop = count < 0 and -1 or offset + count - 1
  local args = {rev == '1' and 'ZREVRANGE' or 'ZRANGE', result, offset, stop}
  if withscores == '1' then args[#args + 1] = 'WITHSCORES' end
  local flat = redis.call(unpack(args))
  out = {redis.call('ZCARD', result), flat}
  if withscores == '1' and ARGV[pos + 7] then  -- the page's hashes too (read_rows.lua)
    out[3], out[4] = read_rows(flat, pos + 7)
  end
end
for _, t in ipairs(temps) do redis.call('DEL', t) end
return out
