-- Store one org's folded account state after a batch of its account events, atomically,
-- unless that batch was applied already (G2: the offset is stored with the state).
--
-- KEYS[1]  the org's key base, "<prefix>{org_id}"
-- ARGV     partition, last_offset, account_json, balance_delta_nano_usd,
--          then five sections, each a count followed by that many field/value pairs:
--          meta, members, caps, account_ids (event_id → "digest|partition|offset|outcome"),
--          seat_invoices (event_id → JSON list of the documents it issued)
--
-- Returns 1 if applied, 0 if the stored offset shows it was applied before.

local base = KEYS[1]
local partition = ARGV[1]
local last_offset = ARGV[2]

local stored = redis.call('HGET', base .. ':offsets', 'account:' .. partition)
if stored and tonumber(stored) >= tonumber(last_offset) then
  return 0
end

redis.call('SET', base .. ':account', ARGV[3])
if ARGV[4] ~= '0' then
  redis.call('INCRBY', base .. ':balance', ARGV[4])
end

local at = 5
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
redis.call('HSET', base .. ':offsets', 'account:' .. partition, last_offset)
return 1
