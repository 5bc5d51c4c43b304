-- popoto.tasks.jobs: Job.advance, a coordinator's (or one group scan's) new position and
-- the chunk it just enqueued, written only while still valid.
-- KEYS: job. ARGV: field prefix ('reindex', 'reindex:g3'), cursor read, step read ('' and
-- '': no check), new cursor, new step, keys enqueued, now, scan epoch ('' = any).
-- Returns 1, or 0 with nothing written when
-- * the recorded position is no longer the one this coordinator read: another copy of the
--   same coordinator (the same message delivered twice, or enqueued twice by two settles)
--   went on from there first, and only one copy may count the chunks it cut, or
--   chunks_done would never reach chunks;
-- * the job moved to another scan epoch: a scan of an abandoned epoch must not count its
--   chunks in the new one.
if ARGV[8] ~= '' and (redis.call('HGET', KEYS[1], 'epoch') or '0') ~= ARGV[8] then
  return 0
end
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
