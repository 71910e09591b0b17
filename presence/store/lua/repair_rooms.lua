--[[
repair_rooms.lua -- remove a shard's lapsed room members and log their leaves: what a
process killed between the two halves of a join or of a connection's end left behind.

KEYS[1]  {S}:rooms           ZSET  room -> a lower bound of its members' expiry ms (the index)
KEYS[2]  {S}:events          STREAM the shard's event log (lib/eventlog.lua)
then one key per room of ARGV: {S}:room:<room>  ZSET uid -> latest expiry ms

ARGV[1] now (ms)   ARGV[2] cutoff (ms): members whose score is at or below it are lapsed
ARGV[3] event log max length   ARGV[4] the key suffix of a room's user set (':user:'; the
room-user set of uid is the room's key .. suffix .. uid, as presence/store/keys.py builds it)
then the rooms, in the order of their keys

The caller (presence/store/rooms.py: repair_rooms) picks the rooms whose index score is at
or below the cutoff and passes a cutoff of now - PRESENCE_KEY_GRACE: by then a lapsed
member's connection hash has expired on the user's shard, so no heartbeat can bring the
membership back, and a graceful end or the sweep has had its chance to log the leave.

Per lapsed member: ZREM from the room (that removal is what logs, so a leave the end path
logged first is not logged twice, and a second repair logs nothing), DEL of its room-user
set, and a `leave` (r, u, n '' -- the name lives on the user's shard --, s 'offline',
why 'timeout', v '1' when the room is left empty). Then the room's index entry is set to its
oldest remaining member's score, or removed when the room is empty. The index is a lower
bound: joins lower it (ZADD LT), heartbeats never touch it (the hot path stays as it is), so
a room is visited about once per TTL + key grace while it has members.

Returns the number of leaves logged.
]]
--!include eventlog
local now, cutoff = tonumber(ARGV[1]), tonumber(ARGV[2])
local spec = {KEYS[1], 'zset'}
for i = 3, #KEYS do
  spec[#spec + 1] = KEYS[i]
  spec[#spec + 1] = 'zset'
end
expect_types(spec)
log_open(KEYS[2], ARGV[3], now)
local logged = 0
for i = 3, #KEYS do
  local room_key, room = KEYS[i], ARGV[i + 2]
  for _, uid in ipairs(redis.call('ZRANGEBYSCORE', room_key, '-inf', cutoff)) do
    if redis.call('ZREM', room_key, uid) == 1 then
      redis.call('DEL', room_key .. ARGV[4] .. uid)
      logged = logged + 1
      if redis.call('ZCARD', room_key) == 0 then
        log_event('leave', 'r', room, 'u', uid, 'n', '', 's', 'offline', 'why', 'timeout',
          'v', '1')
      else
        log_event('leave', 'r', room, 'u', uid, 'n', '', 's', 'offline', 'why', 'timeout')
      end
    end
  end
  local oldest = redis.call('ZRANGE', room_key, 0, 0, 'WITHSCORES')
  if oldest[2] then
    redis.call('ZADD', KEYS[1], oldest[2], room)
  else
    redis.call('ZREM', KEYS[1], room)
  end
end
return logged
