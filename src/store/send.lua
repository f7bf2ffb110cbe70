-- courier send script: one sent batch, written atomically.
--
-- KEYS[1]            dedup:{user:<sender>}:<time_key>
-- KEYS[2]            message:last_id
-- KEYS[1+2r], KEYS[2+2r]  inbox:{user:<r>}, user:<r>   for recipient r = 1..R
--
-- ARGV[1] dedup window (s)   ARGV[2] stream MAXLEN   ARGV[3] message count N
-- ARGV[4] sender id          ARGV[5] recipient count R
-- ARGV[6 .. 5+R]             recipient user ids (for the notify channels)
-- then per message: chat_id, content_text, legacy JSON, traceparent ('' when none),
--                   K, then K recipient numbers (1..R)
--
-- Returns {1, first_id} when written, {0, "<first_id>:<count>"} when the batch was
-- already written within the dedup window (nothing is written again).

local seen = redis.call('GET', KEYS[1])
if seen then
  return {0, seen}
end

local n = tonumber(ARGV[3])
local sender = ARGV[4]
local r = tonumber(ARGV[5])
local maxlen = ARGV[2]
local first = redis.call('INCRBY', KEYS[2], n) - n + 1

local touched = {}
local pos = 6 + r
for i = 0, n - 1 do
  local chat_id, text, legacy, traceparent = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
  local k = tonumber(ARGV[pos + 4])
  pos = pos + 5
  -- %.0f: Lua numbers are doubles; tostring would switch to exponent form.
  local id = string.format('%.0f', first + i)
  for _ = 1, k do
    local rcpt = tonumber(ARGV[pos])
    pos = pos + 1
    local inbox, list = KEYS[1 + 2 * rcpt], KEYS[2 + 2 * rcpt]
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

for rcpt in pairs(touched) do
  redis.call('PUBLISH', 'notify:{user:' .. ARGV[5 + rcpt] .. '}', '')
end

redis.call('SET', KEYS[1], string.format('%.0f', first) .. ':' .. n, 'EX', ARGV[1])
return {1, first}
