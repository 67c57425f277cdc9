-- Take up to N due orders and lease them, so a crashed poll is retried after the lease.
local due, now, n, lease = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGE', due, '-inf', now, 'BYSCORE', 'LIMIT', 0, n)
for _, id in ipairs(ids) do redis.call('ZADD', due, tonumber(now) + lease, id) end
return ids
