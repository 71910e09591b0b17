--[[
status_rooms.lua -- the rooms' part of a status change (one room shard): log the user's
`status` in each of their rooms on this shard's stream.

status.lua stores the status and logs it for the global scope on the user's shard first;
presence/store/rooms.py (set_status) then runs this on each shard holding some of the
user's rooms, every shard of one node in one pipeline. Logging only: nothing to repair when
a process dies between the two (the rooms' readers resynchronise from state on a gap, and
a room's member list reads the status from the user's shard).

KEYS[1]  {S}:events       STREAM the room shard's event log (lib/eventlog.lua)

ARGV[1] now (ms)   ARGV[2] event log max length   ARGV[3] uid   ARGV[4] username
ARGV[5] status     then the rooms (on this shard)

Logs `status` (r room, u, n, s) per room, even when the status did not change (as
status.lua). Returns the number of events logged.
]]
--!include eventlog
log_open(KEYS[1], ARGV[2], tonumber(ARGV[1]))
for i = 6, #ARGV do
  log_event('status', 'r', ARGV[i], 'u', ARGV[3], 'n', ARGV[4], 's', ARGV[5])
end
return #ARGV - 5
