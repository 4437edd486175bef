-- Keep an answer for an idempotency key's retries, within the startup's budget of kept bytes.
-- KEYS: 1 answer string, 2 answers by expiry (zset), 3 bytes per answer (hash), 4 bytes kept (counter)
-- ARGV: 1 now, 2 expires_at, 3 TTL in ms (Redis clears the answer then), 4 the stored value,
--       5 its size in bytes, 6 budget in bytes ('' for none), 7 the idempotency key
-- The total drops the answers whose time is up (by the store's clock) before it is compared.
-- Returns 1 kept | 0 over budget, nothing changed but the expired answers' accounting.
local function forget(key)
  local size = redis.call('HGET', KEYS[3], key)
  if size then
    redis.call('HDEL', KEYS[3], key)
    redis.call('DECRBY', KEYS[4], size)
  end
end

for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])) do
  forget(key)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])

local size = tonumber(ARGV[5])
if ARGV[6] ~= '' then
  local replaced = tonumber(redis.call('HGET', KEYS[3], ARGV[7]) or '0')
  local used = tonumber(redis.call('GET', KEYS[4]) or '0') - replaced
  if used + size > tonumber(ARGV[6]) then
    return 0
  end
end
forget(ARGV[7])
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[7])
redis.call('HSET', KEYS[3], ARGV[7], size)
redis.call('INCRBY', KEYS[4], size)
return 1
