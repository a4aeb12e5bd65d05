-- Hands one consumer up to `budget` entries, fairly (crate::intake::lanes explains the
-- layout). Atomic, so several supervisors share the queues' rotations and no entry is
-- moved twice or lost between a lane and the execution stream.
--
-- ARGV: stream, group, consumer, budget,
--       nqueues, queue base key * nqueues   (in priority order: the first is served first)
--       nskip, lane key * nskip              (lanes not to take from this time)
-- Returns {entries, wake, healed}:
--   entries: [[id, [field, value, ...]], ...] as XREADGROUP gives them, pending on the
--            consumer;
--   wake:    when entries is empty, [key, last id, ...] of the stream and every bell, for
--            an XREAD BLOCK that wakes on anything new; else empty;
--   healed:  1 when the stream or group was missing and was created (from id 0).
local stream, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local budget = tonumber(ARGV[4])
local at = 5
local queues = {}
for _ = 1, tonumber(ARGV[at]) do
  at = at + 1
  queues[#queues + 1] = ARGV[at]
end
at = at + 1
local skip = {}
for _ = 1, tonumber(ARGV[at]) do
  at = at + 1
  skip[ARGV[at]] = true
end

local healed = 0
local function read(count)
  local r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'NOGROUP', 1, true) then
      return redis.error_reply(r.err)
    end
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    healed = 1
    r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
  end
  if not r then
    return {}
  end
  return r[1][2]
end

-- 1. Entries added to the stream directly come first (they were never queued).
local out = read(budget)
if out.err then
  return out
end
local left = budget - #out

-- 2. Move entries from the lanes, queue by queue, organization by organization in turn.
local moved = 0
for _, base in ipairs(queues) do
  if left <= 0 then
    break
  end
  local orgs_key = base .. 'orgs'
  local orgs = redis.call('ZRANGE', orgs_key, 0, -1)
  local n = #orgs
  if n > 0 then
    local turn = redis.call('INCR', base .. 'turn')
    local live = {}
    for k = 0, n - 1 do
      local org = orgs[((turn + k) % n) + 1]
      if not skip[base .. 'org:' .. org] then
        live[#live + 1] = org
      end
    end
    while left > 0 and #live > 0 do
      local share = math.max(1, math.floor(left / #live))
      local still = {}
      for _, org in ipairs(live) do
        if left <= 0 then
          break
        end
        local lane = base .. 'org:' .. org
        local want = math.min(share, left)
        local got = redis.call('XRANGE', lane, '-', '+', 'COUNT', want)
        for _, e in ipairs(got) do
          local fields = e[2]
          if #fields > 2000 then
            -- Beyond what unpack takes; the parser dead-letters it.
            fields = {'invalid', 'the entry had more than 1000 fields'}
          end
          fields[#fields + 1] = 'enqueued'
          fields[#fields + 1] = e[1]
          redis.call('XADD', stream, '*', unpack(fields))
          redis.call('XDEL', lane, e[1])
        end
        moved = moved + #got
        left = left - #got
        if #got < want then
          -- The lane is empty: the organization has nothing waiting in this queue.
          redis.call('ZREM', orgs_key, org)
          redis.call('DEL', lane)
        else
          still[#still + 1] = org
        end
      end
      live = still
    end
  end
end

-- 3. Deliver what was moved to this consumer: nothing else is new in the stream now.
if moved > 0 then
  local r = read(moved)
  if r.err then
    return r
  end
  for _, e in ipairs(r) do
    out[#out + 1] = e
  end
end

local wake = {}
if #out == 0 then
  local info = redis.call('XINFO', 'STREAM', stream)
  for k = 1, #info, 2 do
    if info[k] == 'last-generated-id' then
      wake[#wake + 1] = stream
      wake[#wake + 1] = info[k + 1]
    end
  end
  for _, base in ipairs(queues) do
    local bell = base .. 'bell'
    local last = redis.call('XREVRANGE', bell, '+', '-', 'COUNT', 1)
    wake[#wake + 1] = bell
    wake[#wake + 1] = last[1] and last[1][1] or '0-0'
  end
end
return {out, wake, healed}
