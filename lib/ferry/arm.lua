-- Arm a migration: claim the stream keys and set frontier[p] = start[p] - 1 where unset.
-- KEYS[1] state hash, KEYS[2..] target stream keys
-- ARGV[1] topic, ARGV[2] layout, then pairs: partition, start offset
-- Refuses when a stream key holds data ferry did not write, or the state belongs to another topic.
local state = KEYS[1]
local owner_topic = redis.call('HGET', state, 'topic')
if owner_topic and owner_topic ~= ARGV[1] then
  return redis.error_reply('FERRY_FOREIGN state ' .. state .. ' belongs to topic ' .. owner_topic)
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
for i = 2, #KEYS do
  redis.call('HSET', state, 'stream:' .. KEYS[i], '1')
end
local armed = 0
for i = 3, #ARGV, 2 do
  local p = ARGV[i]
  if redis.call('HSETNX', state, 'start:' .. p, ARGV[i + 1]) == 1 then
    redis.call('HSET', state, 'frontier:' .. p, tostring(tonumber(ARGV[i + 1]) - 1))
    armed = armed + 1
  end
end
return armed
