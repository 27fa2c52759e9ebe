-- A writer's (or anyone's) answer to a coordinator that died in draining: once the Redis
-- server's time reaches the lease (lease_until), go back to dual-write, bump the epoch and
-- log it, in one step; before that, or in any other phase, change nothing.
-- A draining without lease_until (armed by an older release) counts as expired.
-- KEYS[1] state hash, KEYS[2] events stream; ARGV[1] actor
-- Returns {phase, epoch} after the call.
local state, events = KEYS[1], KEYS[2]
local phase = redis.call('HGET', state, 'phase') or 'kafka-only'
local epoch = tonumber(redis.call('HGET', state, 'epoch') or '0')
if phase ~= 'draining' then
  return {phase, epoch}
end
local lease = redis.call('HGET', state, 'lease_until')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if lease and now < tonumber(lease) then
  return {phase, epoch}
end
epoch = redis.call('HINCRBY', state, 'epoch', 1)
redis.call('HSET', state, 'phase', 'dual-write')
redis.call('HDEL', state, 'lease_until')
redis.call('XADD', events, '*', 'type', 'phase', 'from', 'draining', 'to', 'dual-write',
  'epoch', epoch, 'reason', 'lease expired', 'actor', ARGV[1])
return {'dual-write', epoch}
