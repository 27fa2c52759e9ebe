-- Retention: remove up to LIMIT of the oldest entries of one stream, exactly, and record per
-- partition the highest offset removed (so validation knows what retention retired), and the
-- last ID removed (entries written to Redis first have no offset).
-- Consumer groups bound it, read atomically with the trim: an entry is removed only once
-- every group of the stream has delivered it (ID <= last-delivered-id) and acknowledged it
-- (ID below the group's smallest pending ID), unless FORCE.
-- KEYS[1] state hash, KEYS[2] stream
-- ARGV[1] limit, ARGV[2] mode ('minid' or 'maxlen'), ARGV[3] threshold (an ID or a length),
-- ARGV[4] force ('1' removes what groups have not acknowledged too; optional, default '0')
-- Returns {entries removed (0 when nothing is left to trim), the stream's length after,
--   the group(s) holding the first entry the policy would remove but a group needs
--   (comma-separated, '' for none), that entry's ID ('' unless trimming stopped there),
--   entries removed that a group had not delivered and acknowledged (only when forced)}.
local state, stream = KEYS[1], KEYS[2]
local limit = tonumber(ARGV[1])
local mode, threshold = ARGV[2], ARGV[3]
local force = ARGV[4] == '1'
local want = limit
if mode == 'maxlen' then
  local excess = redis.call('XLEN', stream) - tonumber(threshold)
  if excess <= 0 then return {0, redis.call('XLEN', stream), '', '', 0} end
  if excess < want then want = excess end
end
-- read one more than we may remove: its ID is the exact MINID that keeps it
local entries = redis.call('XRANGE', stream, '-', '+', 'COUNT', want + 1)
if #entries == 0 then return {0, 0, '', '', 0} end
local function ms_seq(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)  -- a < b as stream IDs
  local ams, aseq = ms_seq(a)
  local bms, bseq = ms_seq(b)
  return ams < bms or (ams == bms and aseq < bseq)
end
-- every group: what it has been delivered, and the oldest entry it has not acknowledged
local groups = {}
for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local g = {}
  for j = 1, #info, 2 do
    if info[j] == 'name' then g.name = info[j + 1]
    elseif info[j] == 'last-delivered-id' then g.delivered = info[j + 1]
    elseif info[j] == 'pending' then g.pending = tonumber(info[j + 1]) end
  end
  if g.pending and g.pending > 0 then
    g.oldest_pending = redis.call('XPENDING', stream, g.name)[2]
  end
  groups[#groups + 1] = g
end
local function holders(id)  -- the groups that still need entry id, comma-separated
  local names = {}
  for _, g in ipairs(groups) do
    if before(g.delivered, id) or (g.oldest_pending and not before(id, g.oldest_pending)) then
      names[#names + 1] = g.name
    end
  end
  table.sort(names)
  return table.concat(names, ',')
end
local tms, tseq
if mode == 'minid' then tms, tseq = ms_seq(threshold) end
local removed, keep_id, last_removed = 0, nil, nil
local held_by, held_at, forced = '', '', 0
local highest = {}
for i, entry in ipairs(entries) do
  local id = entry[1]
  local stop = (i > want)
  if not stop and mode == 'minid' then
    local ms, seq = ms_seq(id)
    stop = ms > tms or (ms == tms and seq >= tseq)
  end
  if not stop and #groups > 0 then
    local names = holders(id)
    if names ~= '' then
      if held_by == '' then held_by = names end
      if force then
        forced = forced + 1
      else
        held_at = id
        stop = true
      end
    end
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
if removed == 0 then return {0, redis.call('XLEN', stream), held_by, held_at, 0} end
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
return {removed, redis.call('XLEN', stream), held_by, held_at, forced}
