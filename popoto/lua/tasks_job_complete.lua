-- popoto.tasks.jobs: counts a chunk done and settles the job's phase.
-- KEYS: job, done set, lock; ARGV: chunk_id ('' = only check completion), n_done, n_removed,
-- now, lock_ttl_ms, job_ttl, job_id, scan epoch of the chunk ('' = any).
-- Returns {chunk_was_new, outcome (0 running, 1 job done, 2 next phase begun), done, total,
-- current phase}. A chunk of an abandoned scan epoch is not counted at all.
local new = 0
if ARGV[8] ~= '' and (redis.call('HGET', KEYS[1], 'epoch') or '0') ~= ARGV[8] then
  local p = redis.call('HMGET', KEYS[1], 'done', 'total', 'phase')
  return {0, 0, tonumber(p[1] or '0'), tonumber(p[2] or '0'), p[3] or ''}
end
if ARGV[1] ~= '' then
  new = redis.call('SADD', KEYS[2], ARGV[1])
  if new == 1 then
    redis.call('HINCRBY', KEYS[1], 'done', ARGV[2])
    redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
    redis.call('HINCRBY', KEYS[1], 'removed', ARGV[3])
  end
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
redis.call('HSET', KEYS[1], 'updated', ARGV[4])
local st = redis.call('HMGET', KEYS[1], 'status', 'scan_done', 'chunks', 'chunks_done',
                      'phase', 'phases')
local outcome = 0
local phase = st[5] or ''
local ours = redis.call('GET', KEYS[3]) == ARGV[7]
if st[1] == 'running' and st[2] == '1'
    and tonumber(st[4] or '0') >= tonumber(st[3] or '0') then
  local nextp, seen = nil, false
  for p in string.gmatch(st[6] or '', '[^,]+') do
    if seen and not nextp then nextp = p end
    if p == phase then seen = true end
  end
  if nextp then
    redis.call('HSET', KEYS[1], 'phase', nextp, 'scan_done', 0)
    phase = nextp
    outcome = 2
    if ours then redis.call('PEXPIRE', KEYS[3], ARGV[5]) end
  else
    redis.call('HSET', KEYS[1], 'status', 'done', 'finished', ARGV[4])
    if ours then redis.call('DEL', KEYS[3]) end
    outcome = 1
  end
elseif ours then
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
local p = redis.call('HMGET', KEYS[1], 'done', 'total')
return {new, outcome, tonumber(p[1] or '0'), tonumber(p[2] or '0'), phase}
