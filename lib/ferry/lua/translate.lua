-- Hand a Kafka group over to a Redis consumer group, all in one step: the group at its start,
-- the offsets the consumer helper skips by, the consumed shadows, the record of the hand-over
-- and any gap the operator accepted. Every key carries the migration's hash tag, so the step
-- is atomic on Redis Cluster too. A rerun is safe at any point:
--   * already done (the record exists): nothing changes; returns 'done'.
--   * a group left by an interrupted hand-over of an earlier release (created, offsets or
--     shadows not all stored) that nobody has read: set to the planned start and completed.
--   * such a group that a consumer already read: refused (FERRY_TOUCHED), nothing changes.
-- KEYS[1] stream, KEYS[2] offsets hash, KEYS[3] shadows set, KEYS[4] hand-over record (hash),
-- KEYS[5] events stream. Per-partition and spread layouts call it once per partition stream,
-- without KEYS[5] (the events stream is in the migration's slot; the caller records the
-- hand-over there once every partition's group exists).
-- ARGV[1] group, ARGV[2] start ID, ARGV[3] ENTRIESREAD, ARGV[4] JSON:
--   {offsets = {p = offset}, shadows = [id], record = {field = value}, gaps = [[p, committed, start]],
--    actor = "..."}
-- Returns {'created' | 'repaired' | 'done'}.
local group = ARGV[1]

local function group_info()
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return nil
  end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local info = {}
    for i = 1, #g, 2 do
      info[g[i]] = g[i + 1]
    end
    if info['name'] == group then
      return info
    end
  end
  return nil
end

if redis.call('HGET', KEYS[4], 'done') and group_info() ~= nil then
  return {'done'}
end

local spec = cjson.decode(ARGV[4])
local info = group_info()
local outcome = 'created'
if info ~= nil then
  if tonumber(info['consumers']) > 0 or tonumber(info['pending']) > 0 then
    return redis.error_reply('FERRY_TOUCHED ' .. info['consumers'] .. ' consumer(s), '
      .. info['pending'] .. ' pending, last delivered ' .. info['last-delivered-id'])
  end
  redis.call('XGROUP', 'SETID', KEYS[1], group, ARGV[2], 'ENTRIESREAD', ARGV[3])
  outcome = 'repaired'
else
  redis.call('XGROUP', 'CREATE', KEYS[1], group, ARGV[2], 'MKSTREAM', 'ENTRIESREAD', ARGV[3])
end

redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
-- a marker field, so an empty translation is recorded too
local offsets = {'translated', '1'}
for p, o in pairs(spec['offsets']) do
  offsets[#offsets + 1] = p
  offsets[#offsets + 1] = tostring(o)
end
redis.call('HSET', KEYS[2], unpack(offsets))
local shadows = spec['shadows']
for i = 1, #shadows, 1000 do
  redis.call('SADD', KEYS[3], unpack(shadows, i, math.min(i + 999, #shadows)))
end
for _, gap in ipairs(KEYS[5] and spec['gaps'] or {}) do
  redis.call('XADD', KEYS[5], '*', 'type', 'handover-gap', 'group', group,
    'partition', gap[1], 'committed', gap[2], 'start', gap[3], 'lost', gap[3] - gap[2],
    'actor', spec['actor'])
end
local record = {'done', '1'}
for field, value in pairs(spec['record']) do
  record[#record + 1] = field
  record[#record + 1] = value
end
redis.call('HSET', KEYS[4], unpack(record))
if KEYS[5] then
  redis.call('XADD', KEYS[5], '*', 'type', 'handover', 'group', group, 'start_id', ARGV[2],
    'entries_read', ARGV[3], 'outcome', outcome, 'actor', spec['actor'])
end
return {outcome}
