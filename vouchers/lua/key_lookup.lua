-- Find an API key by the hash of its secret, in one round trip (it runs on every request).
-- KEYS: 1 hash -> key id, 2 key id -> record, 3 key id -> revoked time
-- ARGV: 1 key hash
-- Returns {record, revoked time or ''}, or nil when no key has that hash.
local key_id = redis.call('HGET', KEYS[1], ARGV[1])
if not key_id then
  return nil
end
local record = redis.call('HGET', KEYS[2], key_id)
if not record then
  return nil
end
return {record, redis.call('HGET', KEYS[3], key_id) or ''}
