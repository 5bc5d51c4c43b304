-- CLAIM: takes a unique claim as pending, leased (popoto.engine.claims).
-- KEYS: claim hash; ARGV: field, me, alias (my previous key), expected (stale value), lease ms
-- -> {CLAIM_OK, previous value or '', deadline} | {CLAIM_BUSY, holder, deadline}
--    | {CLAIM_HELD, value, 0}
-- A pending value is '~<deadline>~<holder>', possibly marked released ('!' before it).
local h, f, me, alias, expected = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cur = redis.call('HGET', h, f)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holder, deadline = cur, nil
local body = cur
if body and string.sub(body, 1, 1) == CLAIM_RELEASED_MARK then body = string.sub(body, 2) end
if body and string.sub(body, 1, 1) == '~' then
  local d, who = string.match(body, '^~(%d+)~(.*)$')
  deadline, holder = tonumber(d), who
end
if (not cur) or holder == me or holder == alias or cur == expected then
  local new_deadline = now + tonumber(ARGV[5])
  redis.call('HSET', h, f, '~' .. new_deadline .. '~' .. me)
  return {CLAIM_OK, cur or '', new_deadline}
end
if deadline and deadline > now then return {CLAIM_BUSY, holder, deadline} end
return {CLAIM_HELD, cur, 0}
