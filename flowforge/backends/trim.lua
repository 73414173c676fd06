-- Trim a stream without dropping unacknowledged or undelivered work.
-- KEYS[1]  a stream with one consumer group
-- ARGV[1]  the group
-- Entries older than both the oldest pending entry and the group's last delivered entry have
-- been acknowledged, so they can go.
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok then return 0 end
local last
for _, g in ipairs(groups) do
  local name, delivered
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
if not last then return 0 end
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
local floor = last
if tonumber(summary[1]) > 0 then floor = summary[2] end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
