-- The coordinators' board (flowforge/engine/board.py): a set of members and, per coordinator,
-- a hash of its counts that expires unless it stores it again. KEYS[1] is the set, KEYS[2]
-- this coordinator's hash; the others' hashes are "<ARGV[2]><member>" in the same hash slot.

-- The other live coordinators' hashes; a member whose hash expired is dropped from the set.
local function board_peers(members, prefix, me)
  local peers = {}
  for _, name in ipairs(redis.call('SMEMBERS', members)) do
    if name ~= me then
      local key = prefix .. name
      if redis.call('EXISTS', key) == 1 then
        peers[#peers + 1] = key
      else
        redis.call('SREM', members, name)
      end
    end
  end
  return peers
end

-- This coordinator is live for another ARGV[3] ms (an empty hash would not exist: keep a field).
local function board_touch(members, mine, me, ttl)
  redis.call('SADD', members, me)
  redis.call('HSET', mine, '.', '1')
  redis.call('PEXPIRE', mine, ttl)
end

-- HMGET of many fields, in bounded slices (Lua's unpack has a limit).
local function board_hmget(key, fields)
  local out = {}
  for i = 1, #fields, 1000 do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + 999, #fields)))
    for _, v in ipairs(part) do out[#out + 1] = v end  -- (a missing field is false, not nil)
  end
  return out
end

