-- Void a voucher once: the first time stays. The reserve script drops it from the live set.
-- KEYS: 1 voucher hash
-- ARGV: 1 now
-- Returns 1, or 0 if the voucher does not exist.
local voided = redis.call('HGET', KEYS[1], 'voided_at')
if not voided then
  return 0
end
if voided == '' then
  redis.call('HSET', KEYS[1], 'voided_at', ARGV[1])
end
return 1
