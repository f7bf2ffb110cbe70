-- courier join script: make a connection's consumer ready to read.
--
-- KEYS[1] inbox:{user:<id>}     ARGV[1] group (device id)     ARGV[2] consumer name
--
-- Creates the device's group at 0 (MKSTREAM) when missing, creates the consumer,
-- then claims every entry pending in the group (XAUTOCLAIM, min idle 0, JUSTID so the
-- delivery counts are not bumped: the reads that deliver them bump them). Entries
-- trimmed from the stream while pending come back as deleted ids and leave the PEL.
--
-- Returns {claimed, trimmed}.

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
return {claimed, trimmed}
