-- Everything the gate decides with, for one member of one org, read in one round trip
-- (metering/gate.py). Read-only; every key is declared and shares the org's hash slot.
--
-- KEYS[1]  the org's meta hash        KEYS[4]  the org's balance
-- KEYS[2]  the org's members hash     KEYS[5]  the org's spend hash of the current month
-- KEYS[3]  the org's caps hash
-- ARGV[1]  the member asked about
-- ARGV[2]  another member whose entry in the member list is wanted too (the caller, when
--          a member asks about someone else: their role decides), or "" for none
--
-- Returns one string, eleven fields separated by "\n", empty for anything absent (no
-- field is ever empty or holds a newline: ids, enums, integers, "seat|role"): plan,
-- billing_mode, extra_usage, org_cap, the member's "seat|role", their cap, the balance,
-- the month's org spend, the member's billed spend, the member's allowance used, the
-- other member's "seat|role". One string, not a list of eleven: the client's reply
-- parser (redis-py, pure Python) costs about as much per element as the script itself.

local user = ARGV[1]
local meta = redis.call('HMGET', KEYS[1], 'plan', 'billing_mode', 'extra_usage', 'org_cap')
local spend = redis.call('HMGET', KEYS[5], 'org', 'u:' .. user, 'a:' .. user)
local asker = false
if ARGV[2] ~= '' then
  asker = redis.call('HGET', KEYS[2], ARGV[2])
end
local fields = {
  meta[1], meta[2], meta[3], meta[4],
  redis.call('HGET', KEYS[2], user),
  redis.call('HGET', KEYS[3], user),
  redis.call('GET', KEYS[4]),
  spend[1], spend[2], spend[3],
  asker,
}
for i = 1, 11 do
  fields[i] = fields[i] or ''
end
return table.concat(fields, '\n')
