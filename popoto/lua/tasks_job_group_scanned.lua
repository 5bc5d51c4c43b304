-- popoto.tasks.rebuild: one tag group's scan of a sharded model's rebuild has ended.
-- KEYS: job. ARGV: phase, group field prefix ('reindex:g'), group index, n groups, epoch,
-- now. Marks the group's scan ended (in the current phase and epoch only); when every
-- group's has, ends the phase's scan like Job.finish_scan, once. Returns 0 (groups still
-- scanning, or a stale call), 1 (this call ended the scan) or 2 (it had ended before).
local job, phase, prefix = KEYS[1], ARGV[1], ARGV[2]
if redis.call('HGET', job, 'phase') ~= phase then return 0 end
if (redis.call('HGET', job, 'epoch') or '0') ~= ARGV[5] then return 0 end
redis.call('HSET', job, prefix .. ARGV[3] .. ':scanned', 1, 'updated', ARGV[6])
for i = 0, tonumber(ARGV[4]) - 1 do
  if not redis.call('HGET', job, prefix .. i .. ':scanned') then return 0 end
end
if redis.call('HGET', job, phase .. ':scanned') then return 2 end
local enqueued = redis.call('HGET', job, 'enqueued') or '0'
redis.call('HSET', job, 'scan_done', 1, 'total', enqueued, phase .. ':scanned', 1)
return 1
