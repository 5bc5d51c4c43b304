-- popoto.tasks.rebuild: KEYS: job. ARGV: group field prefix ('reindex:g3'), cursor, step, keys
-- enqueued, epoch, now. Job.advance for one group's scan, refused (0) once the job moved
-- to another epoch: a scan of an abandoned epoch must not count its chunks in the new one.
if (redis.call('HGET', KEYS[1], 'epoch') or '0') ~= ARGV[5] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1] .. ':cursor', ARGV[2], ARGV[1] .. ':step', ARGV[3],
           'updated', ARGV[6])
if tonumber(ARGV[4]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'chunks', 1)
  redis.call('HINCRBY', KEYS[1], 'enqueued', ARGV[4])
end
return 1
