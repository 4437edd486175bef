-- Create a QUEUED job once per idempotency key, within the startup's queue cap.
-- KEYS: job hash, all jobs zset, QUEUED set, startup's jobs zset, startup's queued set, startup's idem hash,
--       archive string
-- ARGV: id, doc, queued_at, idempotency key ('' for none), max queued (-1: no cap), has archive ('1'/'0'), archive
-- Returns {0, id} created, {1, first id} replayed, {2, queued count} over the cap.
if ARGV[4] ~= '' then
  local first = redis.call('HGET', KEYS[6], ARGV[4])
  if first then return {1, first} end
end
local cap = tonumber(ARGV[5])
local queued = redis.call('SCARD', KEYS[5])
if cap >= 0 and queued >= cap then return {2, tostring(queued)} end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'status', 'QUEUED')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[6], ARGV[4], ARGV[1]) end
if ARGV[6] == '1' then redis.call('SET', KEYS[7], ARGV[7]) end
return {0, ARGV[1]}
