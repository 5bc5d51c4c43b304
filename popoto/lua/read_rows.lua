-- Fragment read_rows(flat, argpos): reads the hashes of a page's members.
-- flat: {member, score}*; ARGV[argpos]: inline_max, ARGV[argpos + 1]: nfields, then the
-- fields. Returns (1, rows) when the page has at most inline_max rows, else (0, {}).
-- A row is the member's HGETALL, or its HMGET of the fields; 0 when the hash is gone.
local function read_rows(flat, argpos)
  local inline_max, nfields = tonumber(ARGV[argpos]), tonumber(ARGV[argpos + 1])
  local n = #flat / 2
  if inline_max < 0 or n > inline_max then return 0, {} end
  local fields = {}
  for j = 1, nfields do fields[j] = ARGV[argpos + 1 + j] end
  local rows = {}
  for i = 1, #flat, 2 do
    local m = flat[i]
    local row
    if nfields == 0 then
      row = redis.call('HGETALL', m)
      if #row == 0 then row = 0 end
    else
      row = redis.call('HMGET', m, unpack(fields))
      local any = false
      for _, v in ipairs(row) do if v then any = true end end
      if not any and redis.call('EXISTS', m) == 0 then row = 0 end
    end
    rows[#rows + 1] = row
  end
  return 1, rows
end
