-- TOP_BY_DECAY: the n best members of a time-decaying ranking (popoto.fields.decaying).
-- KEYS: 1 time zset, 2 zset whose top score bounds the base, 3 cycles hash, 4 pressure
-- hash, all of one tag group. ARGV: 1 n, 2 decay rate, 3 as_of, 4 base field ('' = base 1),
-- 5 flags: which of KEYS 2-4 are used (DECAY_FLAG_BOUNDED, DECAY_FLAG_CYCLES,
-- DECAY_FLAG_PRESSURE); an unused one repeats KEYS[1] (a cluster client computes the slot
-- of every key, so there is no placeholder key).
-- Scans the time zset newest first; stops early when no older member can beat the n-th
-- best (only possible without cycles/pressure and with a known base bound).
-- Returns {(member, score)*}, best first.
local flags = ARGV[5]
local function used(flag, k) if string.find(flags, flag, 1, true) then return k end return '' end
local zkey, maxkey = KEYS[1], used(DECAY_FLAG_BOUNDED, KEYS[2])
local ckey, pkey = used(DECAY_FLAG_CYCLES, KEYS[3]), used(DECAY_FLAG_PRESSURE, KEYS[4])
local n, rate, as_of = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local base_field = ARGV[4]
local maxbase = nil
if ckey == '' and pkey == '' and rate > 0 then
  if base_field == '' then maxbase = 1
  elseif maxkey ~= '' then
    maxbase = 1
    local best = redis.call('ZREVRANGE', maxkey, 0, 0, 'WITHSCORES')
    if best[2] and tonumber(best[2]) > 1 then maxbase = tonumber(best[2]) end
  end
end
local function base_of(m)
  if base_field == '' then return 1 end
  local raw = redis.call('HGET', m, base_field)
  if not raw then return 1 end
  local ok, v = pcall(cmsgpack.unpack, raw)
  if ok and type(v) == 'number' then return v end
  return 1
end
local function extra(m)
  local s = 0
  if ckey ~= '' then
    local raw = redis.call('HGET', ckey, m)
    if raw then
      local ok, cycles = pcall(cmsgpack.unpack, raw)
      if ok and type(cycles) == 'table' then
        for _, c in ipairs(cycles) do
          local period, amp, phase = tonumber(c[1]), tonumber(c[2]), tonumber(c[3]) or 0
          if period and amp and period > 0 then
            s = s + amp * math.cos(2 * math.pi * (as_of - phase) / period)
          end
        end
      end
    end
  end
  if pkey ~= '' then
    local raw = redis.call('HGET', pkey, m)
    if raw then
      local ok, p = pcall(cmsgpack.unpack, raw)
      if ok and type(p) == 'table' and tonumber(p['rate']) and tonumber(p['last_resolved']) then
        local days = (as_of - tonumber(p['last_resolved'])) / DECAY_DAY_S
        if days > 0 then s = s + tonumber(p['rate']) * days end
      end
    end
  end
  return s
end
local function better(s1, m1, s2, m2) return s1 > s2 or (s1 == s2 and m1 < m2) end
local top = {}
local start, page, done = 0, 256, false
while not done do
  local rows = redis.call('ZREVRANGE', zkey, start, start + page - 1, 'WITHSCORES')
  if #rows == 0 then break end
  for i = 1, #rows, 2 do
    local m, ts = rows[i], tonumber(rows[i + 1])
    local e = (as_of - ts) / DECAY_DAY_S
    if e < DECAY_MIN_ELAPSED_DAYS then e = DECAY_MIN_ELAPSED_DAYS end
    local f = e ^ (-rate)
    if maxbase and #top >= n and maxbase * f < top[n][1] then done = true; break end
    local s = base_of(m) * f + extra(m)
    if (#top < n or better(s, m, top[#top][1], top[#top][2]))
        and redis.call('EXISTS', m) == 1 then
      local pos = #top + 1
      while pos > 1 and better(s, m, top[pos - 1][1], top[pos - 1][2]) do pos = pos - 1 end
      table.insert(top, pos, {s, m})
      if #top > n then table.remove(top) end
    end
  end
  start = start + page
end
local out = {}
for _, t in ipairs(top) do
  out[#out + 1] = t[2]
  out[#out + 1] = string.format('%.17g', t[1])
end
return out
