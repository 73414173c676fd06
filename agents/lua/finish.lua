-- Publish attempt results and acknowledge their dispatch entries, atomically.
-- KEYS[1]  the pool stream the entries were read from   ff:{pN}:pool:<pool>
-- KEYS[2]  the partition's event stream                 ff:{pN}:events
-- ARGV[1]  consumer group of the pool stream
-- ARGV[2..] pairs: dispatch entry id, result envelope (msgpack)
-- Both keys share the hash tag {pN}, so this works on Redis Cluster.
local ids = {}
for i = 2, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', 'e', ARGV[i + 1])
  ids[#ids + 1] = ARGV[i]
end
if #ids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
end
return #ids
