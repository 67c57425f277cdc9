-- Write the intent unless the order is already past 'queued' (claimed, sent, refused...):
-- a producer that re-submits a known order id must not move it back. Returns the state.
local order, orders, intents = KEYS[1], KEYS[2], KEYS[3]
local oid, now, due, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HGET', order, 'state')
local queued = move('intent', state)
if not queued then return state end
redis.call('HSET', order, 'state', queued, unpack(cjson.decode(ARGV[5])))
redis.call('EXPIRE', order, ttl)
redis.call('ZADD', orders, now, oid)
redis.call('ZADD', intents, due, oid)
return queued
