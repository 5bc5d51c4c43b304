-- tasks.jobs: starts a job under its lock.
-- KEYS: lock, job, jobs index; ARGV: job_id, lock_ttl_ms, now, job_ttl, max_recent, (k v)*
-- Returns false when started, else the lock's holder.
local ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if not ok then return redis.call('GET', KEYS[1]) end
local h = {'HSET', KEYS[2]}
for i = 6, #ARGV do h[#h + 1] = ARGV[i] end
redis.call(unpack(h))
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[5]) - 1)
return false
