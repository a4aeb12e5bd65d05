-- Hands one consumer up to `budget` entries, fairly (crate::intake::lanes explains the
-- layout). Atomic, so several supervisors share the queues' rotations and no entry is
-- moved twice or lost between a lane and the execution stream.
--
-- ARGV: stream, group, consumer, budget,
--       nqueues, queue base key * nqueues   (in priority order: the first is served first)
--       nskip, lane key * nskip              (lanes not to take from this time)
--       limits, permits, running base, heartbeat base, permits bell
--                                            (concurrency limits: crate::intake::limits)
--       wake                                 ('1': the caller blocks when nothing came,
--                                            so return the ids to block on)
-- Returns {ready, wake, healed}:
--   ready:   how many entries the stream now has for the group's next read: the ones
--            that were there undelivered (added directly, or moved by a call whose read
--            has not run yet) plus the ones moved now, at most `budget`. The caller
--            delivers them with its own XREADGROUP COUNT budget, sent in the same
--            pipeline right after this script: a client's read costs Redis less than half
--            of what this script's read cost (docs/architecture.md, "Costs");
--   wake:    when ready is 0 and wake is '1', [key, last id, ...] of the stream and
--            every bell, for an XREAD BLOCK that wakes on anything new; else empty;
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
local limits_key, permits_key = ARGV[at + 1], ARGV[at + 2]
local running_base, heartbeat_base, permits_bell = ARGV[at + 3], ARGV[at + 4], ARGV[at + 5]
local want_wake = ARGV[at + 6] == '1'

local healed = 0

-- 1. Entries of the stream the group has not been given yet (added directly by clients
-- that predate queues, or by tests) go first: the caller's read delivers them before
-- anything moved now, so only the rest of the budget is moved.
local function undelivered()
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if type(groups) == 'table' and groups.err then
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    healed = 1
    return 0
  end
  for _, g in ipairs(groups) do
    local info = {}
    for k = 1, #g - 1, 2 do
      info[g[k]] = g[k + 1]
    end
    if info['name'] == group then
      local lag = info['lag']
      if type(lag) == 'number' then
        return math.min(lag, budget)
      end
      -- Redis cannot always tell (after deletions): count them, up to the budget.
      local last = info['last-delivered-id']
      return #redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', budget)
    end
  end
  redis.call('XGROUP', 'CREATE', stream, group, '0')
  healed = 1
  return math.min(redis.call('XLEN', stream), budget)
end

local ready = undelivered()
local left = budget - ready

-- 2. Move entries from the lanes, queue by queue, organization by organization in turn.
local moved = 0

