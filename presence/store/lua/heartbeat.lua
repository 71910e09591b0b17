--[[
heartbeat.lua -- refresh one shard's section of a heartbeat batch (presence/store/
connections.py splits a batch by shard: the users' part on each user's shard, the rooms'
part on each room's shard; one pipeline per node carries every section of that node).

KEYS[1]  {S}:conns            ZSET  cid -> expiry ms
KEYS[2]  {S}:users            ZSET  uid -> latest expiry ms
KEYS[3]  {S}:stats            HASH  live counters
KEYS[4]  {S}:sweeping         ZSET  cid -> claim deadline ms (claimed by a sweep)
KEYS[5]  {S}:sweeping:exp     HASH  cid -> expiry ms at claim time
KEYS[6]  {S}:active           ZSET  uid -> last activity (Unix s)
then, for each connection i of the section (the shard's users'), 4 keys:
         {S}:conn:<cid>  {S}:conn:<cid>:rooms  {S}:user:<uid>  {S}:user:<uid>:conns
then, for each room membership j of the section (the shard's rooms'), 2 keys:
         {S}:room:<room>  {S}:room:<room>:user:<uid>

ARGV[1] now (ms)   ARGV[2] ttl (ms)   ARGV[3] key grace (ms)
ARGV[4] ncounters, then ncounters pairs (field, increment) added to the stats hash
then nactive, then nactive pairs (uid, Unix s): `activity` frames the batch carries
(throttled per user by the writer; ZADD GT, so a late batch never moves a time back)
then nconns, then per connection: cid
then nmembers, then per membership: cid, uid

A membership is refreshed only while the connection is in the room's user set (SISMEMBER):
keyed by connection id, so it is idempotent, and an end whose room half ran (the cid left
the set) is never undone by a late batch. It cannot see the user half's answer (another
shard): a connection that ended but whose room half never ran (a process killed between the
halves) is still refreshed by a batch that carried it, until its socket closes on the 0
below; repair_rooms.lua removes it once it lapses.

Returns one integer per connection of the section, in order (no membership answers): 1 refreshed, 0 its session ended (end.lua
left its tombstone, a hash with only `ended`: the caller closes the socket with 4408),
2 unknown and never ended here: the store lost it (a failover took the latest writes with
it, or Redis restarted empty) while its socket stayed open; the caller re-asserts it
(reassert.lua), the socket is not closed.

A connection a sweep has claimed but not yet ended is rescued: it returns to the expiry
index and leaves the claim set, and the sweep's end script then leaves it alone.
]]
local now = tonumber(ARGV[1])
local exp = now + tonumber(ARGV[2])
local keyexp = exp + tonumber(ARGV[3])

local a = 5
local ncounters = tonumber(ARGV[4])
for _ = 1, ncounters do
  redis.call('HINCRBY', KEYS[3], ARGV[a], tonumber(ARGV[a + 1]))
  a = a + 2
end

local nactive = tonumber(ARGV[a])
a = a + 1
for _ = 1, nactive do
  redis.call('ZADD', KEYS[6], 'GT', tonumber(ARGV[a + 1]), ARGV[a])
  a = a + 2
end

local nconns = tonumber(ARGV[a])
a = a + 1
local k = 7
local result = {}
local refreshed = 0
for i = 1, nconns do
  local cid = ARGV[a]
  a = a + 1
  local conn, rooms, user, uconns = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local uid = redis.call('HGET', conn, 'uid')
  if uid then
    redis.call('HSET', conn, 'exp', exp)
    redis.call('PEXPIREAT', conn, keyexp)
    redis.call('PEXPIREAT', rooms, keyexp)
    redis.call('PEXPIREAT', user, keyexp)
    redis.call('ZADD', KEYS[1], exp, cid)
    redis.call('ZADD', KEYS[2], 'GT', exp, uid)
    redis.call('ZADD', uconns, exp, cid)
    redis.call('PEXPIREAT', uconns, keyexp)
    if redis.call('ZREM', KEYS[4], cid) == 1 then
      redis.call('HDEL', KEYS[5], cid)
    end
    result[i] = 1
    refreshed = refreshed + 1
  elseif redis.call('HEXISTS', conn, 'ended') == 1 then
    result[i] = 0
  else
    result[i] = 2
  end
  k = k + 4
end

local nmembers = tonumber(ARGV[a])
a = a + 1
for _ = 1, nmembers do
  local room, uroom = KEYS[k], KEYS[k + 1]
  if redis.call('SISMEMBER', uroom, ARGV[a]) == 1 then
    redis.call('ZADD', room, 'GT', exp, ARGV[a + 1])
    redis.call('PEXPIREAT', room, keyexp)
    redis.call('PEXPIREAT', uroom, keyexp)
  end
  a = a + 2
  k = k + 2
end

if refreshed > 0 then
  redis.call('HINCRBY', KEYS[3], 'heartbeats', refreshed)
  local live_conns = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
  if live_conns > tonumber(redis.call('HGET', KEYS[3], 'peak_conns') or '0') then
    redis.call('HSET', KEYS[3], 'peak_conns', live_conns)
  end
  local live_users = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
  if live_users > tonumber(redis.call('HGET', KEYS[3], 'peak_users') or '0') then
    redis.call('HSET', KEYS[3], 'peak_users', live_users)
  end
end
return result
