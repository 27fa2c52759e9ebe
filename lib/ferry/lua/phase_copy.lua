-- The spread layout: the migration's phase and epoch copied into one partition's state hash,
-- where primary.lua checks it atomically with a Redis-first write (and ingest.lua counts
-- records that reached Kafka directly after the switch). Only the phase changes of
-- ferry.live.phases write copies, in the order that keeps every Redis-first write behind a
-- phase that allows it.
-- KEYS[1] the partition's state hash; ARGV[1] partition, ARGV[2] phase, ARGV[3] epoch
-- Entering redis-primary: primary_from:<p> = frontier:<p> + 1 (HSETNX), and the direct count
-- starts again, as phase.lua does for the single-slot layouts.
local state, p, phase = KEYS[1], ARGV[1], ARGV[2]
local before = redis.call('HGET', state, 'phase')
redis.call('HSET', state, 'phase', phase, 'epoch', ARGV[3])
if phase == 'redis-primary' and before ~= 'redis-primary' then
  redis.call('HDEL', state, 'direct_after_switch', 'direct_last_ms')
  local fr = redis.call('HGET', state, 'frontier:' .. p)
  if fr then
    redis.call('HSETNX', state, 'primary_from:' .. p, string.format('%.0f', tonumber(fr) + 1))
  end
end
return 1
