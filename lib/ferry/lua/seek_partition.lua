-- The hand-over's seek on one partition's stream (per-partition and spread layouts): the ID
-- of the last entry whose Kafka offset is below ARGV[1] (the first offset the group has not
-- consumed), found by binary search on entry IDs, so it costs O(log) probes of O(log n)
-- each, whatever the stream's length. Every entry must carry an offset (nothing written
-- Redis-first): offsets then rise with IDs. The caller checks that first.
-- KEYS[1] the partition's stream. ARGV[1] offset c.
-- Returns {start ID ('0-0': nothing consumed), first offset, last offset, XLEN}, or
-- {'', why} when an entry without an offset was met.
local stream, c = KEYS[1], tonumber(ARGV[1])

local function offset_of(entry)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'o' then
      return tonumber(f[i + 1])
    end
  end
  return nil
end

local function id_parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function id_text(ms, seq)
  return string.format('%.0f-%.0f', ms, seq)
end

-- the offset of the first entry at or after ID x (nil: none; false: one without an offset)
local function first_from(x)
  local got = redis.call('XRANGE', stream, x, '+', 'COUNT', 1)[1]
  if got == nil then
    return nil, nil
  end
  return offset_of(got) or false, got[1]
end

local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
if first == nil then
  return {'0-0', -1, -1, 0}
end
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
local fo, lo = offset_of(first), offset_of(last)
if fo == nil or lo == nil then
  return {'', 'an entry without a Kafka offset at an end of the stream'}
end
if id_parts(last[1]) >= 2^53 then  -- IDs past a double's exact integers: not searched
  return {'', 'entry IDs beyond 2^53 milliseconds'}
end
local n = redis.call('XLEN', stream)
if fo >= c then
  return {'0-0', fo, lo, n}
end
if lo < c then
  return {last[1], fo, lo, n}
end
-- the largest millisecond m whose first entry at or after (m, 0) is below c
local low, high = id_parts(first[1]), id_parts(last[1]) + 1
while high - low > 1 do
  local mid = math.floor((low + high) / 2)
  local o = first_from(id_text(mid, 0))
  if o == false then
    return {'', 'an entry without a Kafka offset'}
  end
  if o < c then low = mid else high = mid end
end
-- the first entry at or above c is in millisecond `low` or is the first one after it
local tail = redis.call('XREVRANGE', stream, string.format('%.0f', low), id_text(low, 0), 'COUNT', 1)[1]
local to = offset_of(tail)
if to == nil then
  return {'', 'an entry without a Kafka offset'}
end
if to < c then
  return {tail[1], fo, lo, n}
end
local _, top = id_parts(tail[1])
if top >= 2^53 then
  return {'', 'sequence numbers beyond 2^53 in one millisecond'}
end
local slow, shigh = 0, top  -- first_from(low, slow) is below c, first_from(low, shigh) is not
while shigh - slow > 1 do
  local mid = math.floor((slow + shigh) / 2)
  local o = first_from(id_text(low, mid))
  if o == false then
    return {'', 'an entry without a Kafka offset'}
  end
  if o < c then slow = mid else shigh = mid end
end
local _, at = first_from(id_text(low, shigh))
local before = redis.call('XREVRANGE', stream, '(' .. at, '-', 'COUNT', 1)[1]
return {before[1], fo, lo, n}
