--[[
lock_extend.lua -- extend a task lock only if this holder still holds it (compare-and-expire).

KEYS[1]  {P}:<task>:lock      STRING  token of the holder (SET NX PX)

ARGV[1] the token this holder set
ARGV[2] the new lifetime in milliseconds

Returns 1 when the lock was extended, 0 when it had expired or another holder has it now
(a plain PEXPIRE would then extend the other holder's lock).
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
