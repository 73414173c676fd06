-- Append a chunk of an attempt's output lines to its run's live log, numbering the lines,
-- and queue the same chunk for the log writers, atomically.
-- KEYS[1]  the run's live stream      ff:{pN}:log:<run>
-- KEYS[2]  the run's line counter     ff:{pN}:log:<run>:n
-- KEYS[3]  the partition's ingest     ff:{pN}:logs
-- ARGV[1]  number of lines in the chunk
-- ARGV[2]  the chunk (msgpack: task, attempt, lines)
-- ARGV[3]  run id     ARGV[4] tenant
-- ARGV[5]  live stream max length (entries, approximate)
-- ARGV[6]  live stream TTL (ms)   ARGV[7] counter TTL (ms)
-- Returns the position of the chunk's first line. All keys share the hash tag {pN}.
local n = tonumber(ARGV[1])
local last = redis.call('INCRBY', KEYS[2], n)
local first = last - n + 1
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'p', first, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('XADD', KEYS[3], '*', 'p', first, 'd', ARGV[2], 'r', ARGV[3], 't', ARGV[4])
return first
