--[[
lib/eventlog.lua -- the presence event log, included by every script that changes presence.

A script includes it with the line `--!include eventlog` (presence.store.LuaScript inlines
this file there). The log is the stream {P}:events; each entry carries

  k  kind: open, close (a connection), join, leave, status (a user in a scope), frame
  p  the id of the entry before it ('0-0' when the stream was empty): a reader that finds p
     different from the last id it read knows it missed entries (trimmed away, Redis
     restarted) and resynchronises from state instead of guessing
  t  the caller's "now" (ms)

then the fields of its kind (docs/presence.md lists them). The stream is trimmed with
MAXLEN ~ ARGV-given length at every append: memory stays bounded.

Atomicity: the event is appended in the same script that changes the state, so both happen
or neither. Redis does not roll back writes when a script fails half-way, so a script must
not be able to fail after its first write: before writing, it calls expect_types() on every
key it touches (a key of another type, say after a collision with someone else's keys,
fails the script with nothing written) and log_open() (XREVRANGE fails the same way when the
log is not a stream). Out of memory is refused at the first write, before anything changed.
]]
local LOG = {}

-- expect_types({key, 'hash', key, 'zset', ...}): fail, before any write, when a key holds
-- another type than the one the script will write to it ('none' is fine: it will be made).
local function expect_types(spec)
  for i = 1, #spec, 2 do
    local found = redis.call('TYPE', spec[i])['ok']
    if found ~= 'none' and found ~= spec[i + 1] then
      error('WRONGTYPE presence key ' .. spec[i] .. ' holds a ' .. found .. ', not a ' ..
        spec[i + 1] .. '; nothing was written')
    end
  end
end

local function log_open(key, maxlen, now)
  LOG.key, LOG.maxlen, LOG.now = key, maxlen, now
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  LOG.prev = (last[1] and last[1][1]) or '0-0'
end

-- log_event('join', 'r', room, 'u', uid, ...) -> the new entry's id
local function log_event(kind, ...)
  LOG.prev = redis.call('XADD', LOG.key, 'MAXLEN', '~', LOG.maxlen, '*',
    'k', kind, 'p', LOG.prev, 't', LOG.now, ...)
  return LOG.prev
end
