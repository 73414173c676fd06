-- Store this coordinator's counts and read the others' (after board_peers.lua).
-- ARGV[1] me; ARGV[2] the others' hash key prefix; ARGV[3] ttl (ms); ARGV[4] "1": also return
-- the items the hash holds now (what an earlier life of this coordinator stored: kept until
-- it knows what it has in flight, then replaced); ARGV[5] n, then n item/value pairs to store;
-- then m, then m items to delete; then the items wanted from the others.
-- Returns {1 if this coordinator's hash was there (else what was not sent again is missing),
-- {per other live coordinator, the values of the wanted items (false: none)},
-- {the items the hash held, if asked}}.
local members, mine, me = KEYS[1], KEYS[2], ARGV[1]
local existed = redis.call('EXISTS', mine)
local held = {}
if ARGV[4] == '1' then
  held = redis.call('HKEYS', mine)
end
local i = 5
local n = tonumber(ARGV[i])
i = i + 1
for j = i, i + 2 * n - 1, 1000 do
  redis.call('HSET', mine, unpack(ARGV, j, math.min(j + 999, i + 2 * n - 1)))
end
i = i + 2 * n
local m = tonumber(ARGV[i])
i = i + 1
for j = i, i + m - 1, 1000 do
  redis.call('HDEL', mine, unpack(ARGV, j, math.min(j + 999, i + m - 1)))
end
i = i + m
board_touch(members, mine, me, ARGV[3])
local wanted = {}
for j = i, #ARGV do
  wanted[#wanted + 1] = ARGV[j]
end
local out = {}
for _, key in ipairs(board_peers(members, ARGV[2], me)) do
  out[#out + 1] = board_hmget(key, wanted)
end
return {existed, out, held}
