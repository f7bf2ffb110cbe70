-- courier send on a Redis Cluster, step 2 of 3: the recipients of one slot, written
-- atomically. One call per slot of the batch's recipients, issued together
-- (send_writes.lua, in front of this text, reads the messages and writes and trims
-- each recipient).
--
-- KEYS[3r-2], KEYS[3r-1], KEYS[3r]   for recipient r = 1..R (all of one slot):
--   inbox:{user:<r>}, user:<r>, dedup:{user:<r>}:from:<sender>:<time_key>
-- ARGV[1] dedup window (s)   ARGV[2] the batch's dedup record (send.lua: its first
-- id)   ARGV[3] first message id (step 1)   ARGV[4] publish command (SPUBLISH)
-- ARGV[5] recipient count R
-- ARGV[6] count M of the batch's messages to any of these recipients
-- ARGV[7..10] the limits
-- then the M messages and the R recipients, as send_writes.lua reads them
--
-- A recipient whose marker (the third key) exists was written by an earlier attempt
-- of this batch and is skipped; every other one gets its stream entries and legacy
-- items in message order, its wake-up and its marker (expiring with the dedup
-- window). Returns {recipients written now, lost}: `lost` lists what the trims
-- removed unacked, {r, group, reason, count} per recipient r and device group.

local r, m = tonumber(ARGV[5]), tonumber(ARGV[6])
local limits, pos = read_limits(7)
local messages
messages, pos = read_messages(pos, m, tonumber(ARGV[3]))

local written, lost = 0, {}
for rcpt = 1, r do
  local marker = KEYS[3 * rcpt]
  if redis.call('EXISTS', marker) == 0 then
    local trimmed = write_recipient(KEYS[3 * rcpt - 2], KEYS[3 * rcpt - 1], pos, messages, limits, ARGV[4])
    for _, loss in ipairs(trimmed) do
      lost[#lost + 1] = {rcpt, loss[1], loss[2], loss[3]}
    end
    redis.call('SET', marker, ARGV[2], 'EX', ARGV[1])
    written = written + 1
  end
  pos = next_recipient(pos)
end
return {written, lost}
