-- courier send on a Redis Cluster, step 2 of 3: the recipients of one slot, written
-- atomically. One call per slot of the batch's recipients, issued together.
--
-- KEYS[3r-2], KEYS[3r-1], KEYS[3r]   for recipient r = 1..R (all of one slot):
--   inbox:{user:<r>}, user:<r>, dedup:{user:<r>}:from:<sender>:<time_key>
-- ARGV[1] dedup window (s)   ARGV[2] stream MAXLEN   ARGV[3] the batch's message count
-- ARGV[4] sender id          ARGV[5] first message id (step 1)
-- ARGV[6] publish command (SPUBLISH)   ARGV[7] recipient count R
-- ARGV[8] count M of the batch's messages to any of these recipients
-- ARGV[9 .. 8+R]             recipient user ids (for the notify channels)
-- then per such message: its index in the batch (0-based: its id is first id + index),
--   chat_id, content_text, legacy JSON, traceparent ('' when none),
--   K, then K recipient numbers (1..R)
--
-- A recipient whose marker (the third key) exists was written by an earlier attempt
-- of this batch and is skipped; every other one gets its stream entries and legacy
-- items in message order, its marker (expiring with the dedup window) and one
-- wake-up. Returns the number of recipients written now.

local m = tonumber(ARGV[8])
local sender = ARGV[4]
local first = tonumber(ARGV[5])
local r = tonumber(ARGV[7])
local maxlen = ARGV[2]

local done = {}
for rcpt = 1, r do
  done[rcpt] = redis.call('EXISTS', KEYS[3 * rcpt]) == 1
end

local touched = {}
local pos = 9 + r
for _ = 1, m do
  local index, chat_id, text = tonumber(ARGV[pos]), ARGV[pos + 1], ARGV[pos + 2]
  local legacy, traceparent = ARGV[pos + 3], ARGV[pos + 4]
  local k = tonumber(ARGV[pos + 5])
  pos = pos + 6
  -- %.0f: Lua numbers are doubles; tostring would switch to exponent form.
  local id = string.format('%.0f', first + index)
  for _ = 1, k do
    local rcpt = tonumber(ARGV[pos])
    pos = pos + 1
    if not done[rcpt] then
      local inbox, list = KEYS[3 * rcpt - 2], KEYS[3 * rcpt - 1]
      if traceparent == '' then
        redis.call('XADD', inbox, 'MAXLEN', '~', maxlen, '*',
          'id', id, 'sender_id', sender, 'chat_id', chat_id, 'content_text', text)
      else
        redis.call('XADD', inbox, 'MAXLEN', '~', maxlen, '*',
          'id', id, 'sender_id', sender, 'chat_id', chat_id, 'content_text', text,
          'traceparent', traceparent)
      end
      redis.call('RPUSH', list, legacy)
      touched[rcpt] = true
    end
  end
end

local written = 0
for rcpt in pairs(touched) do
  redis.call('SET', KEYS[3 * rcpt], ARGV[5] .. ':' .. ARGV[3], 'EX', ARGV[1])
  redis.call(ARGV[6], 'notify:{user:' .. ARGV[8 + rcpt] .. '}', '')
  written = written + 1
end
return written
