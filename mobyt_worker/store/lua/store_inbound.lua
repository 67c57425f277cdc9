-- KEYS: msg, ids, inbound, hwm, optout, events, optout pending.
-- ARGV: id, flattened hash fields (JSON), ttl, maxlen, stop number ('' = not a STOP, or a
--       sender that is no phone number), opt-out value, at, message key prefix, how many
--       expired ids to trim, when to look again at a new opt-out not yet applied.
-- Returns 0 if this id was already stored, 1 if the message was new, 2 if it was new and
-- added an opt-out (which then waits in the pending zset until applied).
local msg, ids, inbound, hwm, optout, events, pending = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local id, fields, ttl, maxlen = tonumber(ARGV[1]), cjson.decode(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local stop_number, optout_value, at, msg_prefix = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if redis.call('EXISTS', msg) == 1 or redis.call('ZSCORE', ids, ARGV[1]) then return 0 end
redis.call('HSET', msg, unpack(fields))
redis.call('EXPIRE', msg, ttl)
for _, old in ipairs(redis.call('ZRANGE', ids, 0, tonumber(ARGV[9]) - 1)) do
  if redis.call('EXISTS', msg_prefix .. old) == 1 then break end
  redis.call('ZREM', ids, old)
end
redis.call('ZADD', ids, id, ARGV[1])
redis.call('EXPIRE', ids, ttl)
redis.call('XADD', inbound, 'MAXLEN', '~', maxlen, '*', 'type', 'inbound', unpack(fields))
if id > tonumber(redis.call('GET', hwm) or '0') then redis.call('SET', hwm, ARGV[1]) end
if stop_number ~= '' and redis.call('HSETNX', optout, stop_number, optout_value) == 1 then
  redis.call('ZADD', pending, ARGV[10], stop_number)
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'optout', 'number', stop_number,
    'message_id', ARGV[1], 'at', at)
  return 2
end
return 1
