-- Free what an open hold still holds. With ARGV[3] = '1' only if its TTL has passed (the reaper).
-- KEYS: 1 hold hash, 2 startup open holds
-- ARGV: 1 voucher prefix, 2 now, 3 only if expired ('1' or '0'), 4 hold id
-- Returns {'ok', released (0/1), hold fields...} | {'notfound'}
local f = redis.call('HMGET', KEYS[1], 'status', 'expires_at')
if not f[1] then
  return {'notfound'}
end
local released = 0
if ARGV[3] ~= '1' or tonumber(f[2]) <= tonumber(ARGV[2]) then
  if close_hold(KEYS[1], ARGV[1], KEYS[2], ARGV[4], 'released') then
    released = 1
  end
end
return {'ok', released, unpack(redis.call('HMGET', KEYS[1], unpack(HOLD_FIELDS)))}
