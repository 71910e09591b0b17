--[[
connect_gate.lua -- the address side of the connect gate (the address's shard): the
connect-rate token bucket and the connections per address, then the connection is counted.

presence/store/connections.py runs it between connect.lua's 'check' call (the user side:
blocks, revocations, tokens, per-user limit; a refusal there spends no rate token) and its
'register' call. A connection the register call then refuses stays in the address's set
until a prune finds its hash gone.

KEYS[1]  {S}:addr:<ip>:conns  ZSET  `<uid>|<cid>` -> connect ms, the address's connections
KEYS[2]  {S}:addr:<ip>:rate   HASH  tokens, ts: the address's connect-rate token bucket

ARGV[1] now (ms)   ARGV[2] this connection's member (`<uid>|<cid>`)
ARGV[3] max connections per address (0 = no limit)
ARGV[4] connects per second per address (token refill; 0 = no limit)
ARGV[5] connect burst per address (bucket size)
ARGV[6] prune: '1' when the caller passes the members it found gone (their connection hash
        absent on their user's shard), then those members

An address's set is not cleaned up when a connection ends (the end paths do not know the
address); when it looks full, this script answers {'full', member, ...} with nothing
written, the caller checks those members' connection hashes on their users' shards (one
pipeline per node) and calls again with the gone ones (ARGV[6] = '1'): they are dropped and
the count decides. So the count is exact whenever it matters, at O(limit) then.

Returns {'ok'} (counted, a rate token spent), {'refused', why, retry_after_ms} (why is
connect_rate or too_many_from_address; nothing written), or {'full', members...}.
]]
--!include eventlog
local now = tonumber(ARGV[1])
-- The bucket is read (HMGET fails on a wrong type) and the set type-checked before the
-- first write.
expect_types({KEYS[1], 'zset', KEYS[2], 'hash'})
local rate, burst = tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens = nil
if rate > 0 then
  local bucket = redis.call('HMGET', KEYS[2], 'tokens', 'ts')
  tokens = tonumber(bucket[1] or burst)
  local ts = tonumber(bucket[2] or now)
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  if tokens < 1 then
    return {'refused', 'connect_rate', math.max(0, math.floor((1 - tokens) * 1000 / rate))}
  end
end
local max_addr = tonumber(ARGV[3])
if max_addr > 0 and redis.call('ZCARD', KEYS[1]) >= max_addr then
  if ARGV[6] ~= '1' then
    local out = {'full'}
    for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
      out[#out + 1] = member
    end
    return out
  end
  for i = 7, #ARGV do
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
  if redis.call('ZCARD', KEYS[1]) >= max_addr then
    return {'refused', 'too_many_from_address', 0}
  end
end
if rate > 0 then
  redis.call('HSET', KEYS[2], 'tokens', tokens - 1, 'ts', now)
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 1000)
end
redis.call('ZADD', KEYS[1], now, ARGV[2])
-- Long-lived: the set outlives the address's connections only until pruned.
redis.call('PEXPIRE', KEYS[1], 86400000)
return {'ok'}
