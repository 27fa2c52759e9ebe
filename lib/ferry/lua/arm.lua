-- Arm a migration: claim the stream keys, record which topic is migrated, and set
-- frontier[p] = start[p] - 1 (position[p] = start[p]) where unset.
-- KEYS[1] state hash, KEYS[2..] target stream keys
-- ARGV[1] topic, ARGV[2] layout, ARGV[3] topic ID ('' when the broker has none),
-- ARGV[4] the start rule as configured, ARGV[5] its target timestamp ms ('' for earliest),
-- then per partition: partition, start offset, how it was found, fingerprint ('' for none)
-- Refuses when a stream key holds data ferry did not write, the state belongs to another
-- topic name, or the topic ID differs from the one recorded (a topic recreated under the name).
local state = KEYS[1]
local owner_topic = redis.call('HGET', state, 'topic')
if owner_topic and owner_topic ~= ARGV[1] then
  return redis.error_reply('FERRY_FOREIGN state ' .. state .. ' belongs to topic ' .. owner_topic)
end
local owner_id = redis.call('HGET', state, 'topic_id')
if owner_id and ARGV[3] ~= '' and owner_id ~= ARGV[3] then
  return redis.error_reply('FERRY_TOPIC topic ' .. ARGV[1] .. ' now has ID ' .. ARGV[3] .. ' but the migration was armed on ID ' .. owner_id)
end
for i = 2, #KEYS do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' then
    if kind ~= 'stream' or redis.call('HGET', state, 'stream:' .. KEYS[i]) ~= '1' then
      return redis.error_reply('FERRY_FOREIGN key ' .. KEYS[i] .. ' already holds a ' .. kind .. ' that ferry did not write')
    end
  end
end
redis.call('HSET', state, 'owner', 'ferry', 'topic', ARGV[1], 'layout', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSETNX', state, 'topic_id', ARGV[3])
end
redis.call('HSETNX', state, 'start_rule', ARGV[4])
redis.call('HSETNX', state, 'start_ts', ARGV[5])
for i = 2, #KEYS do
  redis.call('HSET', state, 'stream:' .. KEYS[i], '1')
end
local armed = 0
for i = 6, #ARGV, 4 do
  local p = ARGV[i]
  if redis.call('HSETNX', state, 'start:' .. p, ARGV[i + 1]) == 1 then
    redis.call('HSET', state, 'frontier:' .. p, tostring(tonumber(ARGV[i + 1]) - 1),
      'start_found:' .. p, ARGV[i + 2])
    if ARGV[i + 3] ~= '' then
      redis.call('HSET', state, 'fingerprint:' .. p, ARGV[i + 3])
    end
    armed = armed + 1
  end
end
return armed
