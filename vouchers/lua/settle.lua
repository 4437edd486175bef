-- Debit `actual` against a hold: its own allocations first, then free capacity, the rest is overage.
-- KEYS: 1 hold hash, 2 startup open holds, 3 settle idempotency hash, 4 journal seq counter,
--       5 journal lines hash, 6 journal index (startup), 7 usage totals hash, 8 live voucher set (kind)
-- ARGV: 1 voucher prefix, 2 now, 3 actual, 4 final ('1'/'0'), 5 idempotency key,
--       6 line tail (the line's fixed fields, encoded by the caller), 7 usage field prefix,
--       8 prompt tokens, 9 completion tokens, 10 hold id,
--       11 whether there is a key ('1'/'0'; a final settle without one is found through the hold, which
--       remembers its final line). A flag, not an empty ARGV[5]: '' is a key like any other.
-- A journal line is stored as "seq|amount|overage|breakdown|tail".
-- Returns {'ok', line} | {'notfound'}
local hold = redis.call('HMGET', KEYS[1], 'status', 'allocations', 'final_seq')
if not hold[1] then
  return {'notfound'}
end
local final = ARGV[4] == '1'
local keyed = ARGV[11] == '1'
local prior = false
if keyed then
  prior = redis.call('HGET', KEYS[3], ARGV[5])
end
if not prior and final and hold[3] then
  prior = hold[3]
end
if prior then
  return {'ok', redis.call('HGET', KEYS[5], prior)}
end

local now = tonumber(ARGV[2])
local vs = load_live(KEYS[8], ARGV[1], now)
local open = hold[1] == 'open'
local alloc = {}
if open then
  for _, p in ipairs(parse_pairs(hold[2])) do
    alloc[p[1]] = p[2]
  end
end

local need = tonumber(ARGV[3])
local debits = {}
-- The hold's own allocations on vouchers still in force, in burn order.
for _, v in ipairs(vs) do
  if need <= 0 then
    break
  end
  local a = alloc[v.id]
  if a and a > 0 and v.in_force then
    local take = math.min(a, need)
    alloc[v.id] = a - take
    v.held = v.held - take
    v.dheld = v.dheld - take
    v.spent = v.spent + take
    v.dspent = v.dspent + take
    need = need - take
    table.insert(debits, {v.id, take})
  end
end
-- Then free capacity of any voucher in force, in burn order: held by take_free, turned into spent here.
if need > 0 then
  local free_taken = {}
  need = take_free(vs, need, free_taken)
  local by_id = {}
  for _, v in ipairs(vs) do
    by_id[v.id] = v
  end
  for _, p in ipairs(free_taken) do
    local v = by_id[p[1]]
    v.held = v.held - p[2]
    v.dheld = v.dheld - p[2]
    v.spent = v.spent + p[2]
    v.dspent = v.dspent + p[2]
  end
  merge_pairs(debits, free_taken)
end
write_deltas(vs)

local amount = tonumber(ARGV[3]) - need
local seq = redis.call('INCR', KEYS[4])
local line = table.concat({seq, fmt(amount), fmt(need), encode_pairs(debits), ARGV[6]}, '|')
redis.call('HSET', KEYS[5], seq, line)
redis.call('ZADD', KEYS[6], ARGV[2], seq)
if keyed then
  redis.call('HSET', KEYS[3], ARGV[5], seq)
end
redis.call('HINCRBY', KEYS[7], ARGV[7] .. 'amount', fmt(amount))
if ARGV[8] ~= '0' then
  redis.call('HINCRBY', KEYS[7], ARGV[7] .. 'prompt_tokens', ARGV[8])
end
if ARGV[9] ~= '0' then
  redis.call('HINCRBY', KEYS[7], ARGV[7] .. 'completion_tokens', ARGV[9])
end

-- HINCRBY adds in 64-bit integers: a hold's running total may pass 2^53, where doubles skip units.
redis.call('HINCRBY', KEYS[1], 'settled', fmt(amount))
if final then
  if open then
    -- Whatever the hold still holds goes back, including allocations on vouchers no longer in force.
    for id, a in pairs(alloc) do
      if a > 0 then
        redis.call('HINCRBY', ARGV[1] .. id, 'held', fmt(-a))
      end
    end
    redis.call('ZREM', KEYS[2], ARGV[10])
  end
  -- A released (or reaped) hold that is settled late counts as settled too.
  redis.call('HSET', KEYS[1], 'status', 'settled', 'allocations', '', 'final_seq', seq)
elseif open then
  local kept = {}
  for _, p in ipairs(parse_pairs(hold[2])) do
    table.insert(kept, {p[1], alloc[p[1]]})
  end
  redis.call('HSET', KEYS[1], 'allocations', encode_pairs(kept))
end
return {'ok', line}
