-- courier replay script: move dead letters back into the inbox, one chunk at a time.
--
-- KEYS[1] dead:{user:<id>}     KEYS[2] inbox:{user:<id>}
-- ARGV[1] where to start: '-' for the beginning, else the last id of the previous
--         chunk (exclusive)
-- ARGV[2] chunk size     ARGV[3] inbox MAXLEN     ARGV[4] notify:{user:<id>}
-- ARGV[5] the publish command: PUBLISH, or SPUBLISH on a Redis Cluster
-- ARGV[6] the name of the delivery count field (`deliveries`, src/store/entry.rs)
--
-- Each dead letter is appended to the inbox as a new entry with its original fields
-- (the delivery count the dead-letter script added is dropped), then deleted from
-- the dead-letter stream: every consumer group of the inbox reads it as new, with its
-- original `id`. An entry with no field left is not replayed and stays in place.
-- Publishes one wake-up when anything moved.
--
-- Returns {moved, next}: `next` is the last id scanned when the chunk was full (call
-- again from there), '' when the dead-letter stream has been scanned to its end.

local start = ARGV[1]
if start ~= '-' then
  start = '(' .. start
end
local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ARGV[2])

local moved = 0
for _, entry in ipairs(entries) do
  local id, fields = entry[1], entry[2]
  local kept = {}
  for i = 1, #fields, 2 do
    if fields[i] ~= ARGV[6] then
      table.insert(kept, fields[i])
      table.insert(kept, fields[i + 1])
    end
  end
  if #kept > 0 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(kept))
    redis.call('XDEL', KEYS[1], id)
    moved = moved + 1
  end
end

if moved > 0 then
  redis.call(ARGV[5], ARGV[4], '')
end

local next = ''
if #entries == tonumber(ARGV[2]) then
  next = entries[#entries][1]
end
return {moved, next}
