"""Everything kept in Redis: the connection, the key names, the Lua scripts, and one
module per record (orders, intents, inbox, opt-outs, credits, rate limit, replicas)."""
