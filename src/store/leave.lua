-- courier leave script: delete a connection's consumer if it has nothing pending.
--
-- KEYS[1] inbox:{user:<id>}     ARGV[1] group     ARGV[2] consumer
--
-- A consumer with pending entries is kept: the device's next connection claims them.
-- Returns 1 when deleted, 0 when kept.

local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
