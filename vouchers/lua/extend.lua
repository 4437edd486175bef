-- Push an open hold's expiry and optionally hold more on it, all-or-nothing.
-- KEYS: 1 hold hash, 2 startup open holds, 3 live voucher set (kind)
-- ARGV: 1 voucher prefix, 2 now, 3 new expires_at, 4 amount to add, 5 hold id, 6 hold prefix
-- Returns {'ok', hold fields...} | {'notfound'} | {'closed', status} | {'expired'} | {'insufficient', available}
local f = redis.call('HMGET', KEYS[1], 'status', 'allocations', 'expires_at')
if not f[1] then
  return {'notfound'}
end
if f[1] ~= 'open' then
  return {'closed', f[1]}
end
local now = tonumber(ARGV[2])
if tonumber(f[3]) <= now then
  return {'expired'}
end
local add = tonumber(ARGV[4])
if add > 0 then
  release_expired(KEYS[2], ARGV[6], ARGV[1], ARGV[2])
  local vs = load_live(KEYS[3], ARGV[1], now)
  local taken = {}
  local need = take_free(vs, add, taken)
  if need > 0 then
    return {'insufficient', fmt(available_before(vs))}
  end
  write_deltas(vs)
  local alloc = merge_pairs(parse_pairs(f[2]), taken)
  -- Keep allocations in burn order, as a fresh hold lists them.
  local keyed = {}
  for _, p in ipairs(alloc) do
    local v = load_voucher(ARGV[1], p[1], now)
    v.share = p[2]
    table.insert(keyed, v)
  end
  table.sort(keyed, burn_before)
  local sorted = {}
  for _, v in ipairs(keyed) do
    table.insert(sorted, {v.id, v.share})
  end
  redis.call('HSET', KEYS[1], 'allocations', encode_pairs(sorted))
  -- In 64-bit integers: a hold grown by extends may pass 2^53, where doubles skip units.
  redis.call('HINCRBY', KEYS[1], 'amount', ARGV[4])
end
redis.call('HSET', KEYS[1], 'expires_at', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
return {'ok', unpack(redis.call('HMGET', KEYS[1], unpack(HOLD_FIELDS)))}
