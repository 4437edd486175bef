-- Count a request in a startup's fixed one-minute window, only if it fits both limits.
-- KEYS: 1 window hash, 2 revoked keys hash
-- ARGV: 1 rpm ('' for none), 2 tpm ('' for none), 3 requests, 4 tokens, 5 window lifetime (ms, cleanup only),
--       6 API key id that must not be revoked ('' for no check)
-- Returns {allowed (0/1), requests counted, tokens counted} | {'revoked'}
if ARGV[6] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[6]) == 1 then
  return {'revoked'}
end
local f = redis.call('HMGET', KEYS[1], 'requests', 'tokens')
local reqs = tonumber(f[1] or '0')
local toks = tonumber(f[2] or '0')
local rpm = opt_num(ARGV[1])
local tpm = opt_num(ARGV[2])
local add_r = tonumber(ARGV[3])
local add_t = tonumber(ARGV[4])
local allowed = (rpm == nil or reqs + add_r <= rpm) and (tpm == nil or toks + add_t <= tpm)
if not allowed then
  return {0, fmt(reqs), fmt(toks)}
end
reqs = redis.call('HINCRBY', KEYS[1], 'requests', ARGV[3])
toks = redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[4])
-- The window is named by the store's clock; this TTL only garbage-collects old windows.
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, reqs, toks}
