-- Move a cursor forward only (concurrent reconciliations never move it back).
if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
