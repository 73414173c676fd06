-- Take back dispatch entries no agent has read yet (after last_delivered.lua).
-- KEYS[1]  a pool stream with one consumer group
-- ARGV[1]  the group; ARGV[2..]  entry ids the coordinator wants back
-- Returns the ids deleted. An entry after the group's last delivered id was never read by any
-- consumer, and one script runs at a time, so an entry is either read (and kept) or deleted
-- (and never read): never both, never neither.
local last = last_delivered(KEYS[1], ARGV[1])
if not last then return {} end
local unread = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '(' .. last, '+')) do
  unread[entry[1]] = true
end
local taken = {}
for i = 2, #ARGV do
  if unread[ARGV[i]] and redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then
    taken[#taken + 1] = ARGV[i]
  end
end
return taken
