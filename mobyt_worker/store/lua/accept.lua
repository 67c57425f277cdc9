-- Record the provider's acceptance once (event ARGV[2]: 'accept', or 'schedule' for a later
-- time); initialise each recipient; schedule the first poll. Returns the state the order is
-- in: the new one, or the one the table refuses to move (nothing written, no event).
-- Also releases the send lock if ARGV[9] (a token, or '') still holds it: one round trip.
local order, rcpt, due, events, lock, doubt, open = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local oid, event, fields, recipients = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), cjson.decode(ARGV[4])
local first_due, ttl, maxlen, at = ARGV[5], tonumber(ARGV[6]), ARGV[7], ARGV[8]
if ARGV[9] ~= '' and redis.call('GET', lock) == ARGV[9] then redis.call('DEL', lock) end
local current = redis.call('HGET', order, 'state')
local state = move(event, current)
if not state then return current or '' end
redis.call('HSET', order, 'state', state, 'doubt', 0, unpack(fields))
redis.call('HDEL', order, 'error', 'error_code')
redis.call('ZREM', doubt, oid)
redis.call('ZREM', open, oid)
for _, r in ipairs(recipients) do
  redis.call('HSETNX', rcpt, r, cjson.encode({status='', delivered_at='', changed_at='', final=0}))
end
redis.call('EXPIRE', order, ttl)
redis.call('EXPIRE', rcpt, ttl)
redis.call('ZADD', due, first_due, oid)
redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'order', 'order_id', oid, 'state', state,
  'batch_id', redis.call('HGET', order, 'batch_id') or '', 'at', at)
return state
