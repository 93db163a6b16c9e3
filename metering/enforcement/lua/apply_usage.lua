-- Apply one org's usage events of one batch atomically (G1, G2).
--
-- KEYS[1]  the org's key base, "<prefix>{org_id}"; every key used derives from it, so
--          all live in one Redis Cluster hash slot.
-- ARGV[1]  source partition
-- ARGV[2..] one value per event, its fields joined by tabs (ids never contain one; one
--          argument instead of seven keeps client-side encoding cheap):
--          offset, event_id, digest, month (YYYY-MM), user_id, cost_nano_usd, and the
--          seat allowances in force that month as "standard=<n>,premium=<n>" (the script
--          looks the member's seat up; Python supplies the prices).
--
-- Outcome per event, in order:
--   "A|<included>"  applied now           "R|<included>"  applied before, at this offset
--   "D"             duplicate of an event counted before (same payload)
--   "C"             same event_id, different payload (event_id_conflict)
--   "U"             the org is unknown (no org.created applied yet)
--
-- Returns a JSON document: outcomes plus the exact counters the caller needs to decide
-- notifications, all money as decimal strings (Lua numbers are doubles; strings are exact).

local base = KEYS[1]
local partition = ARGV[1]
local FIELDS = '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$'

local meta = redis.call('HGETALL', base .. ':meta')
local m = {}
for i = 1, #meta, 2 do m[meta[i]] = meta[i + 1] end

local outcomes = {}
local n = #ARGV - 1

if not m['plan'] then
  for i = 1, n do outcomes[i] = 'U' end
  return cjson.encode({outcomes = outcomes})
end

local seat_based = m['plan'] == 'seat_based'
local self_serve = m['billing_mode'] == 'self_serve'
local touched = {}  -- month -> {user -> true}

local function allowance_for(seat, spec)
  -- spec: "standard=<n>,premium=<n>"
  for name, value in string.gmatch(spec, '(%w+)=(%d+)') do
    if name == seat then return tonumber(value) end
  end
  return 0
end

for i = 1, n do
  local offset, event_id, digest, month, user, cost, allowances =
    string.match(ARGV[i + 1], FIELDS)

  local ids = base .. ':ids'
  local previous = redis.call('HGET', ids, event_id)
  if previous then
    local p_digest, p_partition, p_offset, p_included =
      string.match(previous, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    if p_digest ~= digest then
      outcomes[i] = 'C'
    elseif p_partition == partition and p_offset == offset then
      outcomes[i] = 'R|' .. p_included
    else
      outcomes[i] = 'D'
    end
  else
    local spend = base .. ':spend:' .. month
    local included = 0
    if seat_based then
      local member = redis.call('HGET', base .. ':members', user)
      local seat = member and string.match(member, '^([^|]*)') or ''
      local allowance = allowance_for(seat, allowances)
      local used = tonumber(redis.call('HGET', spend, 'a:' .. user) or '0')
      local left = allowance - used
      if left > 0 then
        -- Per-event costs and allowances are far below 2^53: exact in a Lua number.
        included = math.min(tonumber(cost), left)
      end
      if included > 0 then
        redis.call('HINCRBY', spend, 'a:' .. user, string.format('%d', included))
      end
    end
    local billed = tonumber(cost) - included
    local billed_text = string.format('%d', billed)
    redis.call('HINCRBY', spend, 'org', billed_text)
    redis.call('HINCRBY', spend, 'u:' .. user, billed_text)
    redis.call('HINCRBY', spend, 't:' .. user, cost)
    if self_serve and billed > 0 then
      redis.call('DECRBY', base .. ':balance', billed_text)
    end
    redis.call('HSET', ids, event_id,
      digest .. '|' .. partition .. '|' .. offset .. '|' .. string.format('%d', included))
    outcomes[i] = 'A|' .. string.format('%d', included)
  end
  touched[month] = touched[month] or {}
  touched[month][user] = true
end

-- The numbers notifications are decided from, read back as exact strings.
local months = {}
for month, users in pairs(touched) do
  local spend = base .. ':spend:' .. month
  local entry = {org = redis.call('HGET', spend, 'org') or '0', users = {},
                 notified = redis.call('SMEMBERS', base .. ':notified:' .. month)}
  for user, _ in pairs(users) do
    entry.users[user] = {
      spend = redis.call('HGET', spend, 'u:' .. user) or '0',
      allowance_used = redis.call('HGET', spend, 'a:' .. user) or '0',
      cap = redis.call('HGET', base .. ':caps', user) or false,
      member = redis.call('HGET', base .. ':members', user) or false,
    }
  end
  months[month] = entry
end

return cjson.encode({
  outcomes = outcomes,
  months = months,
  meta = m,
  balance = redis.call('GET', base .. ':balance') or '0',
  balance_notified = redis.call('SMEMBERS', base .. ':notified:-'),
  stopped = redis.call('SMEMBERS', base .. ':stopped'),
})
