-- Claim the right to attempt a send. Returns {verdict, state}:
--   send     - no attempt may have reached the provider: go ahead (the order is now in
--              doubt, and due at ARGV[7], until this attempt's outcome is recorded)
--   resolve  - an earlier attempt may have reached the provider (``doubt``): ask for
--              evidence first, whatever the state says (sending, unsent or in_doubt)
--   busy     - another worker holds the lock right now
--   done     - the order is past sending (accepted, failed, ...), or in a state the
--              transition table lets no claim take: do nothing
--   optout   - a recipient in ARGV[9..] is in the opt-out hash KEYS[7] (sent STOP):
--              nothing was written
-- A missing record and a producer's ``queued`` intent are the same: the record is created
-- (an intent's created_at kept, ``claimed_at`` stamped: a send's retries are timed from
-- it) and the intent leaves P:intents. The due-set entry is
-- written before any HTTP call, so even a SIGKILL mid-send leaves the order where the
-- poller settles it. Re-running with the same token (a client-side retry after a lost
-- reply) gives "send" again.
-- A scheduled send (ARGV[8], its epoch, not '') is indexed, as it is claimed, in each
-- recipient's P:scheduled:{number} (KEYS[8..], in the order of ARGV[9..]), and each index
-- lives until its latest order's time: a STOP stored after this claim finds the order
-- there, one stored before it refused the claim.
-- An attempt may be in flight until its lock runs out: ``ambiguous_at`` (and the order's
-- score in P:doubt:open, KEYS[6]) says so until the attempt's failure restamps it.
local order, lock, orders, due, intents, open, optouts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local token, lock_ms, now, ttl, oid, due_at = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[6], ARGV[7]
local lock_end = now + tonumber(lock_ms) / 1000
for i = 9, #ARGV do
  if redis.call('HEXISTS', optouts, ARGV[i]) == 1 then return {'optout', ''} end
end
local holder = redis.call('GET', lock)
if holder and holder ~= token then return {'busy', redis.call('HGET', order, 'state') or ''} end
local state = redis.call('HGET', order, 'state')
local doubt = redis.call('HGET', order, 'doubt') == '1'
if state == STATE.SENDING and redis.call('HGET', order, 'attempt_token') == token then
  redis.call('SET', lock, token, 'PX', lock_ms)
  redis.call('HSET', order, 'ambiguous_at', lock_end)
  redis.call('ZADD', open, lock_end, oid)
  return {'send', state}
end
local sending = move('claim', state)
if sending and not doubt then
  if not state or state == STATE.QUEUED then
    local created = redis.call('HGET', order, 'created_at')
    redis.call('HSET', order, unpack(cjson.decode(ARGV[5])))
    if created then redis.call('HSET', order, 'created_at', created) end
    redis.call('HSET', order, 'attempts', 0, 'claimed_at', now)
    redis.call('EXPIRE', order, ttl)
    redis.call('ZADD', orders, now, oid)
    redis.call('ZREM', intents, oid)
  end
  redis.call('HSET', order, 'state', sending, 'attempt_token', token, 'doubt', 1, 'doubt_since', now,
    'ambiguous_at', lock_end)
  redis.call('HINCRBY', order, 'attempts', 1)
  redis.call('SET', lock, token, 'PX', lock_ms)
  redis.call('ZADD', due, due_at, oid)
  redis.call('ZADD', open, lock_end, oid)
  if ARGV[8] ~= '' then
    for i = 8, #KEYS do
      redis.call('ZADD', KEYS[i], ARGV[8], oid)
      local latest = redis.call('ZRANGE', KEYS[i], -1, -1, 'WITHSCORES')[2]
      redis.call('EXPIREAT', KEYS[i], string.format('%d', math.floor(tonumber(latest)) + 61))
    end
  end
  return {'send', sending}
end
if UNSETTLED[state] then
  redis.call('SET', lock, token, 'PX', lock_ms)
  return {'resolve', state}
end
return {'done', state or ''}
