--[[
publish.lua -- log an application frame for every connection in a room (HandlerContext.broadcast).

KEYS[1]  {P}:events   STREAM the event log (lib/eventlog.lua)

ARGV[1] now (ms)   ARGV[2] event log max length   ARGV[3] room   ARGV[4] the frame (JSON text)

Logs `frame` (r, f); each web process's log reader sends f to its sockets in the room.
Returns the entry id.
]]
--!include eventlog
log_open(KEYS[1], ARGV[2], tonumber(ARGV[1]))
return log_event('frame', 'r', ARGV[3], 'f', ARGV[4])
