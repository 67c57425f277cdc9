-- KEYS[1]: the TAT key (seconds, Redis server time, 6 decimals: a double keeps them exact).
-- ARGV: emission interval (s), burst tolerance (s), cost, the longest wait the caller accepts (s).
-- Returns the wait before the request may go: 0 = at once. A wait within the longest
-- accepted one reserves the slot (the caller sleeps, then goes without asking again); a
-- longer one reserves nothing and comes back negative. A cost above the burst is admitted
-- on credit: the next requests wait for it. The key expires 1 s after the TAT it holds.
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local interval, burst, cost, max_wait = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = math.max(0, tat - burst - now)
if wait > max_wait then return string.format('%.6f', -math.max(wait, 0.000001)) end
local new_tat = tat + interval * cost
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil((new_tat - now + 1) * 1000))
return string.format('%.6f', wait)
