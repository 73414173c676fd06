-- Trim a stream without dropping unacknowledged or undelivered work (after last_delivered.lua).
-- KEYS[1]  a stream with one consumer group
-- ARGV[1]  the group
-- Entries older than both the oldest pending entry and the group's last delivered entry have
-- been acknowledged, so they can go.
local last = last_delivered(KEYS[1], ARGV[1])
if not last then return 0 end
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
local floor = last
if tonumber(summary[1]) > 0 then floor = summary[2] end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
