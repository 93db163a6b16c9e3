-- Apply one org's usage events of one batch atomically (G1, G2).
--
-- KEYS[1]  the org's key base, "<prefix>{org_id}"; every key used derives from it, so
--          all live in one Redis Cluster hash slot.
-- KEYS[2]  the org's meta hash: declared, not used here (OrgKeys.script_keys: with the base,
--          never a key itself, Redis Cluster refuses the script while the slot moves)
-- ARGV[1]  source partition
-- ARGV[2]  the months whose marks an event of the batch may have, each with when Redis
--          drops them: "YYYY-MM=<unix seconds>,..." (metering/enforcement/usage_marks.py)
-- ARGV[3]  months whose marks the batch drops (no event can be accepted for them any
--          more): "YYYY-MM,..." or ""
-- ARGV[4..] one value per event, its fields joined by tabs (ids never contain one; one
--          argument instead of seven keeps client-side encoding cheap):
--          offset, mark field (a fixed-size digest of the event_id), payload digest,
--          month (YYYY-MM, one of ARGV[2]'s), user_id, cost_nano_usd, and the seat
--          allowances in force that month as "standard=<n>,premium=<n>" (the script
--          looks the member's seat up; Python supplies the prices).
--
-- Marks live in one hash per month of occurred_at, "<base>:ids:<month>"; an id found in
-- another month's hash is a conflict (its occurred_at, hence its payload, differs).
--
-- Outcome per event, in order:
--   "A|<included>"  applied now           "R|<included>"  applied before, at this offset
--   "D"             duplicate of an event counted before (same payload)
--   "C"             same event_id, different payload (event_id_conflict)
--   "U"             the org is unknown (no org.created applied yet)
--   "O"             counting it would take a counter past its bound (amount_out_of_range):
--                   nothing is counted; its mark records the refusal, so a replay of the
--                   same record is refused again
--
-- A Lua script is not rolled back when it fails half-way, so nothing is written before
-- every argument is checked and every event decided (each against its bounds): the
-- writes are gathered and made at the end, once per key and field.
--
-- Returns a JSON document: outcomes plus the exact counters the caller needs to decide
-- notifications, all money as decimal strings (Lua numbers are doubles; strings are exact).

local base = KEYS[1]
local partition = ARGV[1]
local FIELDS = '^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)$'
-- schemas.money: MAX_EVENT_COST_NANO_USD (10^15 < 2^53: exact as a Lua number) and
-- MAX_TOTAL_NANO_USD (10^18) for every counter, held as BOUND_HIGH * 10^9.
local MAX_EVENT_COST = 1000000000000000
local BILLION = 1000000000
local BOUND_HIGH = 1000000000

local FIRST = 4  -- ARGV index of the first event
local n = #ARGV - FIRST + 1
local events = {}
if not string.match(partition or '', '^%d+$') then
  return redis.error_reply('ERR apply_usage: invalid partition')
end
local live, live_order = {}, {}
for month, at in string.gmatch(ARGV[2] or '', '(%d%d%d%d%-%d%d)=(%d+)') do
  live[month] = at
  live_order[#live_order + 1] = month
end
local drops = {}
for month in string.gmatch(ARGV[3] or '', '(%d%d%d%d%-%d%d)') do
  if live[month] then
    return redis.error_reply('ERR apply_usage: a month both looked up and dropped')
  end
  drops[#drops + 1] = month
end
for i = 1, n do
  local offset, event_id, digest, month, user, cost, allowances =
    string.match(ARGV[i + FIRST - 1], FIELDS)
  if not (offset and string.match(offset, '^%d+$') and event_id ~= '' and user ~= ''
          and live[month] and string.match(cost, '^%d+$')
          and #cost <= 16 and tonumber(cost) <= MAX_EVENT_COST
          and not string.find(digest, '|', 1, true)) then
    return redis.error_reply('ERR apply_usage: invalid argument ' .. i)
  end
  events[i] = {offset, event_id, digest, month, user, tonumber(cost), allowances}
end

local meta = redis.call('HGETALL', base .. ':meta')
local m = {}
for i = 1, #meta, 2 do m[meta[i]] = meta[i + 1] end

local outcomes = {}

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

-- Counters are 64-bit integers, beyond a double's exact range (2^53): each is held as
-- (high, low) = (value div 10^9, value mod 10^9), both exact, read once per script.
local counters = {}

local function split(text)
  local sign, digits = string.match(text, '^(%-?)(%d+)$')
  if not digits then error('not an integer counter: ' .. text) end
  local high = #digits > 9 and tonumber(string.sub(digits, 1, -10)) or 0
  local low = tonumber(string.sub(digits, -9))
  if sign == '-' then high, low = -high, -low end
  local carry = math.floor(low / BILLION)
  return {high + carry, low - carry * BILLION}
end

local function counter(key, field)
  local id = key .. '\0' .. (field or '')
  if not counters[id] then
    local text
    if field then text = redis.call('HGET', key, field) else text = redis.call('GET', key) end
    counters[id] = split(text or '0')
  end
  return id
end

-- The counter plus an exact delta (|delta| <= 10^15), normalised to 0 <= low < 10^9.
local function plus(id, delta)
  local value = counters[id]
  local dhigh = math.floor(delta / BILLION)
  local high, low = value[1] + dhigh, value[2] + (delta - dhigh * BILLION)
  local carry = math.floor(low / BILLION)
  return {high + carry, low - carry * BILLION}
end

-- Within [-10^18, 10^18]?
local function within(value)
  if value[1] > BOUND_HIGH or (value[1] == BOUND_HIGH and value[2] > 0) then return false end
  return value[1] >= -BOUND_HIGH
end

-- Exact decimal text of a counter (high, low).
local function text(value)
  local high, low = value[1], value[2]
  local sign = ''
  if high < 0 then
    sign = '-'
    if low == 0 then high = -high else high, low = -high - 1, BILLION - low end
  end
  if high == 0 then return sign .. string.format('%d', low) end
  return sign .. string.format('%d%09d', high, low)
end

-- Months no event can be accepted for any more: their marks go (Redis's expiry would
-- drop them too, a day later, for an org that stopped sending).
for _, month in ipairs(drops) do
  redis.call('DEL', base .. ':ids:' .. month)
end

-- Every event's earlier mark in its own month, and whether its id is marked in another
-- live month, read at once (chunked: unpack has a stack limit); marks written by this
-- script are looked up in `written` first (an id repeated in the batch).
local previous_marks, elsewhere = {}, {}
local CHUNK = 1000
for _, month in ipairs(live_order) do
  local key = base .. ':ids:' .. month
  if redis.call('EXISTS', key) == 1 then
    for first = 1, n, CHUNK do
      local last = math.min(first + CHUNK - 1, n)
      local names = {}
      for i = first, last do names[#names + 1] = events[i][2] end
      local found = redis.call('HMGET', key, unpack(names))
      for i = first, last do
        local mark = found[i - first + 1]
        if mark then
          if events[i][4] == month then previous_marks[i] = mark else elsewhere[i] = true end
        end
      end
    end
  end
end

-- Writes are gathered and made once per key and field after every event is decided
-- (absolute values of the exact counters: the script is atomic, so this equals the
-- increments), so an event costs no Redis command of its own.
local written = {}      -- event_id -> mark written by this script
local mark_order = {}   -- event_ids in the order their marks were written
local dirty = {}        -- counter id -> {key, field or false}
local seats = {}        -- user -> seat ('' when not a member), read once
local allowance_ids = {}

for i = 1, n do
  local offset, event_id, digest, month, user, cost, allowances = unpack(events[i])

  local previous = written[event_id] or previous_marks[i]
  if not previous and elsewhere[i] then
    outcomes[i] = 'C'  -- marked under another month: another occurred_at
  elseif previous then
    local p_digest, p_partition, p_offset, p_included =
      string.match(previous, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    if p_digest ~= digest then
      outcomes[i] = 'C'
    elseif p_partition == partition and p_offset == offset then
      outcomes[i] = p_included == 'O' and 'O' or 'R|' .. p_included
    else
      outcomes[i] = 'D'
    end
  else
    local spend = base .. ':spend:' .. month
    local included = 0
    local used_id
    if seat_based then
      if seats[user] == nil then
        local member = redis.call('HGET', base .. ':members', user)
        seats[user] = member and string.match(member, '^([^|]*)') or ''
      end
      local allowance = allowance_for(seats[user], allowances)
      used_id = counter(spend, 'a:' .. user)
      allowance_ids[used_id] = {spend, 'a:' .. user}
      local used = counters[used_id]
      -- Allowances are far below 2^53: the used amount is exact as one number.
      local left = allowance - (used[1] * BILLION + used[2])
      if left > 0 then
        -- Per-event costs (<= 10^15) and allowances are below 2^53: exact.
        included = math.min(cost, left)
      end
    end
    local billed = cost - included

    -- Check every counter this event moves before changing any of them.
    local org_id, user_id, total_id = counter(spend, 'org'), counter(spend, 'u:' .. user),
      counter(spend, 't:' .. user)
    local org_after, user_after, total_after =
      plus(org_id, billed), plus(user_id, billed), plus(total_id, cost)
    local balance_id, balance_after
    local draws = self_serve and billed > 0
    if draws then
      balance_id = counter(base .. ':balance', nil)
      balance_after = plus(balance_id, -billed)
    end
    local mark
    if within(org_after) and within(user_after) and within(total_after)
        and (not draws or within(balance_after)) then
      if included > 0 then
        counters[used_id] = plus(used_id, included)
        dirty[used_id] = allowance_ids[used_id]
      end
      counters[org_id], counters[user_id], counters[total_id] = org_after, user_after, total_after
      dirty[org_id], dirty[user_id], dirty[total_id] =
        {spend, 'org'}, {spend, 'u:' .. user}, {spend, 't:' .. user}
      if draws then
        counters[balance_id] = balance_after
        dirty[balance_id] = {base .. ':balance', false}
      end
      mark = digest .. '|' .. partition .. '|' .. offset .. '|' .. string.format('%d', included)
      outcomes[i] = 'A|' .. string.format('%d', included)
    else
      mark = digest .. '|' .. partition .. '|' .. offset .. '|O'
      outcomes[i] = 'O'
    end
    written[event_id] = mark
    mark_order[#mark_order + 1] = {event_id, month}
  end
  touched[month] = touched[month] or {}
  touched[month][user] = true
end

-- The gathered writes: counters, then the marks (chunked HSETs).
for id, place in pairs(dirty) do
  if place[2] then
    redis.call('HSET', place[1], place[2], text(counters[id]))
  else
    redis.call('SET', place[1], text(counters[id]))
  end
end
local by_month = {}
for _, entry in ipairs(mark_order) do
  local fields = by_month[entry[2]]
  if not fields then
    fields = {}
    by_month[entry[2]] = fields
  end
  fields[#fields + 1] = entry[1]
  fields[#fields + 1] = written[entry[1]]
end
for month, fields in pairs(by_month) do
  local key = base .. ':ids:' .. month
  for first = 1, #fields, 2 * CHUNK do
    redis.call('HSET', key, unpack(fields, first, math.min(first + 2 * CHUNK - 1, #fields)))
  end
  redis.call('EXPIREAT', key, live[month])
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