-- Copies one lane entry to the stream; returns its new stream id. The caller removes
-- it from the lane.
local function copy(e)
  local fields = e[2]
  fields[#fields + 1] = 'enqueued'
  fields[#fields + 1] = e[1]
  return redis.call('XADD', stream, '*', unpack(fields))
end

-- Takes up to `want` entries of a lane, oldest first; returns how many, and whether
-- the lane may have more (true) or is empty (false). Without limits, that is all.
-- What it took is the lane's head: a lane it emptied is deleted by the caller, else
-- one XTRIM (and an XDEL of its last entry) removes the head, whatever its length.
local function take_plain(lane, want)
  local got = redis.call('XRANGE', lane, '-', '+', 'COUNT', want)
  for _, e in ipairs(got) do
    if #e[2] > 2000 then
      -- Beyond what unpack takes; the parser dead-letters it.
      e[2] = {'invalid', 'the entry had more than 1000 fields'}
    end
    copy(e)
  end
  local more = #got == want
  if more then
    local last = got[#got][1]
    redis.call('XTRIM', lane, 'MINID', last)
    redis.call('XDEL', lane, last)
  end
  return #got, more
end

-- Concurrency limits: none set, one HLEN and nothing else.
local limited = redis.call('HLEN', limits_key) > 0
local take_from = take_plain
if limited then
  local WINDOW = 200 -- entries of one lane looked at per call, taken or not
  local field = {}   -- limits hash field -> value (false: none), this call
  local maximum = {} -- limit key -> N
  local count = {}   -- limit key -> permits held, this call
  local alive = {}   -- consumer -> its heartbeat exists
  local cursor, scanned, held_back = {}, {}, {}

  local function limit_field(f)
    local v = field[f]
    if v == nil then
      v = redis.call('HGET', limits_key, f)
      field[f] = v
    end
    return v
  end

  -- The limit keys an entry counts against, from its raw `org` and `workflow` fields,
  -- resolved as the supervisor resolves them: an id names the workflow wherever it
  -- is (its own organization counts); a name is looked up in the entry's organization.
  local function limits_of(fields)
    local org, wf = '', ''
    for k = 1, #fields - 1, 2 do
      if fields[k] == 'org' then
        org = fields[k + 1]
      elseif fields[k] == 'workflow' then
        wf = fields[k + 1]
      end
    end
    local out = {}
    local wf_key
    local by_id = wf ~= '' and not string.find(wf, '%D')
    if by_id then
      wf_key = 'wf:#' .. (string.gsub(wf, '^0+(%d)', '%1'))
      org = ''
    else
      local alias = limit_field('wf:' .. #org .. ':' .. org .. ':' .. wf)
      if alias then
        wf_key = 'wf:' .. alias
      end
    end
    if wf_key then
      local v = limit_field(wf_key)
      if v then
        local n, of = string.match(v, '^(%d+) ?(.*)$')
        n = tonumber(n) or 0
        if n > 0 then
          maximum[wf_key] = n
          out[#out + 1] = wf_key
        end
        if by_id then
          org = of or ''
        end
      end
    end
    if org ~= '' then
      local n = tonumber(limit_field('org:' .. org) or '0') or 0
      if n > 0 then
        maximum['org:' .. org] = n
        out[#out + 1] = 'org:' .. org
      end
    end
    return out
  end

  local function owner_alive(c)
    local a = alive[c]
    if a == nil then
      a = redis.call('EXISTS', heartbeat_base .. c) == 1
      alive[c] = a
    end
    return a
  end

  -- Permits held under `key`. A permit counts while its owner lives, or while its
  -- entry is still pending (whoever takes the entry over takes the permit with it);
  -- otherwise it is given back here. Only looked at closely when the set is full.
  local function held(key)
    local c = count[key]
    if c then
      return c
    end
    local set = running_base .. key
    c = redis.call('SCARD', set)
    if c >= maximum[key] then
      c = 0
      for _, id in ipairs(redis.call('SMEMBERS', set)) do
        local raw = redis.call('HGET', permits_key, id)
        local permit = raw and cjson.decode(raw)
        if permit and (owner_alive(permit[1])
            or #redis.call('XPENDING', stream, group, id, id, 1) > 0) then
          c = c + 1
        elseif permit then
          for k = 2, #permit do
            redis.call('SREM', running_base .. permit[k], id)
          end
          redis.call('HDEL', permits_key, id)
        else
          redis.call('SREM', set, id)
        end
      end
    end
    count[key] = c
    return c
  end

  take_from = function(lane, want)
    local took = 0
    while took < want do
      local room = WINDOW - (scanned[lane] or 0)
      if room <= 0 then
        return took, false
      end
      local n = math.min(room, want - took)
      local from = cursor[lane] and ('(' .. cursor[lane]) or '-'
      local got = redis.call('XRANGE', lane, from, '+', 'COUNT', n)
      for _, e in ipairs(got) do
        scanned[lane] = (scanned[lane] or 0) + 1
        cursor[lane] = e[1]
        local keys = {}
        if #e[2] > 2000 then
          e[2] = {'invalid', 'the entry had more than 1000 fields'}
        else
          keys = limits_of(e[2])
        end
        local fits = true
        for _, k in ipairs(keys) do
          if held(k) >= maximum[k] then
            fits = false
            break
          end
        end
        if fits then
          local id = copy(e)
          redis.call('XDEL', lane, e[1])
          took = took + 1
          if #keys > 0 then
            local permit = {consumer}
            for _, k in ipairs(keys) do
              redis.call('SADD', running_base .. k, id)
              count[k] = count[k] + 1
              permit[#permit + 1] = k
            end
            redis.call('HSET', permits_key, id, cjson.encode(permit))
          end
        else
          -- Over a limit: it keeps its place in the lane, later ones may still go.
          held_back[lane] = true
        end
      end
      if #got < n then
        -- Nothing after the cursor: the lane is empty unless something was held back.
        if held_back[lane] then
          return took, false
        end
        return took, nil
      end
    end
    return took, true
  end
end

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
        -- more: true = the lane has more, false = it has but not for this call,
        -- nil = it is empty.
        local took, more = take_from(lane, want)
        moved = moved + took
        left = left - took
        if more == nil or (more == false and not limited) then
          -- The lane is empty: the organization has nothing waiting in this queue.
          redis.call('ZREM', orgs_key, org)
          redis.call('DEL', lane)
        elseif more then
          still[#still + 1] = org
        end
      end
      live = still
    end
  end
end

ready = ready + moved

local wake = {}
if ready == 0 and want_wake then
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
  if limited then
    -- Work held back by a limit goes as soon as a permit is given back.
    local last = redis.call('XREVRANGE', permits_bell, '+', '-', 'COUNT', 1)
    wake[#wake + 1] = permits_bell
    wake[#wake + 1] = last[1] and last[1][1] or '0-0'
  end
end
return {ready, wake, healed}
