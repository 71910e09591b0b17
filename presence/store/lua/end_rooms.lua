--[[
end_rooms.lua -- the room half of ending connections (one room shard's part): take each
ended connection out of its rooms on this shard and log the leaves, once.

end.lua (the user half, on the user's shard) ended the connections first; presence/store/
connections.py then runs this on each room shard the batch touches, every shard of one node
in one pipeline. A process killed between the halves leaves room entries that lapse:
repair_rooms.lua (the sweep) removes them and logs their leaves.

KEYS[1]  {S}:events           STREAM the room shard's event log (lib/eventlog.lua)
KEYS[2]  {S}:held             ZSET  held leaves -> due ms (`<uid>|<room>` here)
KEYS[3]  {S}:held:why         HASH  held leave -> reason; `<uid>|<room>\nname` -> username
then, per membership, 2 keys: {S}:room:<room>  {S}:room:<room>:user:<uid>

ARGV[1] now (ms)   ARGV[2] reason (why of the leaves)   ARGV[3] event log max length
ARGV[4] leave grace (ms; 0 = leave at once; as end.lua's ARGV[6])
ARGV[5] n, then per membership: cid, uid, room, username

Idempotent by connection id: SREM of the cid from the room-user set is what decides; a cid
not there (a second run, a room half that ran already) changes and logs nothing.
Where the user's last connection in the room went: with a grace, the leave is held (the
user stays a member with score = due; release_held.lua logs it when due, unless a rejoin took
it back); without, ZREM of the user logs the `leave` (r, u, n, s 'offline', why, v = '1'
when the room is left empty) and drops a hold of an earlier close.

Returns one integer per membership: 1 left (logged), 2 held, 0 nothing changed.
]]
--!include eventlog
local now, reason, grace = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[4])
local due = now + grace
local n = tonumber(ARGV[5])
local spec = {KEYS[2], 'zset', KEYS[3], 'hash'}
for i = 0, n - 1 do
  spec[#spec + 1] = KEYS[4 + 2 * i]
  spec[#spec + 1] = 'zset'
  spec[#spec + 1] = KEYS[5 + 2 * i]
  spec[#spec + 1] = 'set'
end
expect_types(spec)
log_open(KEYS[1], ARGV[3], now)
local out = {}
for i = 0, n - 1 do
  local room, uroom = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
  local a = 6 + 4 * i
  local cid, uid, name, username = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local member = uid .. '|' .. name
  out[i + 1] = 0
  if redis.call('SREM', uroom, cid) == 1 and redis.call('SCARD', uroom) == 0 then
    if grace > 0 and redis.call('ZSCORE', room, uid) then
      redis.call('ZADD', room, due, uid)
      redis.call('ZADD', KEYS[2], due, member)
      redis.call('HSET', KEYS[3], member, reason, member .. '\nname', username)
      out[i + 1] = 2
    elseif redis.call('ZREM', room, uid) == 1 then
      redis.call('ZREM', KEYS[2], member)
      redis.call('HDEL', KEYS[3], member, member .. '\nname')
      if redis.call('ZCARD', room) == 0 then
        log_event('leave', 'r', name, 'u', uid, 'n', username, 's', 'offline', 'why', reason,
          'v', '1')
      else
        log_event('leave', 'r', name, 'u', uid, 'n', username, 's', 'offline', 'why', reason)
      end
      out[i + 1] = 1
    end
  end
end
return out
