-- courier send script: one sent batch, written atomically (send_writes.lua, in front
-- of this text, reads the messages and writes and trims each recipient; ids.lua
-- allocates the ids).
--
-- KEYS[1]            dedup:{user:<sender>}:<time_key>
-- KEYS[2]            message:last_id
-- KEYS[1+2r], KEYS[2+2r]  inbox:{user:<r>}, user:<r>   for recipient r = 1..R
--
-- ARGV[1] dedup window (s)   ARGV[2] message count N   ARGV[3] recipient count R
-- ARGV[4] publish command (PUBLISH)   ARGV[5..8] the limits
-- then the N messages and the R recipients, as send_writes.lua reads them
--
-- The dedup record's value is the batch's first id, an integer: Redis keeps it inside
-- the key's object, with no string to allocate (a resend is the same batch: its count
-- is the resend's).
--
-- Returns {1, first_id, lost} when written, {0, record} when the batch was already
-- written within the dedup window (nothing is written again). `lost` lists what the
-- trims removed unacked: {r, group, reason, count} per recipient r and device group.

local seen = redis.call('GET', KEYS[1])
if seen then
  -- Written again as it is (same value, same expiry): a write, so that a WAIT after
  -- this call (replicated acks) also covers the batch's first write.
  redis.call('SET', KEYS[1], seen, 'KEEPTTL')
  return {0, seen}
end

local n, r = tonumber(ARGV[2]), tonumber(ARGV[3])
local first = allocate_ids(KEYS[2], n)

local limits, pos = read_limits(5)
local messages
messages, pos = read_messages(pos, n, first)
local lost = {}
for rcpt = 1, r do
  local trimmed = write_recipient(KEYS[1 + 2 * rcpt], KEYS[2 + 2 * rcpt], pos, messages, limits, ARGV[4])
  for _, loss in ipairs(trimmed) do
    lost[#lost + 1] = {rcpt, loss[1], loss[2], loss[3]}
  end
  pos = next_recipient(pos)
end

redis.call('SET', KEYS[1], string.format('%.0f', first), 'EX', ARGV[1])
return {1, first, lost}
