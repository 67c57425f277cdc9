-- Apply per-recipient statuses (from a poll or a push). A recipient changes at most once per
-- distinct status, never leaves a final status and never moves back (a late WAITING pushed
-- after WAIT4DLVR was polled), so racing polls and pushes emit one event per change.
-- Bounded whatever is pushed: a push naming a recipient the order does not have adds none
-- (before acceptance initialised them, at most as many as the send had: recipient_count),
-- and each recipient keeps only its newest ARGV[9] history entries (``n`` in its record
-- counts them), trimmed here, with the append. Applied to an order they may complete (or
-- have completed); any other state is returned as it is, nothing written.
local order, rcpt, hist, due, events, doubt, open = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local oid, rows, source, at = ARGV[1], cjson.decode(ARGV[2]), ARGV[3], ARGV[4]
local now, ttl, maxlen, intervals = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], cjson.decode(ARGV[8])
local keep = tonumber(ARGV[9])
local state = redis.call('HGET', order, 'state')
if not state then return {'missing'} end
if state ~= STATE.COMPLETED and not move('complete', state) then return {state} end
local known, sent = redis.call('HKEYS', rcpt), {}
for _, k in ipairs(known) do sent[k] = true end
local function match(r)  -- the provider's spelling of a number (+33.., 0033..) onto the one we sent
  if sent[r] then return r end
  local digits = string.gsub(r, '^%++', '')
  if string.sub(digits, 1, 2) == '00' then digits = string.sub(digits, 3) end
  for _, k in ipairs(known) do
    if (string.gsub(k, '^%++', '')) == digits then return k end
  end
  return nil
end
local room = math.huge  -- recipients this call may add: a poll is the provider's own list
if source == 'push' then room = tonumber(redis.call('HGET', order, 'recipient_count') or '0') - #known end
local applied = {}
for _, row in ipairs(rows) do
  local r = match(row[1])
  if not r and room > 0 then
    r, room = row[1], room - 1
    sent[r] = true
    table.insert(known, r)
  end
  if r then row[1] = r; table.insert(applied, row) end
end
if #applied == 0 and #rows > 0 then return {'unknown_recipient'} end  -- nothing written
local function drop_oldest(r)  -- the first history entry of recipient r
  local needle, start = '"recipient":' .. cjson.encode(r), 0
  while true do
    local page = redis.call('LRANGE', hist, start, start + 99)
    if #page == 0 then return end
    for i, entry in ipairs(page) do
      if string.find(entry, needle, 1, true) then
        redis.call('LSET', hist, start + i - 1, '')
        redis.call('LREM', hist, 1, '')
        return
      end
    end
    start = start + #page
  end
end
local batch = redis.call('HGET', order, 'batch_id') or ''
local RANK = {[''] = -1, SCHEDULED = 0, WAITING = 1, UNKNOWN = 1, SENT = 2, WAIT4DLVR = 3}
local changes = {}
for _, row in ipairs(applied) do
  local r, st, dd, fin = row[1], row[2], row[3], row[4]
  local cur = redis.call('HGET', rcpt, r)
  local prev, was_final, n = '', 0, 0
  if cur then local c = cjson.decode(cur); prev = c['status']; was_final = c['final']; n = c['n'] or 0 end
  local forward = fin == 1 or (RANK[st] or 1) >= (RANK[prev] or 1)
  if prev ~= st and was_final ~= 1 and forward then
    redis.call('RPUSH', hist, cjson.encode({at=at, recipient=r, status=st, previous=prev, source=source}))
    n = n + 1
    if n > keep then drop_oldest(r); n = keep end
    redis.call('HSET', rcpt, r, cjson.encode({status=st, delivered_at=dd, changed_at=at, final=fin, n=n}))
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'status', 'order_id', oid,
      'recipient', r, 'status', st, 'previous', prev, 'delivered_at', dd, 'source', source,
      'batch_id', batch, 'at', at)
    table.insert(changes, cjson.encode({order_id=oid, recipient=r, status=st, previous=prev,
      delivered_at=dd, source=source, batch_id=batch, at=at}))
  end
end
local polls = tonumber(redis.call('HGET', order, 'polls') or '0')
if source == 'poll' then polls = redis.call('HINCRBY', order, 'polls', 1) end
local on_its_way = move('sent', state)
if on_its_way then
  for _, row in ipairs(applied) do
    if row[2] ~= 'SCHEDULED' then
      state = on_its_way
      redis.call('HSET', order, 'state', state)
      break
    end
  end
end
local final = true
for _, v in ipairs(redis.call('HVALS', rcpt)) do
  if cjson.decode(v)['final'] ~= 1 then final = false break end
end
if final and redis.call('HLEN', rcpt) > 0 then
  local completed = move('complete', state)
  if completed then
    redis.call('HSET', order, 'state', completed, 'final', 1, 'completed_at', at)
    redis.call('ZREM', doubt, oid)  -- a push may settle an order in doubt
    redis.call('ZREM', open, oid)
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'order', 'order_id', oid,
      'state', completed, 'batch_id', batch, 'at', at)
  end
  redis.call('ZREM', due, oid)
elseif source == 'poll' then
  local i = math.min(math.max(polls, 1), #intervals)
  redis.call('ZADD', due, now + intervals[i], oid)
end
local sched = tonumber(redis.call('HGET', order, 'scheduled_epoch') or '0')
if sched > now then ttl = ttl + math.ceil(sched - now) end  -- kept until its time plus the TTL
for _, k in ipairs({order, rcpt, hist}) do redis.call('EXPIRE', k, ttl) end
return changes
