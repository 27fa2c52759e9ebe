-- Register or heartbeat a writer with the Redis server's time as its heartbeat, so liveness
-- never depends on a writer's host clock.
-- KEYS[1] writers hash; ARGV[1] writer id, ARGV[2] its JSON object without heartbeat_ms
-- Returns the heartbeat (server ms).
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local body = ARGV[2]
local head = string.sub(body, 1, -2)
if head ~= '{' then
  head = head .. ', '
end
redis.call('HSET', KEYS[1], ARGV[1], head .. '"heartbeat_ms": ' .. now .. '}')
return now
