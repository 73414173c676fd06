-- Take over dispatch entries whose agent went silent, dead-lettering those delivered too often.
-- KEYS[1]  pool stream         ff:{pN}:pool:<pool>
-- KEYS[2]  dead-letter stream  ff:{pN}:dlq:<pool>
-- KEYS[3]  event stream        ff:{pN}:events
-- KEYS[4]  counters (optional) ff:{pN}:reclaims, a hash: reclaimed:<pool>, dead_lettered:<pool>
-- ARGV[1] group, ARGV[2] claiming consumer, ARGV[3] lease (min idle, ms), ARGV[4] max entries,
-- ARGV[5] max deliveries, ARGV[6] max dead-letter stream length, ARGV[7] pool (with KEYS[4])
-- Returns the entries this consumer now owns and should run: { {id, {field, value, ...}}, ... }.
-- An entry past max deliveries moves to the dead-letter stream, is acknowledged, and an
-- attempt_finished event (reason dead_letter) tells the coordinator the attempt failed.
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])[2]
local keep = {}
local max = tonumber(ARGV[5])
local dead = 0
for _, entry in ipairs(claimed) do
  if type(entry) == 'table' and type(entry[2]) == 'table' then
    local id = entry[1]
    local info = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
    local deliveries = info and tonumber(info[4]) or 1
    if deliveries > max then
      local payload = entry[2][2]
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'e', payload, 'deliveries', deliveries)
      local ok, env = pcall(cmsgpack.unpack, payload)
      if ok and type(env) == 'table' and env['run'] then
        redis.call('XADD', KEYS[3], '*', 'e', cmsgpack.pack({
          v = 1, k = 'attempt_finished', tenant = env['tenant'], run = env['run'],
          task = env['task'], attempt = env['attempt'], ok = false, reason = 'dead_letter',
          retryable = true,
          error = 'dead-lettered: delivered ' .. deliveries .. ' times without a result ' ..
                  '(max_deliveries=' .. max .. '); the agents running it died or hung',
        }))
      end
      redis.call('XACK', KEYS[1], ARGV[1], id)
      dead = dead + 1
    else
      keep[#keep + 1] = entry
    end
  end
end
if KEYS[4] then
  if #keep > 0 then redis.call('HINCRBY', KEYS[4], 'reclaimed:' .. ARGV[7], #keep) end
  if dead > 0 then redis.call('HINCRBY', KEYS[4], 'dead_lettered:' .. ARGV[7], dead) end
end
return keep
