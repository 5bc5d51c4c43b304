-- popoto.tasks.rebuild: KEYS: job. ARGV: epoch the caller saw, phase, now. Job.restart_scan,
-- but only when the epoch is still the one seen (several group scans notice one server
-- restart at once) and the phase's scan is still going on. Returns the new epoch, or -1.
if (redis.call('HGET', KEYS[1], 'epoch') or '0') ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[1], 'phase') ~= ARGV[2] then return -1 end
if redis.call('HGET', KEYS[1], ARGV[2] .. ':scanned') then return -1 end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'chunks', 0, 'chunks_done', 0, 'done', 0, 'enqueued', 0,
           ARGV[2] .. ':cursor', '0', ARGV[2] .. ':step', 0, 'updated', ARGV[3])
return epoch
