--[[
lock_release.lua -- release a task lock only if this run still holds it (compare-and-delete).

KEYS[1]  {P}:<task>:lock      STRING  token of the run holding the lock (SET NX PX)

ARGV[1] the token this run set

Returns 1 when the lock was released, 0 when it had expired or another run holds it now
(a plain DEL would then release the other run's lock).
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
