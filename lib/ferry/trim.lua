-- Retention: remove up to LIMIT of the oldest entries of one stream, exactly, and record per
-- partition the highest offset removed (so validation knows what retention retired), and the
-- last ID removed (entries written to Redis first have no offset).
-- KEYS[1] state hash, KEYS[2] stream
-- ARGV[1] limit, ARGV[2] mode ('minid' or 'maxlen'), ARGV[3] threshold (an ID or a length)
-- Returns {entries removed (0 when nothing is left to trim), the stream's length after}.
local state, stream = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[1])
local mode, threshold = ARGV[2], ARGV[3]
local want = limit
if mode == 'maxlen' then
  local excess = redis.call('XLEN', stream) - tonumber(threshold)
  if excess <= 0 then return {0, redis.call('XLEN', stream)} end
  if excess < want then want = excess end
end
-- read one more than we may remove: its ID is the exact MINID that keeps it
local entries = redis.call('XRANGE', stream, '-', '+', 'COUNT', want + 1)
local function ms_seq(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local tms, tseq
if mode == 'minid' then tms, tseq = ms_seq(threshold) end
local removed, keep_id, last_removed = 0, nil, nil
local highest = {}
for i, entry in ipairs(entries) do
  local id = entry[1]
  local stop = (i > want)
  if not stop and mode == 'minid' then
    local ms, seq = ms_seq(id)
    stop = ms > tms or (ms == tms and seq >= tseq)
  end
  if stop then keep_id = id break end
  local fields = entry[2]
  local p, o
  for j = 1, #fields, 2 do
    if fields[j] == 'p' then p = fields[j + 1] elseif fields[j] == 'o' then o = fields[j + 1] end
  end
  if p and o and o ~= '' and (highest[p] == nil or tonumber(o) > tonumber(highest[p])) then highest[p] = o end
  removed = removed + 1
  last_removed = id
end
if removed == 0 then return {0, redis.call('XLEN', stream)} end
if keep_id then
  redis.call('XTRIM', stream, 'MINID', keep_id)
else
  redis.call('XTRIM', stream, 'MAXLEN', 0)
end
redis.call('HSET', state, 'trimmed_id:' .. stream, last_removed)
for p, o in pairs(highest) do
  local prev = redis.call('HGET', state, 'trimmed:' .. p)
  if prev == false or tonumber(o) > tonumber(prev) then
    redis.call('HSET', state, 'trimmed:' .. p, o)
  end
end
return {removed, redis.call('XLEN', stream)}
