-- ferry's one write path: append one partition's batch and move its position atomically.
-- The state keeps frontier[p] = position[p] - 1: every offset at or below it is settled
-- (copied, or a transaction marker, aborted or compacted-away offset the reader stepped over).
-- KEYS[1] state hash, KEYS[2] target stream
-- ARGV[1] partition, ARGV[2] read_from (the consumer position before the fetch),
-- ARGV[3] read_to (the consumer position after it: above every offset in the batch),
-- then six arguments per record, offsets strictly increasing:
--   offset, timestamp ms, null flags, key, value, headers
-- A batch continues when read_from <= position; its records at or past the position are
-- appended and the position moves to read_to, in this one step. A batch with no records
-- only moves the position (markers at the end of a partition).
-- Returns {appended, frontier, refused}: refused = 1 when read_from > position (a hole).
-- Entry IDs are max(min(record ts, copy time + skew), last ID ms)-*: the copy time is the
-- server's clock (TIME), the skew the state's max_future_skew_ms (default 5 minutes), so one
-- far-future timestamp cannot pin every later ID; the record's own timestamp stays in 'ts'.
-- A record with flag 4 is the Kafka shadow of an entry a writer put in Redis first (its key
-- argument is that entry's ID): the frontier moves over it, nothing is appended.
-- Records appended in redis-primary or redis-only (not shadows: a producer that still writes
-- Kafka directly) are counted in direct_after_switch, the last at direct_last_ms (server time).
local state, stream = KEYS[1], KEYS[2]
local p = ARGV[1]
local fr_s = redis.call('HGET', state, 'frontier:' .. p)
if not fr_s then
  return redis.error_reply('FERRY_NOT_ARMED partition ' .. p .. ' has no frontier; arm the migration first')
end
local fr = tonumber(fr_s)
if tonumber(ARGV[2]) > fr + 1 then
  return {0, fr_s, 1}
end
local read_to = tonumber(ARGV[3])
if read_to == nil or read_to < tonumber(ARGV[2]) then
  return redis.error_reply('FERRY_ORDER partition ' .. p .. ': read_to ' .. ARGV[3] .. ' is below read_from ' .. ARGV[2])
end
local function id_less(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  return ams < bms or (ams == bms and tonumber(aseq) < tonumber(bseq))
end
-- Validate the whole batch before the first write: a script error does not undo writes.
local prev = -1
for i = 4, #ARGV, 6 do
  local off = tonumber(ARGV[i])
  local ts = tonumber(ARGV[i + 1])
  if off == nil or ts == nil or off <= prev then
    return redis.error_reply('FERRY_ORDER offsets not increasing in batch for partition ' .. p .. ' at ' .. ARGV[i])
  end
  prev = off
  if off >= read_to then
    return redis.error_reply('FERRY_ORDER partition ' .. p .. ': offset ' .. ARGV[i] .. ' is not below read_to ' .. ARGV[3])
  end
  if off > fr and ARGV[i + 2] == '4' then
    local id = ARGV[i + 3]
    if not string.match(id, '^%d+%-%d+$') then
      return redis.error_reply('FERRY_SHADOW partition ' .. p .. ' offset ' .. ARGV[i] .. ': shadow header holds no entry ID')
    end
    local found = redis.call('XRANGE', stream, id, id)
    if #found == 0 then
      local trimmed = redis.call('HGET', state, 'trimmed_id:' .. stream)
      if not trimmed or id_less(trimmed, id) then  -- not removed by retention: never there
        return redis.error_reply('FERRY_SHADOW partition ' .. p .. ' offset ' .. ARGV[i] .. ' is the shadow of entry ' .. id .. ', which is not in ' .. stream)
      end
    elseif found[1][2][2] ~= p then
      return redis.error_reply('FERRY_SHADOW partition ' .. p .. ' offset ' .. ARGV[i] .. ' is the shadow of entry ' .. id .. ' of partition ' .. found[1][2][2])
    end
  end
end
local lastms_key = 'lastms:' .. stream
local lastms_s = redis.call('HGET', state, lastms_key) or '0'
local lastms = tonumber(lastms_s)
local id = lastms_s .. '-*'
local now = redis.call('TIME')
local skew = tonumber(redis.call('HGET', state, 'max_future_skew_ms') or '300000')
local latest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + skew
local n = 0
local shadows = 0
local moved = false
for i = 4, #ARGV, 6 do
  local off = tonumber(ARGV[i])
  if off > fr and ARGV[i + 2] == '4' then
    fr = off
    fr_s = ARGV[i]
    shadows = shadows + 1
  elseif off > fr then
    local ts = tonumber(ARGV[i + 1])
    local ts_s = ARGV[i + 1]
    if ts > latest then
      ts = latest
      ts_s = string.format('%.0f', latest)
    end
    if ts > lastms then
      lastms = ts
      lastms_s = ts_s
      id = lastms_s .. '-*'
    end
    redis.call('XADD', stream, id, 'p', p, 'o', ARGV[i], 'ts', ARGV[i + 1],
      'f', ARGV[i + 2], 'k', ARGV[i + 3], 'v', ARGV[i + 4], 'h', ARGV[i + 5])
    fr = off
    fr_s = ARGV[i]
    n = n + 1
  end
end
if read_to - 1 > fr then  -- markers, aborted or compacted offsets after the last record
  fr = read_to - 1
  fr_s = tostring(fr)
  moved = true
end
if n > 0 then
  redis.call('HSET', state, 'frontier:' .. p, fr_s, lastms_key, lastms_s)
elseif shadows > 0 or moved then
  redis.call('HSET', state, 'frontier:' .. p, fr_s)
end
if shadows > 0 then
  redis.call('HINCRBY', state, 'shadowed', shadows)
end
if n > 0 then  -- a record that reached Kafka directly after the switch: the finish gate's count
  local phase = redis.call('HGET', state, 'phase')
  if phase == 'redis-primary' or phase == 'redis-only' then
    redis.call('HINCRBY', state, 'direct_after_switch', n)
    redis.call('HSET', state, 'direct_last_ms',
      string.format('%.0f', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)))
  end
end
return {n, fr_s, 0}
