-- WRITE_FILTER_PRIORITY: the best members of a priority zset
-- (popoto.behaviours.write_filter). KEYS[1]: priority zset. ARGV[1]: n.
-- Returns the n best members whose hash exists, as (member, score)*, score descending
-- then member ascending; members whose hash is gone (expired) are removed on the way.
local n = tonumber(ARGV[1])
local got = {}
local start, page = 0, 256
local stop = false
while not stop do
  local rows = redis.call('ZREVRANGE', KEYS[1], start, start + page - 1, 'WITHSCORES')
  if #rows == 0 then break end
  local removed = 0
  for i = 1, #rows, 2 do
    local m, s = rows[i], tonumber(rows[i + 1])
    if #got >= n and s < got[n][1] then stop = true; break end
    if redis.call('EXISTS', m) == 1 then
      got[#got + 1] = {s, m}
    else
      redis.call('ZREM', KEYS[1], m)
      removed = removed + 1
    end
  end
  start = start + page - removed
end
table.sort(got, function(a, b) return a[1] > b[1] or (a[1] == b[1] and a[2] < b[2]) end)
local out = {}
for i = 1, math.min(n, #got) do
  out[#out + 1] = got[i][2]
  out[#out + 1] = string.format('%.17g', got[i][1])
end
return out
