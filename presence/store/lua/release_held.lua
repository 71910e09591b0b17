--[[
release_held.lua -- log the leaves the grace window held, once they are due.

KEYS[1]  {P}:held             ZSET  held leave -> due ms: `<uid>` or `<uid>|<room>`
KEYS[2]  {P}:held:why         HASH  held leave -> the close reason its leave carries
KEYS[3]  {P}:users            ZSET  uid -> latest expiry ms
KEYS[4]  {P}:events           STREAM the event log (lib/eventlog.lua)
then, per held leave i, 3 keys:
  the user's:  {P}:user:<uid>  {P}:user:<uid>:conns  (unused: the user's hash again)
  a room's:    {P}:user:<uid>  {P}:room:<room>  {P}:room:<room>:user:<uid>
(One shard's keys: the user's holds live on the user's shard, a room's on the room's shard;
for a room's hold {P}:user:<uid> is that shard's key, usually absent: the username comes
from `<member>\nname` of the held:why hash, written by end_rooms.lua.)

ARGV[1] now (ms)   ARGV[2] event log max length
ARGV[3] force: '1' releases the given holds whatever their due time (a kick, a block)
ARGV[4] n, then per held leave: member, uid, room ('' = the user's global presence)

For each held leave still in KEYS[1] and due (score <= now, or force): it leaves the set
(that ZREM is the claim: of processes and sweeps racing, one releases it), and
- the user's: when they have no live connection, their global `leave` (r '', u, n, s
  'offline', why) is logged as end.lua would have, and `held` leaves their hash;
- a room's: when none of their connections is in the room, the room's `leave` (v = '1'
  when the room is now empty).
A hold taken back (a reconnect, a rejoin) logs nothing. Held leaves not in the set any
more (released by another caller, taken back by connect.lua) are skipped.

Returns the number of leaves logged.
]]
--!include eventlog
local now = tonumber(ARGV[1])
local force = ARGV[3] == '1'
local n = tonumber(ARGV[4])
local spec = {KEYS[1], 'zset', KEYS[2], 'hash', KEYS[3], 'zset'}
for i = 0, n - 1 do
  local base, room = 5 + 3 * i, ARGV[7 + 3 * i]
  spec[#spec + 1] = KEYS[base]
  spec[#spec + 1] = 'hash'
  spec[#spec + 1] = KEYS[base + 1]
  spec[#spec + 1] = 'zset'
  if room ~= '' then
    spec[#spec + 1] = KEYS[base + 2]
    spec[#spec + 1] = 'set'
  end
end
expect_types(spec)
log_open(KEYS[4], ARGV[2], now)
local logged = 0
for i = 0, n - 1 do
  local member, uid, room = ARGV[5 + 3 * i], ARGV[6 + 3 * i], ARGV[7 + 3 * i]
  local user = KEYS[5 + 3 * i]
  local due = redis.call('ZSCORE', KEYS[1], member)
  if due and (force or tonumber(due) <= now) then
    redis.call('ZREM', KEYS[1], member)
    local why = redis.call('HGET', KEYS[2], member) or 'closed'
    local username = redis.call('HGET', KEYS[2], member .. '\nname')
      or redis.call('HGET', user, 'username') or ''
    redis.call('HDEL', KEYS[2], member, member .. '\nname')
    if room == '' then
      local uconns = KEYS[6 + 3 * i]
      redis.call('HDEL', user, 'held')
      if redis.call('ZCOUNT', uconns, '(' .. now, '+inf') == 0
          and redis.call('ZREM', KEYS[3], uid) == 1 then
        log_event('leave', 'r', '', 'u', uid, 'n', username, 's', 'offline', 'why', why)
        logged = logged + 1
      end
    else
      local zroom, uroom = KEYS[6 + 3 * i], KEYS[7 + 3 * i]
      if redis.call('SCARD', uroom) == 0 and redis.call('ZREM', zroom, uid) == 1 then
        if redis.call('ZCARD', zroom) == 0 then
          log_event('leave', 'r', room, 'u', uid, 'n', username, 's', 'offline', 'why', why,
            'v', '1')
        else
          log_event('leave', 'r', room, 'u', uid, 'n', username, 's', 'offline', 'why', why)
        end
        logged = logged + 1
      end
    end
  end
end
return logged
