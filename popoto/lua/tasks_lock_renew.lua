-- popoto.tasks.jobs: renews a lock. KEYS: lock; ARGV: owner, ttl_ms.
-- 1 = ours (renewed or re-taken), 0 = someone else's.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
