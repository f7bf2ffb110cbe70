-- courier reclaim script: take back entries whose delivery timed out.
--
-- KEYS[1] inbox:{user:<id>}
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] min idle (ms, the ack timeout)
-- ARGV[4] cursor  ARGV[5] count
--
-- XAUTOCLAIMs, for this consumer, entries of the device's group unacked for at least
-- the ack timeout: its own timed-out deliveries and those of dead connections. The
-- claim bumps each entry's delivery count; the count is read back (XPENDING) so the
-- caller can dead-letter entries past the maximum instead of delivering them.
--
-- Returns {next cursor, {{id, fields, deliveries}, ...}, trimmed count}.

local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local entries = {}
for _, entry in ipairs(reply[2]) do
  local id = entry[1]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local deliveries = pending[1] and pending[1][4] or 1
  table.insert(entries, {id, entry[2], deliveries})
end
return {reply[1], entries, #(reply[3] or {})}
