-- popoto.tasks.chunking: KEYS: job. ARGV: phase, now. Job.finish_scan, but only while ``phase``
-- is the job's phase: a late or redelivered coordinator must never end the scan of the
-- NEXT phase (its chunks_done >= chunks would then finish the job before its chunks were
-- cut). Returns 1, or 0 when the job is in another phase.
if redis.call('HGET', KEYS[1], 'phase') ~= ARGV[1] then return 0 end
local enqueued = redis.call('HGET', KEYS[1], 'enqueued') or '0'
redis.call('HSET', KEYS[1], 'scan_done', 1, 'total', enqueued, ARGV[1] .. ':scanned', 1,
           'updated', ARGV[2])
return 1
