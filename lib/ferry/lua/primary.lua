-- Redis-first writes (phases redis-primary and redis-only): append one partition's records
-- to the stream before Kafka sees them, fenced by the phase.
-- KEYS[1] state hash, KEYS[2] target stream
-- ARGV[1] partition, ARGV[2] writer id, ARGV[3] the writer's sequence number of this batch
-- (per writer and partition, increasing), then five arguments per record: timestamp ms, null
-- flags, key, value, headers.
-- Returns {phase} without writing when the phase is neither redis-primary nor redis-only (the
-- writer then sends the records the way the new phase says), else {phase, id1, id2, ...}.
-- Idempotent like Kafka's idempotent producer: the same batch sent again (its reply was lost)
-- gets the IDs it was given the first time and writes nothing, whatever the phase is now.
local state, stream = KEYS[1], KEYS[2]
local p, writer, seq = ARGV[1], ARGV[2], tonumber(ARGV[3])
local seq_key, ids_key = 'wseq:' .. writer .. ':' .. p, 'wids:' .. writer .. ':' .. p
local last = tonumber(redis.call('HGET', state, seq_key) or '0')
if seq == nil then
  return redis.error_reply('FERRY_ORDER sequence ' .. ARGV[3] .. ' is not a number')
end
local phase = redis.call('HGET', state, 'phase') or 'kafka-only'
if seq == last then
  local out = {phase}
  for id in string.gmatch(redis.call('HGET', state, ids_key) or '', '[^,]+') do
    out[#out + 1] = id
  end
  return out
end
if seq < last then
  return redis.error_reply('FERRY_SEQ writer ' .. writer .. ' sent batch ' .. ARGV[3] .. ' of partition ' .. p .. ' after batch ' .. last)
end
if phase ~= 'redis-primary' and phase ~= 'redis-only' then
  return {phase}
end
if not redis.call('HGET', state, 'frontier:' .. p) then
  return redis.error_reply('FERRY_NOT_ARMED partition ' .. p .. ' has no frontier; arm the migration first')
end
for i = 4, #ARGV, 5 do
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
for i = 4, #ARGV, 5 do
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
redis.call('HSET', state, lastms_key, lastms_s, seq_key, seq, ids_key, table.concat(out, ',', 2))
redis.call('HINCRBY', state, 'primary_written', (#ARGV - 3) / 5)
return out
