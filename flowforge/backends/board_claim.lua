-- Claim room on the board (after board_peers.lua): store this coordinator's new counts of the
-- checked items only if, with every other live coordinator's added, each stays within its
-- limits. One script runs at a time: two coordinators never both spend the same room.
-- ARGV[1] me; ARGV[2] the others' hash key prefix; ARGV[3] ttl (ms); then per check three
-- values: the item, this coordinator's new value ("n" or "n cpu mem gpu"), its limits (the
-- same shape; -1: no limit).
-- Returns {1 stored | 0 not | -1 this coordinator is not on the board (it must store all its
-- counts first), {items over a limit}, {the others' sums per check}}.
local function amounts(text)
  local out = {}
  if text then
    for x in string.gmatch(text, '%S+') do out[#out + 1] = tonumber(x) end
  end
  return out
end

local members, mine, me = KEYS[1], KEYS[2], ARGV[1]
if redis.call('EXISTS', mine) == 0 then
  return {-1, {}, {}}
end
local items, own, limits, sums = {}, {}, {}, {}
for j = 4, #ARGV, 3 do
  items[#items + 1] = ARGV[j]
  own[#own + 1] = amounts(ARGV[j + 1])
  limits[#limits + 1] = amounts(ARGV[j + 2])
  sums[#sums + 1] = {}
  for d = 1, #limits[#limits] do sums[#sums][d] = 0 end
end
for _, key in ipairs(board_peers(members, ARGV[2], me)) do
  local values = board_hmget(key, items)
  for k = 1, #items do
    local v = amounts(values[k])
    for d = 1, #sums[k] do sums[k][d] = sums[k][d] + (v[d] or 0) end
  end
end
local over, out = {}, {}
for k = 1, #items do
  for d = 1, #limits[k] do
    if limits[k][d] >= 0 and (own[k][d] or 0) + sums[k][d] > limits[k][d] then
      over[#over + 1] = items[k]
      break
    end
  end
  out[k] = table.concat(sums[k], ' ')
end
if #over == 0 then
  for k = 1, #items do
    redis.call('HSET', mine, items[k], ARGV[3 + 3 * (k - 1) + 2])
  end
  board_touch(members, mine, me, ARGV[3])
  return {1, over, out}
end
return {0, over, out}
