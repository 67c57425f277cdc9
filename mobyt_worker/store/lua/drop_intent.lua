-- A bulk request's intent, once its chunks are recorded: read from P:batch:{id} from now on.
-- Only a record still 'queued' goes (an order of the same id that was really sent stays).
if move('batched', redis.call('HGET', KEYS[1], 'state')) then redis.call('DEL', KEYS[1]) end
return redis.call('ZREM', KEYS[2], ARGV[1])
