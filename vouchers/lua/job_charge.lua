-- Record a job's charges so far; figures only grow.
-- KEYS: job hash.  ARGV: gpu ms, charged ms.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local gpu = tonumber(redis.call('HGET', KEYS[1], 'f:charged_gpu_ms') or '0')
local charged = tonumber(redis.call('HGET', KEYS[1], 'f:charged_ms') or '0')
if tonumber(ARGV[1]) > gpu then redis.call('HSET', KEYS[1], 'f:charged_gpu_ms', ARGV[1]) end
if tonumber(ARGV[2]) > charged then redis.call('HSET', KEYS[1], 'f:charged_ms', ARGV[2]) end
return 1
