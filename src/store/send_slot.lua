-- courier send on a Redis Cluster, step 2 of 3: the recipients of one slot, written
-- atomically. One call per slot of the batch's recipients, issued together
-- (send_writes.lua, in front of this text, reads the messages and writes each
-- recipient).
--
-- KEYS[3r-2], KEYS[3r-1], KEYS[3r]   for recipient r = 1..R (all of one slot):
--   inbox:{user:<r>}, user:<r>, dedup:{user:<r>}:from:<sender>:<time_key>
-- ARGV[1] dedup window (s)   ARGV[2] stream MAXLEN   ARGV[3] the batch's message count
-- ARGV[4] first message id (step 1)   ARGV[5] publish command (SPUBLISH)
-- ARGV[6] recipient count R
-- ARGV[7] count M of the batch's messages to any of these recipients
-- then the M messages and the R recipients, as send_writes.lua reads them
--
-- A recipient whose marker (the third key) exists was written by an earlier attempt
-- of this batch and is skipped; every other one gets its stream entries and legacy
-- items in message order, its wake-up and its marker (expiring with the dedup
-- window). Returns the number of recipients written now.

local r, m = tonumber(ARGV[6]), tonumber(ARGV[7])
local messages, pos = read_messages(8, m, tonumber(ARGV[4]))

local written = 0
for rcpt = 1, r do
  local marker = KEYS[3 * rcpt]
  if redis.call('EXISTS', marker) == 0 then
    write_recipient(KEYS[3 * rcpt - 2], KEYS[3 * rcpt - 1], pos, messages, ARGV[2], ARGV[5])
    redis.call('SET', marker, ARGV[4] .. ':' .. ARGV[3], 'EX', ARGV[1])
    written = written + 1
  end
  pos = next_recipient(pos)
end
return written
