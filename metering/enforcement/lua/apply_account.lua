-- Store one org's folded account state after a batch of its account events, atomically,
-- unless that batch was applied already (G2: the offset is stored with the state).
--
-- KEYS[1]  the org's key base, "<prefix>{org_id}"
-- KEYS[2]  the org's meta hash: declared, not used here (OrgKeys.script_keys: with the base,
--          never a key itself, Redis Cluster refuses the script while the slot moves)
-- ARGV     partition, last_offset, account_json, balance_delta_nano_usd,
--          then six sections, each a count followed by that many field/value pairs:
--          meta, members, caps, account_ids (event_id → "digest|partition|offset|outcome"),
--          seat_invoices (event_id → JSON list of the documents it issued),
--          account_outcomes (event_id → its account.outcomes.v1 value)
--
-- Returns 1 if applied, 0 if the stored offset shows it was applied before.
--
-- A Lua script is not rolled back when it fails half-way: every argument, and the
-- balance the purchases lead to, is checked before the first write, and an error is
-- returned with nothing written (the caller dead-letters the org's events).

local base = KEYS[1]
local partition = ARGV[1]
local last_offset = ARGV[2]
local delta = ARGV[4]
local BILLION = 1000000000
local BOUND_HIGH = 1000000000  -- schemas.money.MAX_TOTAL_NANO_USD = 10^18 = BOUND_HIGH * 10^9

if not (string.match(partition or '', '^%d+$') and string.match(last_offset or '', '^%d+$')
        and string.match(delta or '', '^%-?%d+$') and #delta <= 20) then
  return redis.error_reply('ERR apply_account: invalid partition, offset or balance delta')
end
local at = 5
for _ = 1, 6 do  -- the six sections below
  local count = tonumber(ARGV[at])
  if not count or count < 0 or at + 2 * count > #ARGV then
    return redis.error_reply('ERR apply_account: invalid section')
  end
  at = at + 1 + 2 * count
end
if at ~= #ARGV + 1 then
  return redis.error_reply('ERR apply_account: invalid argument count')
end

local stored = redis.call('HGET', base .. ':offsets', 'account:' .. partition)
if stored and tonumber(stored) >= tonumber(last_offset) then
  return 0
end

-- The balance after the purchases, exactly: a counter (up to 19 digits) is beyond a
-- double's exact range, so both numbers are split into (value div 10^9, value mod 10^9).
local function split(text)
  local sign, digits = string.match(text, '^(%-?)(%d+)$')
  if not digits then return nil end
  local high = #digits > 9 and tonumber(string.sub(digits, 1, -10)) or 0
  local low = tonumber(string.sub(digits, -9))
  if sign == '-' then high, low = -high, -low end
  return high, low
end
if delta ~= '0' then
  local balance = redis.call('GET', base .. ':balance') or '0'
  local b_high, b_low = split(balance)
  local d_high, d_low = split(delta)
  if not b_high then
    return redis.error_reply('ERR apply_account: the balance is not an integer')
  end
  local high, low = b_high + d_high, b_low + d_low
  local carry = math.floor(low / BILLION)
  high, low = high + carry, low - carry * BILLION
  if high > BOUND_HIGH or (high == BOUND_HIGH and low > 0) or high < -BOUND_HIGH then
    return redis.error_reply('ERR apply_account: the balance would pass 10^18 nano-USD')
  end
end

redis.call('SET', base .. ':account', ARGV[3])
if delta ~= '0' then
  redis.call('INCRBY', base .. ':balance', delta)
end

at = 5
local function rewrite(key, replace_all)
  local count = tonumber(ARGV[at])
  at = at + 1
  if replace_all then redis.call('DEL', key) end
  for i = 0, count - 1 do
    redis.call('HSET', key, ARGV[at + 2 * i], ARGV[at + 2 * i + 1])
  end
  at = at + 2 * count
end

rewrite(base .. ':meta', true)
rewrite(base .. ':members', true)
rewrite(base .. ':caps', true)
rewrite(base .. ':account_ids', false)
rewrite(base .. ':seat_invoices', false)
rewrite(base .. ':account_outcomes', false)
redis.call('HSET', base .. ':offsets', 'account:' .. partition, last_offset)
return 1
