-- Hold an amount over a startup's vouchers in force, all-or-nothing, in burn order.
-- KEYS: 1 live voucher set (kind), 2 startup open holds, 3 hold idempotency hash, 4 hold owner hash,
--       5 new hold hash, 6 revoked keys hash, 7 startups hash
-- ARGV: 1 voucher prefix, 2 hold prefix, 3 now, 4 expires_at, 5 amount, 6 idempotency key,
--       7 hold id, 8 owner value, 9 info (the hold's fixed fields, encoded by the caller),
--       10 API key id that must not be revoked ('' for no check), 11 startup id
-- A hold of 0 (a free request, whose settle journals its tokens) needs the startup to exist: nothing
-- else would notice one that does not.
-- Returns {'ok', info, amount, allocations, expires_at, status, settled} | {'insufficient', available}
--         | {'revoked'} | {'nostartup'}
if ARGV[10] ~= '' and redis.call('HEXISTS', KEYS[6], ARGV[10]) == 1 then
  return {'revoked'}
end
if ARGV[5] == '0' and redis.call('HEXISTS', KEYS[7], ARGV[11]) == 0 then
  return {'nostartup'}
end
local existing = redis.call('HGET', KEYS[3], ARGV[6])
if existing then
  local f = redis.call('HMGET', ARGV[2] .. existing, unpack(HOLD_FIELDS))
  return {'ok', unpack(f)}
end

local now = tonumber(ARGV[3])
release_expired(KEYS[2], ARGV[2], ARGV[1], ARGV[3])

local vs = load_live(KEYS[1], ARGV[1], now)
local taken = {}
local need = take_free(vs, tonumber(ARGV[5]), taken)
if need > 0 then
  return {'insufficient', fmt(available_before(vs))}
end
write_deltas(vs)

local hid = ARGV[7]
local allocations = encode_pairs(taken)
redis.call('HSET', KEYS[5], 'info', ARGV[9], 'amount', ARGV[5], 'allocations', allocations,
  'expires_at', ARGV[4], 'status', 'open', 'settled', '0')
redis.call('ZADD', KEYS[2], ARGV[4], hid)
redis.call('HSET', KEYS[3], ARGV[6], hid)
redis.call('HSET', KEYS[4], hid, ARGV[8])
return {'ok', ARGV[9], ARGV[5], allocations, ARGV[4], 'open', '0'}
