--[[
connect_gate.lua -- the address side of the connect gate (the address's shard): the
connect-rate token bucket and the connections per address, then the connection is counted.

presence/store/connections.py runs it before connect.lua's 'register' call (the user side:
blocks, revocations, tokens, per-user limit, then the registration): two round trips. When
that call refuses, it runs this script again with ARGV[6] = 'release', which gives the
connection's place and rate token back, so a refusal on the user side spends neither. When
this script refuses, connect.lua's 'check' says whether the user side refuses too (its reason
comes first, e.g. 'blocked'; a presented token is spent either way).

KEYS[1]  {S}:addr:<ip>:conns  ZSET  `<uid>|<cid>` -> connect ms, the address's connections
KEYS[2]  {S}:addr:<ip>:rate   HASH  tokens, ts: the address's connect-rate token bucket

ARGV[1] now (ms)   ARGV[2] this connection's member (`<uid>|<cid>`)
ARGV[3] max connections per address (0 = no limit)
ARGV[4] connects per second per address (token refill; 0 = no limit)
ARGV[5] connect burst per address (bucket size)
ARGV[6] '0'; or '1' (prune) when the caller passes the members it found gone (their
        connection hash absent on their user's shard), then those members; or 'release':
        take back what an 'ok' of this connection (ARGV[2]) wrote

An address's set is not cleaned up when a connection ends (the end paths do not know the
address); when it looks full, this script answers {'full', member, ms, member, ms, ...}
(each member with when it passed this gate) with nothing written, the caller checks those
members' connection hashes on their users' shards (one pipeline per node) and calls again
with the gone ones (ARGV[6] = '1'): they are dropped and the count decides. So the count is
exact whenever it matters, at O(limit) then. A member whose hash is absent may also be a
connection between this gate and its registration (the next round trip): the caller does
not pass members that passed the gate less than a grace ago (connections.py).

Returns {'ok'} (counted, a rate token spent), {'refused', why, retry_after_ms} (why is
connect_rate or too_many_from_address; nothing written), or {'full', members...}; 'release'
returns {'released'} (the member removed; the token back in the bucket, which is deleted when
that fills it: a full bucket and none are the same).
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
end
if ARGV[6] == 'release' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  if rate > 0 then
    tokens = math.min(burst, tokens + 1)
    if tokens >= burst then
      redis.call('DEL', KEYS[2])
    else
      redis.call('HSET', KEYS[2], 'tokens', tokens, 'ts', now)
      redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 1000)
    end
  end
  return {'released'}
end
if rate > 0 and tokens < 1 then
  return {'refused', 'connect_rate', math.max(0, math.floor((1 - tokens) * 1000 / rate))}
end
local max_addr = tonumber(ARGV[3])
if max_addr > 0 and redis.call('ZCARD', KEYS[1]) >= max_addr then
  if ARGV[6] ~= '1' then
    local out = {'full'}
    for _, item in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')) do
      out[#out + 1] = item
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
