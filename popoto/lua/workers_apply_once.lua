--! include: run_commands
-- popoto.workers.idempotency: runs the commands once per event id.
-- KEYS[1] marker zset. ARGV: event id, score (ms), retention ms, n_cmds, (nargs, cmd...)*.
-- Returns 1 when applied, 0 when the event was applied before.
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 0 then return 0 end
run_commands(ARGV, 5, tonumber(ARGV[4]))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (tonumber(ARGV[2]) - tonumber(ARGV[3])))
return 1
