-- courier dead-letter script: move entries out of delivery.
--
-- KEYS[1] inbox:{user:<id>}     KEYS[2] dead:{user:<id>}
-- ARGV[1] group     ARGV[2] dead-letter MAXLEN
-- ARGV[3] the name of the delivery count field (`deliveries`, src/store/entry.rs)
-- ARGV[4..] pairs of (entry id, delivery count)
--
-- Each entry still in the stream is copied to the dead-letter stream with its fields
-- plus the delivery count, then acked in the group; an entry already trimmed is only
-- acked. Returns the number copied.

local copied = 0
for i = 4, #ARGV, 2 do
  local id, deliveries = ARGV[i], ARGV[i + 1]
  local entry = redis.call('XRANGE', KEYS[1], id, id)
  if #entry == 1 then
    local fields = entry[1][2]
    table.insert(fields, ARGV[3])
    table.insert(fields, deliveries)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
    copied = copied + 1
  end
  redis.call('XACK', KEYS[1], ARGV[1], id)
end
return copied
