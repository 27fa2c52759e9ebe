-- Change the migration's phase if it is still what the caller saw (compare and set), bump
-- the epoch and log the change, all in one step.
-- KEYS[1] state hash, KEYS[2] events stream
-- ARGV[1] expected current phase, ARGV[2] new phase, ARGV[3] reason, ARGV[4] actor
-- Returns the new epoch.
local current = redis.call('HGET', KEYS[1], 'phase') or 'kafka-only'
if current ~= ARGV[1] then
  return redis.error_reply('FERRY_PHASE the phase is ' .. current .. ', not ' .. ARGV[1])
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'phase', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'type', 'phase', 'from', current, 'to', ARGV[2],
  'epoch', epoch, 'reason', ARGV[3], 'actor', ARGV[4])
return epoch
