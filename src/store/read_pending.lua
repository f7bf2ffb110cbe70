-- courier read-pending script: re-read this consumer's own pending entries.
--
-- KEYS[1] inbox:{user:<id>}
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] after this id   ARGV[4] count
--
-- XREADGROUP on history (never blocks) bumps each entry's delivery count; the count
-- is read back so the caller can dead-letter entries past the maximum. Entries trimmed
-- from the stream while pending come back with nil fields (false in Lua).
--
-- Returns {{id, fields or false, deliveries}, ...}.

local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[4],
  'STREAMS', KEYS[1], ARGV[3])
local entries = {}
if not reply then
  return entries
end
for _, entry in ipairs(reply[1][2]) do
  local id = entry[1]
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local deliveries = pending[1] and pending[1][4] or 1
  table.insert(entries, {id, entry[2] or false, deliveries})
end
return entries
