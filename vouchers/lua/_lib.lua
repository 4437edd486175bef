-- Shared helpers, prepended to every ledger script when it is loaded.
-- Amounts are integers kept in doubles (exact below 2^53); they are written back with %d because
-- Redis would otherwise turn a large Lua number into exponent notation.

-- What a hold reads back as, in this order (see redis_codec.HOLD_FIELDS).
local HOLD_FIELDS = {'info', 'amount', 'allocations', 'expires_at', 'status', 'settled'}

local function fmt(n)
  return string.format('%d', n)
end

local function opt_num(s)
  if s == nil or s == false or s == '' then
    return nil
  end
  return tonumber(s)
end

local function burn_before(a, b)
  if a.priority ~= b.priority then
    return a.priority < b.priority
  end
  local ea = a.expires or math.huge
  local eb = b.expires or math.huge
  if ea ~= eb then
    return ea < eb
  end
  if a.created ~= b.created then
    return a.created < b.created
  end
  return a.id < b.id
end

-- One voucher's ledger fields, or nil if the hash is gone.
local function load_voucher(vprefix, id, now)
  local f = redis.call('HMGET', vprefix .. id, 'amount', 'spent', 'held', 'effective_at', 'expires_at',
    'voided_at', 'priority', 'created_at')
  if not f[1] then
    return nil
  end
  local v = {
    id = id, key = vprefix .. id, amount = tonumber(f[1]), spent = tonumber(f[2]), held = tonumber(f[3]),
    effective = tonumber(f[4]), expires = opt_num(f[5]), voided = opt_num(f[6]) ~= nil,
    priority = tonumber(f[7]), created = tonumber(f[8]), dspent = 0, dheld = 0,
  }
  v.in_force = (not v.voided) and now >= v.effective and (v.expires == nil or now < v.expires)
  return v
end

-- The vouchers of the live set in burn order. Voided and expired ones leave the set for good,
-- so reserve does not scan a startup's whole history.
local function load_live(live_key, vprefix, now)
  local out = {}
  for _, id in ipairs(redis.call('SMEMBERS', live_key)) do
    local v = load_voucher(vprefix, id, now)
    if v == nil or v.voided or (v.expires ~= nil and now >= v.expires) then
      redis.call('SREM', live_key, id)
    else
      table.insert(out, v)
    end
  end
  table.sort(out, burn_before)
  return out
end

-- Take up to `need` from the free capacity of vouchers in force, in burn order; returns what is left.
local function take_free(vs, need, taken)
  for _, v in ipairs(vs) do
    if need <= 0 then
      break
    end
    local free = v.amount - v.spent - v.held
    if v.in_force and free > 0 then
      local take = math.min(free, need)
      v.held = v.held + take
      v.dheld = v.dheld + take
      need = need - take
      table.insert(taken, {v.id, take})
    end
  end
  return need
end

-- What was free on vouchers in force before this script took anything (for the error message).
local function available_before(vs)
  local available = 0
  for _, v in ipairs(vs) do
    if v.in_force then
      -- Each voucher's free part first: `available + v.amount` alone may pass 2^53 and lose units.
      available = available + (v.amount - v.spent - (v.held - v.dheld))
    end
  end
  return available
end

-- Write back what changed. The script runs atomically, so the values read at its start are still
-- current and one HSET replaces two increments.
local function write_deltas(vs)
  for _, v in ipairs(vs) do
    if v.dspent ~= 0 and v.dheld ~= 0 then
      redis.call('HSET', v.key, 'spent', fmt(v.spent), 'held', fmt(v.held))
    elseif v.dspent ~= 0 then
      redis.call('HSET', v.key, 'spent', fmt(v.spent))
    elseif v.dheld ~= 0 then
      redis.call('HSET', v.key, 'held', fmt(v.held))
    end
  end
end

local function parse_pairs(s)
  local out = {}
  for id, amt in string.gmatch(s or '', '([^,=]+)=(%d+)') do
    table.insert(out, {id, tonumber(amt)})
  end
  return out
end

local function encode_pairs(list)
  local parts = {}
  for _, p in ipairs(list) do
    if p[2] > 0 then
      table.insert(parts, p[1] .. '=' .. fmt(p[2]))
    end
  end
  return table.concat(parts, ',')
end

-- Add amounts to a pair list, keeping first-seen order and merging repeats.
local function merge_pairs(list, extra)
  local index = {}
  for i, p in ipairs(list) do
    index[p[1]] = i
  end
  for _, p in ipairs(extra) do
    local i = index[p[1]]
    if i then
      list[i][2] = list[i][2] + p[2]
    else
      table.insert(list, {p[1], p[2]})
      index[p[1]] = #list
    end
  end
  return list
end

-- Free what an open hold still holds and mark it `status`; false if the hold was not open.
local function close_hold(hkey, vprefix, open_startup, hold_id, status)
  local f = redis.call('HMGET', hkey, 'status', 'allocations')
  if f[1] ~= 'open' then
    return false
  end
  for _, p in ipairs(parse_pairs(f[2])) do
    if p[2] > 0 then
      redis.call('HINCRBY', vprefix .. p[1], 'held', fmt(-p[2]))
    end
  end
  redis.call('HSET', hkey, 'status', status, 'allocations', '')
  redis.call('ZREM', open_startup, hold_id)
  return true
end

-- Release a startup's open holds whose TTL has passed (expires_at <= now).
local function release_expired(open_startup, hprefix, vprefix, now)
  local n = 0
  for _, hid in ipairs(redis.call('ZRANGEBYSCORE', open_startup, '-inf', now)) do
    if close_hold(hprefix .. hid, vprefix, open_startup, hid, 'released') then
      n = n + 1
    end
  end
  return n
end
