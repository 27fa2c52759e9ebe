-- Redis-first writes (phases redis-primary and redis-only): append one partition's records
-- to the stream before Kafka sees them, fenced by the phase.
-- KEYS[1] state hash, KEYS[2] target stream
-- ARGV[1] partition, then five arguments per record: timestamp ms, null flags, key, value, headers
-- Returns {phase} without writing when the phase is neither redis-primary nor redis-only (the
-- writer then sends the records the way the new phase says), else {phase, id1, id2, ...}.
local state, stream = KEYS[1], KEYS[2]
local p = ARGV[1]
local phase = redis.call('HGET', state, 'phase') or 'kafka-only'
if phase ~= 'redis-primary' and phase ~= 'redis-only' then
  return {phase}
end
if not redis.call('HGET', state, 'frontier:' .. p) then
  return redis.error_reply('FERRY_NOT_ARMED partition ' .. p .. ' has no frontier; arm the migration first')
end
for i = 2, #ARGV, 5 do
  if tonumber(ARGV[i]) == nil then
    return redis.error_reply('FERRY_ORDER timestamp ' .. ARGV[i] .. ' is not a number')
  end
end
-- Entry IDs follow ingest.lua's rule: max(min(ts, server time + max_future_skew_ms), last ms).
local lastms_key = 'lastms:' .. stream
local lastms_s = redis.call('HGET', state, lastms_key) or '0'
local lastms = tonumber(lastms_s)
local now = redis.call('TIME')
local skew = tonumber(redis.call('HGET', state, 'max_future_skew_ms') or '300000')
local latest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + skew
local out = {phase}
for i = 2, #ARGV, 5 do
  local ts = tonumber(ARGV[i])
  local ts_s = ARGV[i]
  if ts > latest then
    ts = latest
    ts_s = string.format('%.0f', latest)
  end
  if ts > lastms then
    lastms = ts
    lastms_s = ts_s
  end
  out[#out + 1] = redis.call('XADD', stream, lastms_s .. '-*', 'p', p, 'o', '', 'ts', ARGV[i],
    'f', ARGV[i + 1], 'k', ARGV[i + 2], 'v', ARGV[i + 3], 'h', ARGV[i + 4])
end
redis.call('HSET', state, lastms_key, lastms_s)
redis.call('HINCRBY', state, 'primary_written', (#ARGV - 1) / 5)
return out
