--[[
status.lua -- set a user's status (one per user, shared by their connections), and log it.

KEYS[1]  {P}:user:<uid>   HASH   username, status
KEYS[2]  {P}:events       STREAM the event log (lib/eventlog.lua)

ARGV[1] now (ms)   ARGV[2] event log max length   ARGV[3] uid   ARGV[4] username
ARGV[5] status     ARGV[6] nrooms, then the rooms the user's connections are in

Logs `status` (u, n, s) for the global scope (r '') and for each of the rooms, even when the
status did not change (a client that re-sends its status is answered the same way).
Returns the number of events logged.
]]
--!include eventlog
local now = tonumber(ARGV[1])
expect_types({KEYS[1], 'hash'})
log_open(KEYS[2], ARGV[2], now)
redis.call('HSET', KEYS[1], 'status', ARGV[5])
local uid, username, status = ARGV[3], ARGV[4], ARGV[5]
log_event('status', 'r', '', 'u', uid, 'n', username, 's', status)
local nrooms = tonumber(ARGV[6])
for i = 1, nrooms do
  log_event('status', 'r', ARGV[6 + i], 'u', uid, 'n', username, 's', status)
end
return 1 + nrooms
