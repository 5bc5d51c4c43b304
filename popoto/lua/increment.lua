-- INCREMENT: Model.atomic_increment (see popoto/models/counters.py for the contract).
-- KEYS: 1 instance key, 2 sorted-set key to use when the instance has no entry yet
-- ARGV: 1 field name, 2 kind ('i' int, 'f' float, 'd' Decimal), 3 delta (text),
--       4 '1' when the field's sorted-set entries must follow the new score
-- Returns the new value as text. Errors: ERR_MISSING, ERR_NOTNUM, ERR_RANGE.
local function strip(d)
  local s = string.gsub(d, '^0+', '')
  if s == '' then return '0' end
  return s
end

local function cmp_mag(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y and -1 or 1 end
  end
  return 0
end

local function digits_of(t)
  local out = {}
  for i = #t, 1, -1 do out[#out + 1] = string.char(48 + t[i]) end
  return strip(table.concat(out))
end

local function add_mag(a, b)
  local res, i, j, carry = {}, #a, #b, 0
  while i > 0 or j > 0 or carry > 0 do
    local s = carry
    if i > 0 then s = s + string.byte(a, i) - 48 end
    if j > 0 then s = s + string.byte(b, j) - 48 end
    if s >= 10 then res[#res + 1] = s - 10; carry = 1 else res[#res + 1] = s; carry = 0 end
    i = i - 1; j = j - 1
  end
  return digits_of(res)
end

local function sub_mag(a, b)  -- a >= b
  local res, i, j, borrow = {}, #a, #b, 0
  while i > 0 do
    local x = string.byte(a, i) - 48 - borrow
    local y = 0
    if j > 0 then y = string.byte(b, j) - 48 end
    if x < y then x = x + 10; borrow = 1 else borrow = 0 end
    res[#res + 1] = x - y
    i = i - 1; j = j - 1
  end
  return digits_of(res)
end

local function muladd_small(a, m, k)  -- a * m + k
  local res, carry = {}, k
  for i = #a, 1, -1 do
    local s = (string.byte(a, i) - 48) * m + carry
    res[#res + 1] = s % 10
    carry = math.floor(s / 10)
  end
  while carry > 0 do res[#res + 1] = carry % 10; carry = math.floor(carry / 10) end
  return digits_of(res)
end

local function divmod_small(a, m)
  local q, rem = {}, 0
  for i = 1, #a do
    local cur = rem * 10 + string.byte(a, i) - 48
    q[#q + 1] = string.char(48 + math.floor(cur / m))
    rem = cur % m
  end
  return strip(table.concat(q)), rem
end

-- signed add of (neg1, mag1) + (neg2, mag2)
local function sadd(n1, d1, n2, d2)
  if n1 == n2 then return n1, add_mag(d1, d2) end
  local c = cmp_mag(d1, d2)
  if c == 0 then return false, '0' end
  if c > 0 then return n1, sub_mag(d1, d2) end
  return n2, sub_mag(d2, d1)
end

local POW = {[1] = '256', [2] = '65536', [4] = '4294967296', [8] = '18446744073709551616'}

local function be_mag(raw, from, n)  -- big-endian unsigned bytes -> decimal string
  local acc = '0'
  for i = from, from + n - 1 do acc = muladd_small(acc, 256, string.byte(raw, i)) end
  return acc
end

local function mag_be(mag, n)  -- decimal string -> n big-endian bytes
  local out = {}
  for i = n, 1, -1 do
    local r
    mag, r = divmod_small(mag, 256)
    out[i] = string.char(r)
  end
  return table.concat(out)
end

local EXT_FIX = {[212] = 1, [213] = 2, [214] = 4, [215] = 8, [216] = 16}

local function read_ext(raw)
  local b = string.byte(raw, 1)
  local len, start
  if EXT_FIX[b] then len = EXT_FIX[b]; start = 2
  elseif b == 199 then len = string.byte(raw, 2); start = 3
  elseif b == 200 then len = tonumber(be_mag(raw, 2, 2)); start = 4
  elseif b == 201 then len = tonumber(be_mag(raw, 2, 4)); start = 6
  else return nil end
  return string.byte(raw, start), string.sub(raw, start + 1, start + len)
end

local function pack_ext(code, payload)
  local n = #payload
  local head
  if n == 1 then head = '\212' elseif n == 2 then head = '\213'
  elseif n == 4 then head = '\214' elseif n == 8 then head = '\215'
  elseif n == 16 then head = '\216'
  elseif n < 256 then head = '\199' .. string.char(n)
  elseif n < 65536 then head = '\200' .. mag_be(tostring(n), 2)
  else head = '\201' .. mag_be(tostring(n), 4) end
  return head .. string.char(code) .. payload
end

local function parse_int(s)
  local sign, digits = string.match(s, '^([+-]?)(%d+)$')
  if not digits then return nil end
  local mag = strip(digits)
  return sign == '-' and mag ~= '0', mag
end

-- msgpack int (or ext 8 big int) -> neg, mag; nil when raw is not an int
local function read_int(raw)
  local b = string.byte(raw, 1)
  if b <= 127 then return false, tostring(b) end
  if b >= 224 then return true, tostring(256 - b) end
  local unsigned = {[204] = 1, [205] = 2, [206] = 4, [207] = 8}
  local signed = {[208] = 1, [209] = 2, [210] = 4, [211] = 8}
  if unsigned[b] then return false, be_mag(raw, 2, unsigned[b]) end
  local n = signed[b]
  if n then
    local mag = be_mag(raw, 2, n)
    if string.byte(raw, 2) >= 128 then return true, sub_mag(POW[n], mag) end
    return false, mag
  end
  local code, payload = read_ext(raw)
  if code == 8 then return parse_int(payload) end
  return nil
end

local function pack_int(neg, mag)
  if mag == '0' then return '\0' end
  if not neg then
    if cmp_mag(mag, '128') < 0 then return string.char(tonumber(mag)) end
    if cmp_mag(mag, '256') < 0 then return '\204' .. mag_be(mag, 1) end
    if cmp_mag(mag, '65536') < 0 then return '\205' .. mag_be(mag, 2) end
    if cmp_mag(mag, '4294967296') < 0 then return '\206' .. mag_be(mag, 4) end
    if cmp_mag(mag, '18446744073709551616') < 0 then return '\207' .. mag_be(mag, 8) end
    return pack_ext(8, mag)
  end
  if cmp_mag(mag, '32') <= 0 then return string.char(256 - tonumber(mag)) end
  if cmp_mag(mag, '128') <= 0 then return '\208' .. mag_be(sub_mag(POW[1], mag), 1) end
  if cmp_mag(mag, '32768') <= 0 then return '\209' .. mag_be(sub_mag(POW[2], mag), 2) end
  if cmp_mag(mag, '2147483648') <= 0 then return '\210' .. mag_be(sub_mag(POW[4], mag), 4) end
  if cmp_mag(mag, '9223372036854775808') <= 0 then
    return '\211' .. mag_be(sub_mag(POW[8], mag), 8)
  end
  return pack_ext(8, '-' .. mag)
end

-- Decimal text (Python str(Decimal)) -> neg, coefficient digits, exponent
local function parse_dec(s)
  local sign, body = string.match(s, '^([+-]?)(.*)$')
  local mant, exp = string.match(body, '^([%d%.]+)[eE]([+-]?%d+)$')
  if not mant then mant = body; exp = '0' end
  local ip, fp = string.match(mant, '^(%d*)%.(%d*)$')
  if not ip then
    if not string.match(mant, '^%d+$') then return nil end
    ip, fp = mant, ''
  end
  if ip == '' and fp == '' then return nil end
  local e = tonumber(exp)
  if not e or e > 10000 or e < -10000 then return nil end
  return sign == '-', strip(ip .. fp), e - #fp
end

-- Python's Decimal.__str__ (scientific notation rules)
local function dec_str(neg, d, e)
  local left = e + #d
  local dot
  if e <= 0 and left > -6 then dot = left else dot = 1 end
  local ip, fp
  if dot <= 0 then ip = '0'; fp = '.' .. string.rep('0', -dot) .. d
  elseif dot >= #d then ip = d .. string.rep('0', dot - #d); fp = ''
  else ip = string.sub(d, 1, dot); fp = '.' .. string.sub(d, dot + 1) end
  local ex = ''
  if left ~= dot then ex = string.format('E%+d', left - dot) end
  return (neg and '-' or '') .. ip .. fp .. ex
end

local function shift(d, n)
  if d == '0' or n == 0 then return d end
  return d .. string.rep('0', n)
end

local function hex(s)
  return (string.gsub(string.sub(s, 1, 40), '.', function(c)
    return string.format('%02x', string.byte(c)) end))
end

local key, fname, kind, delta = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', key) == 0 then
  return redis.error_reply(ERR_MISSING .. ' ' .. key)
end
local raw = redis.call('HGET', key, fname)
if raw == '\192' then raw = false end
local notnum = ERR_NOTNUM .. ' ' .. (raw and hex(raw) or '')
local packed, text
if kind == 'f' then
  local cur = 0
  if raw then
    local b = string.byte(raw, 1)
    if b == 203 then cur = struct.unpack('>d', raw, 2)
    elseif b == 202 then cur = struct.unpack('>f', raw, 2)
    else
      local n, m = read_int(raw)
      if not m then return redis.error_reply(notnum) end
      cur = tonumber((n and '-' or '') .. m)
    end
  end
  local v = cur + tonumber(delta)
  text = string.format('%.17g', v)
  if v ~= v or v == math.huge or v == -math.huge then
    return redis.error_reply(ERR_RANGE .. ' ' .. text)
  end
  packed = '\203' .. struct.pack('>d', v)
elseif kind == 'i' then
  local cn, cm = false, '0'
  if raw then
    cn, cm = read_int(raw)
    if not cm then return redis.error_reply(notnum) end
  end
  local dn, dm = parse_int(delta)
  local n, m = sadd(cn, cm, dn, dm)
  text = (n and '-' or '') .. m
  packed = pack_int(n, m)
else
  local cn, cm, ce = false, '0', 0
  if raw then
    local code, payload = read_ext(raw)
    if code == 1 then
      cn, cm, ce = parse_dec(payload)
    else
      cn, cm = read_int(raw)
      ce = 0
    end
    if not cm then return redis.error_reply(notnum) end
  end
  local dn, dm, de = parse_dec(delta)
  local e = math.min(ce, de)
  local n, m = sadd(cn, shift(cm, ce - e), dn, shift(dm, de - e))
  if m == '0' then n = cn and dn end
  text = dec_str(n, m, e)
  packed = pack_ext(1, text)
end
local sorted, fallback = ARGV[4] == '1', KEYS[2]
if sorted then
  local score = tonumber(text)
  if not score or score ~= score or score == math.huge or score == -math.huge then
    return redis.error_reply(ERR_RANGE .. ' ' .. text)
  end
end
redis.call('HSET', key, fname, packed)
if sorted then
  local idx_field = IDX_PREFIX .. fname
  local idx = redis.call('HGET', key, idx_field)
  local entries = {}
  if idx then entries = cmsgpack.unpack(idx) end
  local moved = false
  for _, e in ipairs(entries) do
    if e[1] == KIND_ZSET then redis.call('ZADD', e[2], text, e[3] or key); moved = true end
  end
  if not moved then
    redis.call('ZADD', fallback, text, key)
    entries[#entries + 1] = {KIND_ZSET, fallback}
    redis.call('HSET', key, idx_field, cmsgpack.pack(entries))
  end
end
return text
