-- Apply per-recipient statuses (from a poll or a push). A recipient changes at most once per
-- distinct status, never leaves a final status and never moves back (a late WAITING pushed
-- after WAIT4DLVR was polled), so racing polls and pushes emit one event per change.
local order, rcpt, hist, due, events, doubt, open = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local oid, rows, source, at = ARGV[1], cjson.decode(ARGV[2]), ARGV[3], ARGV[4]
local now, ttl, maxlen, intervals = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], cjson.decode(ARGV[8])
local state = redis.call('HGET', order, 'state')
if not state then return {'missing'} end
if state == 'cancelled' or state == 'expired' or state == 'failed' then return {state} end
local batch = redis.call('HGET', order, 'batch_id') or ''
local known, sent = redis.call('HKEYS', rcpt), {}
for _, k in ipairs(known) do sent[k] = true end
local function match(r)  -- the provider's spelling of a number (+33.., 0033..) onto the one we sent
  if sent[r] then return r end
  local digits = string.gsub(r, '^%++', '')
  if string.sub(digits, 1, 2) == '00' then digits = string.sub(digits, 3) end
  for _, k in ipairs(known) do
    if (string.gsub(k, '^%++', '')) == digits then return k end
  end
  return r
end
local RANK = {[''] = -1, SCHEDULED = 0, WAITING = 1, UNKNOWN = 1, SENT = 2, WAIT4DLVR = 3}
local changes = {}
for _, row in ipairs(rows) do
  local r, st, dd, fin = match(row[1]), row[2], row[3], row[4]
  local cur = redis.call('HGET', rcpt, r)
  local prev, was_final = '', 0
  if cur then local c = cjson.decode(cur); prev = c['status']; was_final = c['final'] end
  local forward = fin == 1 or (RANK[st] or 1) >= (RANK[prev] or 1)
  if prev ~= st and was_final ~= 1 and forward then
    redis.call('HSET', rcpt, r, cjson.encode({status=st, delivered_at=dd, changed_at=at, final=fin}))
    redis.call('RPUSH', hist, cjson.encode({at=at, recipient=r, status=st, previous=prev, source=source}))
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'status', 'order_id', oid,
      'recipient', r, 'status', st, 'previous', prev, 'delivered_at', dd, 'source', source,
      'batch_id', batch, 'at', at)
    table.insert(changes, cjson.encode({order_id=oid, recipient=r, status=st, previous=prev,
      delivered_at=dd, source=source, batch_id=batch, at=at}))
  end
end
local polls = tonumber(redis.call('HGET', order, 'polls') or '0')
if source == 'poll' then polls = redis.call('HINCRBY', order, 'polls', 1) end
if state == 'scheduled' then
  for _, row in ipairs(rows) do
    if row[2] ~= 'SCHEDULED' then
      state = 'accepted'
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
  if state ~= 'completed' then
    redis.call('HSET', order, 'state', 'completed', 'final', 1, 'completed_at', at)
    redis.call('ZREM', doubt, oid)  -- a push may settle an order in doubt
    redis.call('ZREM', open, oid)
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'order', 'order_id', oid,
      'state', 'completed', 'batch_id', batch, 'at', at)
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
