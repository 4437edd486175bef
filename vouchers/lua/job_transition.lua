-- Compare-and-set a job's status, with the fields that change with it.
-- KEYS: job hash, set of the expected status, set of the new status, startup's queued set
-- ARGV: id, expected status, new status, then field/value pairs ('f:name', JSON)
-- Returns 1 if the job was at the expected status (and now is at the new one), else 0.
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SREM', KEYS[2], ARGV[1])
if ARGV[3] == 'QUEUED' or ARGV[3] == 'RUNNING' then redis.call('SADD', KEYS[3], ARGV[1]) end
if ARGV[2] == 'QUEUED' then redis.call('SREM', KEYS[4], ARGV[1]) end
return 1
