-- courier message ids, shared by send.lua (single node) and the cluster's id script:
-- Lua scripts cannot include files, so Rust puts this text in front of each of them
-- (src/store/send.rs, send_sharded.rs).
--
-- allocate_ids(key, n) takes n consecutive ids from the counter at `key`
-- (message:last_id) and returns the first. The counter is never below the clock: it
-- is first raised to the current time in microseconds (Redis TIME). A failover or a
-- restore can roll the counter back with writes that were lost; ids then restart
-- from the clock, above every id handed out before, as long as ids were taken at
-- under one per microsecond on average and the servers' clocks agree to within the
-- failover's duration (README, Guarantees). Microseconds since 1970 stay below 2^53,
-- exact in a Lua number and in JavaScript, until the year 2255.
local function allocate_ids(key, n)
  local now = redis.call('TIME')
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local last = tonumber(redis.call('GET', key) or '0')
  if last == nil or last < floor then
    redis.call('SET', key, string.format('%.0f', floor + n))
    return floor + 1
  end
  return redis.call('INCRBY', key, n) - n + 1
end
