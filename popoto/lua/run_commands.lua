-- Fragment: runs n commands encoded in argv from pos as (nargs, cmd, args...); returns
-- the next pos. Shared by every script that takes a list of raw commands (see
-- popoto.engine.write.WriteBatch.command).
local function run_commands(argv, pos, n)
  for _ = 1, n do
    local nargs = tonumber(argv[pos]); pos = pos + 1
    local cmd = {}
    for j = 1, nargs do cmd[j] = argv[pos + j - 1] end
    pos = pos + nargs
    redis.call(unpack(cmd))
  end
  return pos
end
