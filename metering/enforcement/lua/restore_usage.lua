-- Rebuild (G3): re-apply one org's *priced* usage, exactly as it was decided live.
--
-- Replaying the raw input could decide differently (an org or member that did not exist
-- yet when the event first arrived); `usage.priced.v1` records what was decided, with the
-- included/billed split, so the counters come back identical. Same writes, in the same
-- order, as apply_usage.lua; de-duplicated by event_id (the priced topic is at-least-once)
-- through the same marks, one hash per month ("<base>:ids:<month>"). Their expiry is set
-- by `metering rebuild` once every priced event is re-applied (metering/enforcement/
-- rebuild.py), so a month's duplicates are recognised until the end of the rebuild.
--
-- KEYS[1]  the org's key base
-- KEYS[2]  the org's meta hash: declared, not used here (OrgKeys.script_keys: with the base,
--          never a key itself, Redis Cluster refuses the script while the slot moves)
-- ARGV     6 values per priced event: mark field (a digest of the event_id), payload
--          digest, month, user_id, cost, included, followed by the source partition and
--          offset: 8 in all.
-- Returns the number of events applied.

local base = KEYS[1]
local STRIDE = 8
-- Checked before anything is written (a Lua script is not rolled back when it fails):
-- the amounts must be what the usage script could have decided, at most
-- MAX_EVENT_COST_NANO_USD (10^15, exact as a Lua number) with included <= cost.
local MAX_EVENT_COST = 1000000000000000
if #ARGV % STRIDE ~= 0 then
  return redis.error_reply('ERR restore_usage: arguments come in groups of ' .. STRIDE)
end
for at = 1, #ARGV, STRIDE do
  local cost, included = ARGV[at + 4], ARGV[at + 5]
  if not (string.match(cost, '^%d+$') and #cost <= 16 and tonumber(cost) <= MAX_EVENT_COST
          and string.match(included, '^%d+$') and tonumber(included) <= tonumber(cost)
          and string.match(ARGV[at + 2], '^%d%d%d%d%-%d%d$')
          and string.match(ARGV[at + 6], '^%d+$') and string.match(ARGV[at + 7], '^%d+$')) then
    return redis.error_reply('ERR restore_usage: invalid priced event ' .. ARGV[at])
  end
end
local self_serve = redis.call('HGET', base .. ':meta', 'billing_mode') == 'self_serve'
local applied = 0

for at = 1, #ARGV, STRIDE do
  local event_id, digest, month, user = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local cost, included = ARGV[at + 4], ARGV[at + 5]
  local partition, offset = ARGV[at + 6], ARGV[at + 7]
  local ids = base .. ':ids:' .. month
  if redis.call('HEXISTS', ids, event_id) == 0 then
    local spend = base .. ':spend:' .. month
    local billed = tonumber(cost) - tonumber(included)
    local billed_text = string.format('%d', billed)
    if tonumber(included) > 0 then
      redis.call('HINCRBY', spend, 'a:' .. user, included)
    end
    redis.call('HINCRBY', spend, 'org', billed_text)
    redis.call('HINCRBY', spend, 'u:' .. user, billed_text)
    redis.call('HINCRBY', spend, 't:' .. user, cost)
    if self_serve and billed > 0 then
      redis.call('DECRBY', base .. ':balance', billed_text)
    end
    redis.call('HSET', ids, event_id,
      digest .. '|' .. partition .. '|' .. offset .. '|' .. included)
    applied = applied + 1
  end
end
return applied
