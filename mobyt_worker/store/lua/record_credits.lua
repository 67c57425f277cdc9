-- KEYS: credits hash, history list, events stream.
-- ARGV: balances JSON [[field, value JSON, available], ...], history entry JSON, history
--       length, threshold, maxlen, at. Returns the fields that fell under the threshold.
local credits, history, events = KEYS[1], KEYS[2], KEYS[3]
local balances, threshold, maxlen, at = cjson.decode(ARGV[1]), tonumber(ARGV[4]), ARGV[5], ARGV[6]
local fallen = {}
for _, b in ipairs(balances) do
  local field, value, available = b[1], b[2], tonumber(b[3])
  local old = redis.call('HGET', credits, field)
  local previous = nil
  if old then previous = tonumber(cjson.decode(old)['available']) end
  redis.call('HSET', credits, field, value)
  if available < threshold and (previous == nil or previous >= threshold) then
    local row = cjson.decode(value)
    redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', 'type', 'credits_low',
      'message_type', row['message_type'], 'nation', row['nation'], 'available', available,
      'previous', previous and tostring(previous) or '', 'threshold', threshold, 'at', at)
    table.insert(fallen, field)
  end
end
redis.call('LPUSH', history, ARGV[2])
redis.call('LTRIM', history, 0, tonumber(ARGV[3]) - 1)
return fallen
