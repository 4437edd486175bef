-- Refresh a registered worker's deadline. A worker whose TTL ran out is gone, as if its key had
-- expired: it is removed and must register again.
-- KEYS: 1 worker hash, 2 all workers zset
-- ARGV: 1 now, 2 ttl, 3 deadline, 4 worker id, 5 per-model zset prefix
-- Returns 1 if refreshed, 0 if the worker is not registered.
local model = redis.call('HGET', KEYS[1], 'model')
if not model then
  return 0
end
local deadline = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[4]) or '0')
if deadline <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('ZREM', ARGV[5] .. model, ARGV[4])
  return 0
end
redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[1], 'ttl_s', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', ARGV[5] .. model, ARGV[3], ARGV[4])
return 1
