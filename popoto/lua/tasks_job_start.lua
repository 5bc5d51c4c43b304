-- popoto.tasks.jobs: starts a job under its lock.
-- KEYS: lock, job, jobs index; ARGV: job_id, lock_ttl_ms, now, job_ttl, max_recent, (k v)*
-- Returns false when started, else the lock's holder. A record of this job made when it
-- was enqueued (status 'queued') then says it was skipped, and which job runs instead.
local ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if not ok then
  local holder = redis.call('GET', KEYS[1])
  if holder ~= ARGV[1] and redis.call('HGET', KEYS[2], 'status') == 'queued' then
    redis.call('HSET', KEYS[2], 'status', 'skipped', 'running_job_id', holder,
               'finished', ARGV[3], 'updated', ARGV[3])
  end
  return holder
end
local h = {'HSET', KEYS[2]}
for i = 6, #ARGV do h[#h + 1] = ARGV[i] end
redis.call(unpack(h))
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[5]) - 1)
return false
