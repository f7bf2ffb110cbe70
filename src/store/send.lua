-- courier send script: one sent batch, written atomically (send_writes.lua, in front
-- of this text, reads the messages and writes each recipient; ids.lua allocates the
-- ids).
--
-- KEYS[1]            dedup:{user:<sender>}:<time_key>
-- KEYS[2]            message:last_id
-- KEYS[1+2r], KEYS[2+2r]  inbox:{user:<r>}, user:<r>   for recipient r = 1..R
--
-- ARGV[1] dedup window (s)   ARGV[2] stream MAXLEN   ARGV[3] message count N
-- ARGV[4] recipient count R  ARGV[5] publish command (PUBLISH)
-- then the N messages and the R recipients, as send_writes.lua reads them
--
-- Returns {1, first_id} when written, {0, "<first_id>:<count>"} when the batch was
-- already written within the dedup window (nothing is written again).

local seen = redis.call('GET', KEYS[1])
if seen then
  -- Written again as it is (same value, same expiry): a write, so that a WAIT after
  -- this call (replicated acks) also covers the batch's first write.
  redis.call('SET', KEYS[1], seen, 'KEEPTTL')
  return {0, seen}
end

local n, r = tonumber(ARGV[3]), tonumber(ARGV[4])
local first = allocate_ids(KEYS[2], n)

local messages, pos = read_messages(6, n, first)
for rcpt = 1, r do
  write_recipient(KEYS[1 + 2 * rcpt], KEYS[2 + 2 * rcpt], pos, messages, ARGV[2], ARGV[5])
  pos = next_recipient(pos)
end

redis.call('SET', KEYS[1], string.format('%.0f', first) .. ':' .. n, 'EX', ARGV[1])
return {1, first}
