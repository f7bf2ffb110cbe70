-- courier join script: make a connection's consumer ready to read.
--
-- KEYS[1] inbox:{user:<id>}
-- ARGV[1] group (device id)   ARGV[2] consumer name   ARGV[3] stale idle (ms)
--
-- Creates the device's group at 0 (MKSTREAM) when missing and the consumer, then
-- claims every entry pending in the group (XAUTOCLAIM, min idle 0, JUSTID so the
-- delivery counts are not bumped: the reads that deliver them bump them). Entries
-- trimmed from the stream while pending come back as deleted ids and leave the PEL.
-- Finally deletes the group's other consumers that have nothing pending and have not
-- read for ARGV[3] ms: consumers of dead connections and dead instances (a live
-- consumer reads at least every safety-poll interval).
--
-- Returns {claimed, trimmed, consumers deleted}.

local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(created) == 'table' and created.err and not string.find(created.err, 'BUSYGROUP') then
  return redis.error_reply(created.err)
end
redis.call('XGROUP', 'CREATECONSUMER', KEYS[1], ARGV[1], ARGV[2])

local cursor, claimed, trimmed = '0-0', 0, 0
repeat
  local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, cursor, 'COUNT', 1000, 'JUSTID')
  cursor = reply[1]
  claimed = claimed + #reply[2]
  trimmed = trimmed + #(reply[3] or {})
until cursor == '0-0'

local deleted = 0
local stale = tonumber(ARGV[3])
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do
    info[consumer[i]] = consumer[i + 1]
  end
  if info['name'] ~= ARGV[2] and info['pending'] == 0 and info['idle'] >= stale then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    deleted = deleted + 1
  end
end
return {claimed, trimmed, deleted}
