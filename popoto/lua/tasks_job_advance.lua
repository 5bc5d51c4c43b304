-- popoto.tasks.jobs: Job.advance, a compare-and-set of a coordinator's position.
-- KEYS: job. ARGV: phase, cursor read, step read ('' and '': no check), new cursor,
-- new step, keys enqueued, now.
-- Returns 1, or 0 with nothing written when the recorded position is no longer the one
-- this coordinator read: another copy of the same coordinator (the same message
-- delivered twice, or enqueued twice by two settles) went on from there first, and only
-- one copy may count the chunks it cut, or chunks_done would never reach chunks.
local field_cursor, field_step = ARGV[1] .. ':cursor', ARGV[1] .. ':step'
if ARGV[2] ~= '' or ARGV[3] ~= '' then
  local pos = redis.call('HMGET', KEYS[1], field_cursor, field_step)
  if (pos[1] or '0') ~= ARGV[2] or (pos[2] or '0') ~= ARGV[3] then return 0 end
end
redis.call('HSET', KEYS[1], field_cursor, ARGV[4], field_step, ARGV[5], 'updated', ARGV[7])
if tonumber(ARGV[6]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'chunks', 1)
  redis.call('HINCRBY', KEYS[1], 'enqueued', ARGV[6])
end
return 1
