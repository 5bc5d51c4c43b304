--! include: read_rows
-- PAGE: one page of a sorted-set score range, with the rows' hashes when the page is
-- bounded (popoto.query.queryset): a range page is then one round trip.
-- KEYS: 1 the sorted set (its members are instance keys of the same tag group).
-- ARGV: low, high (Redis range syntax), offset, count (< 0: to the end), rev ('1'|'0'),
--       inline_max (rows are read when the page has at most this many), nfields,
--       field* (HMGET of these fields; none: HGETALL).
-- Returns {total, {member, score}* flat, inlined (1|0), {row}*}: see read_rows.lua.
local key, low, high = KEYS[1], ARGV[1], ARGV[2]
local offset, count, rev = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local total = redis.call('ZCOUNT', key, low, high)
local args
if rev == '1' then
  args = {'ZREVRANGEBYSCORE', key, high, low, 'WITHSCORES'}
else
  args = {'ZRANGEBYSCORE', key, low, high, 'WITHSCORES'}
end
if count >= 0 or offset > 0 then
  args[#args + 1] = 'LIMIT'
  args[#args + 1] = offset
  args[#args + 1] = count
end
local flat = redis.call(unpack(args))
local inlined, out_rows = read_rows(flat, 6)
return {total, flat, inlined, out_rows}
