-- QUERY: runs a query program compiled by popoto.engine.sources (Program): each op
-- materialises a source into a temporary sorted set or combines earlier ones.
-- KEYS: the program's keys (indexes, temporaries), addressed by position.
-- ARGV: n_ops, (op args...)*, then result position, mode ('count' | 'page'), offset,
--       count (< 0: to the end), rev ('1' | '0'), withscores ('1' | '0'), position of a
--       temporary used when the result is a plain set (popoto.query.queryset._query_call).
-- Returns {size} when counting, else {size, page}. Temporaries are deleted before
-- returning and expire after a while in case the script is killed.
local ttl = 30
local pos = 1
local n_ops = tonumber(ARGV[pos]); pos = pos + 1
local temps = {}
local function tmp(i) temps[#temps + 1] = KEYS[i]; return KEYS[i] end
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
    -- a lex index (popoto.fields.shortcuts.LexMatch): members scored by the first bytes
    -- of their value; each candidate's value (a msgpack str in its hash) is checked
    local dst, src = tmp(tonumber(ARGV[pos])), KEYS[tonumber(ARGV[pos + 1])]
    local lo, hi, mode = ARGV[pos + 2], ARGV[pos + 3], ARGV[pos + 4]
    local needle, fname = ARGV[pos + 5], ARGV[pos + 6]
    pos = pos + 7
    local n = #needle
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', src, lo, hi)) do
      local raw = redis.pcall('HGET', m, fname)
      if type(raw) == 'string' then
        local ok, v = pcall(cmsgpack.unpack, raw)
        if ok and type(v) == 'string' and #v >= n and (n == 0
            or (mode == 's' and string.sub(v, 1, n) == needle)
            or (mode == 'e' and string.sub(v, -n) == needle)) then
          redis.call('ZADD', dst, 0, m)
        end
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
  out = {redis.call('ZCARD', result), redis.call(unpack(args))}
end
for _, t in ipairs(temps) do redis.call('DEL', t) end
return out
