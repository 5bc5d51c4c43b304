--! include: run_commands
-- popoto.workers.idempotency: runs the commands only for a newer version of a member.
-- KEYS[1] version hash. ARGV: member, version, n_cmds, (nargs, cmd...)*.
-- Returns 1 when applied, 0 when the stored version is as new or newer.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(current) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
run_commands(ARGV, 4, tonumber(ARGV[3]))
return 1
