-- Change the migration's phase if it is still what the caller saw (compare and set), bump
-- the epoch and log the change, all in one step. Every time here is the Redis server's (TIME).
-- KEYS[1] state hash, KEYS[2] events stream
-- ARGV[1] expected current phase, ARGV[2] new phase, ARGV[3] reason, ARGV[4] actor,
-- ARGV[5] the lease in ms when the new phase is draining, ARGV[6] '1' when forced
-- * to draining: lease_until = server time + lease; leaving draining removes it.
-- * draining -> redis-primary is refused (FERRY_LEASE) once server time > lease_until (or
--   with no lease): a coordinator that outlived its lease has no right to switch.
-- * to redis-primary: primary_from:<p> = frontier:<p> + 1 (HSETNX): where Kafka's shadows
--   begin per partition, read in the same step as the switch; the count of records that
--   reached Kafka directly (ingest.lua: direct_after_switch, direct_last_ms) starts again.
-- * forced: a 'forced' event (from, to, reason, actor) before the phase event.
-- Returns {epoch, lease_until ms or '', server ms}.
local state, events = KEYS[1], KEYS[2]
local expected, target, reason, actor = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local current = redis.call('HGET', state, 'phase') or 'kafka-only'
if current ~= expected then
  return redis.error_reply('FERRY_PHASE the phase is ' .. current .. ', not ' .. expected)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_s = string.format('%.0f', now)
if current == 'draining' and target == 'redis-primary' then
  local lease = redis.call('HGET', state, 'lease_until')
  if not lease or now > tonumber(lease) then
    return redis.error_reply('FERRY_LEASE the draining lease ended at ' .. (lease or 'none')
      .. ' ms, Redis server time is ' .. now_s .. ' ms')
  end
end
local epoch = redis.call('HINCRBY', state, 'epoch', 1)
redis.call('HSET', state, 'phase', target)
local lease_until = ''
if target == 'draining' then
  lease_until = string.format('%.0f', now + tonumber(ARGV[5]))
  redis.call('HSET', state, 'lease_until', lease_until)
else
  redis.call('HDEL', state, 'lease_until')
end
if target == 'redis-primary' then
  redis.call('HDEL', state, 'direct_after_switch', 'direct_last_ms')
  local fields = redis.call('HGETALL', state)
  for i = 1, #fields, 2 do
    local p = string.match(fields[i], '^frontier:(%d+)$')
    if p then
      redis.call('HSETNX', state, 'primary_from:' .. p,
        string.format('%.0f', tonumber(fields[i + 1]) + 1))
    end
  end
end
if ARGV[6] == '1' then
  redis.call('XADD', events, '*', 'type', 'forced', 'from', current, 'to', target,
    'epoch', epoch, 'reason', reason, 'actor', actor)
end
redis.call('XADD', events, '*', 'type', 'phase', 'from', current, 'to', target,
  'epoch', epoch, 'reason', reason, 'actor', actor)
return {epoch, lease_until, now_s}
