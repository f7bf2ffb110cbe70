-- courier join script: make a connection's consumer ready, and read its first batch.
--
-- KEYS[1] inbox:{user:<id>}
-- ARGV[1] group (device id)   ARGV[2] consumer name   ARGV[3] batch size
--
-- One round trip for the whole join:
-- 1. claims every entry pending in the device's group for this consumer (XAUTOCLAIM,
--    min idle 0, JUSTID so the delivery counts are not bumped: the reads that deliver
--    them bump them): what the device's earlier connections, dead or alive, left
--    unacked. Entries trimmed from the stream while pending come back as deleted ids
--    and leave the PEL. A missing group (or stream) is created at 0 (MKSTREAM);
--    the consumer is created unless the claim did (one consumer per connection, in
--    XINFO CONSUMERS from the start, even before it has read anything);
-- 2. deletes the group's other consumers that have nothing pending (after step 1,
--    all of them): consumers of dead connections and instances. Deleting a live
--    connection's empty consumer loses nothing: its next read creates it again;
-- 3. reads the first batch: this consumer's own pending history (what it claimed)
--    if there is any, else new entries (`>`).
--
-- Returns {claimed, trimmed, consumers deleted, entries}: entries are
-- {{id, fields, deliveries}, ...}, pending history when claimed > 0, else new.

local group, me, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local claimed, trimmed, deleted = 0, 0, 0

local reply = redis.pcall('XAUTOCLAIM', KEYS[1], group, me, 0, '0-0', 'COUNT', 1000, 'JUSTID')
if type(reply) == 'table' and reply.err then
  if not string.find(reply.err, 'NOGROUP') then
    return redis.error_reply(reply.err)
  end
  redis.call('XGROUP', 'CREATE', KEYS[1], group, '0', 'MKSTREAM')
  redis.call('XGROUP', 'CREATECONSUMER', KEYS[1], group, me)
else
  while true do
    claimed = claimed + #reply[2]
    trimmed = trimmed + #(reply[3] or {})
    if reply[1] == '0-0' then
      break
    end
    reply = redis.call('XAUTOCLAIM', KEYS[1], group, me, 0, reply[1], 'COUNT', 1000, 'JUSTID')
  end
  local exists = false
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group)) do
    local info = {}
    for i = 1, #consumer, 2 do
      info[consumer[i]] = consumer[i + 1]
    end
    if info['name'] == me then
      exists = true
    elseif info['pending'] == 0 then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, info['name'])
      deleted = deleted + 1
    end
  end
  if not exists then
    redis.call('XGROUP', 'CREATECONSUMER', KEYS[1], group, me)
  end
end

local from = '>'
if claimed > 0 then
  from = '0'
end
local read = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', count, 'STREAMS', KEYS[1], from)
local entries = {}
if read then
  local deliveries = {}
  if claimed > 0 then
    -- The history read returned the consumer's first `count` pending entries: one
    -- XPENDING gives their delivery counts (which the read just bumped).
    for _, pending in ipairs(redis.call('XPENDING', KEYS[1], group, '-', '+', count, me)) do
      deliveries[pending[1]] = pending[4]
    end
  end
  for _, entry in ipairs(read[1][2]) do
    table.insert(entries, {entry[1], entry[2] or false, deliveries[entry[1]] or 1})
  end
end
return {claimed, trimmed, deleted, entries}
