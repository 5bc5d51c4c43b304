-- popoto.workers.streams: KEYS[1] stream; ARGV[1] '~' or '='. Trims entries that every group has
-- acknowledged: below the oldest pending id of each group, or, for a group with nothing
-- pending, up to its last-delivered id. A stream without groups is never trimmed (nobody
-- read it yet). Returns {entries removed, the MINID trimmed to ('' when none)}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return {0, ''} end
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local best_ms, best_seq
for _, g in ipairs(groups) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  local ms, seq
  local pending = redis.call('XPENDING', KEYS[1], name)
  if tonumber(pending[1]) > 0 then
    ms, seq = parse(pending[2])
  else
    ms, seq = parse(last)
    seq = seq + 1
  end
  if not best_ms or ms < best_ms or (ms == best_ms and seq < best_seq) then
    best_ms, best_seq = ms, seq
  end
end
local minid = string.format('%.0f-%.0f', best_ms, best_seq)
local removed = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1], minid)
return {removed, minid}
