-- courier read-pending script: re-read this consumer's own pending entries.
--
-- KEYS[1] inbox:{user:<id>}
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] after this id   ARGV[4] count
--
-- XREADGROUP on history (never blocks) bumps each entry's delivery count; the counts
-- are read back with one XPENDING over the same range, so the caller can dead-letter
-- entries past the maximum. Entries trimmed from the stream while pending come back
-- with nil fields (false in Lua).
--
-- Returns {{id, fields or false, deliveries}, ...}.

local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[4],
  'STREAMS', KEYS[1], ARGV[3])
local entries = {}
if not reply or #reply[1][2] == 0 then
  return entries
end
local deliveries = {}
for _, pending in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '(' .. ARGV[3], '+',
    ARGV[4], ARGV[2])) do
  deliveries[pending[1]] = pending[4]
end
for _, entry in ipairs(reply[1][2]) do
  table.insert(entries, {entry[1], entry[2] or false, deliveries[entry[1]] or 1})
end
return entries
