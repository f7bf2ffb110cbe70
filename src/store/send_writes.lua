-- courier send, the part shared by send.lua (single node) and send_slot.lua (one slot
-- of a Redis Cluster): reading the batch's messages from ARGV, and one recipient's
-- writes. Lua scripts cannot include files: Rust puts this text in front of each of
-- the two scripts (src/store/send.rs), which call these functions.
--
-- ARGV, from the position each script says:
--   per message:   its index in the batch (0-based: its id is the first id + index),
--                  F, then F strings: the stream entry's field/value list as
--                  src/store/entry.rs encodes it (the first pair is the message id,
--                  its value left empty for the script to fill in), then the legacy
--                  list item (JSON)
--   per recipient: its wake-up channel (notify:{user:<id>}), K, then K message
--                  numbers (1-based, in the order the messages were read), ascending;
--                  K = 0 for every message read (the common case, a batch to one chat:
--                  no numbers to send and parse)
--
-- (No table per recipient, and positions rather than copies where it is cheap: this
-- runs for every recipient of every send.)

-- Reads `count` messages from ARGV[pos], giving each its id (`first` + its index).
-- Returns them, numbered 1..count, and the position after them.
local function read_messages(pos, count, first)
  local messages = {}
  for number = 1, count do
    local index, f = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1])
    local fields = {unpack(ARGV, pos + 2, pos + 1 + f)}
    -- %.0f: Lua numbers are doubles; tostring would switch to exponent form.
    fields[2] = string.format('%.0f', first + index)
    messages[number] = {fields = fields, legacy = ARGV[pos + 2 + f]}
    pos = pos + 3 + f
  end
  return messages, pos
end

-- The position after the recipient at ARGV[pos].
local function next_recipient(pos)
  return pos + 2 + tonumber(ARGV[pos + 1])
end

-- One message's stream entry in `inbox` (trimmed to about `maxlen` entries) and its
-- legacy item in `list`.
local function write_message(inbox, list, maxlen, message)
  redis.call('XADD', inbox, 'MAXLEN', '~', maxlen, '*', unpack(message.fields))
  redis.call('RPUSH', list, message.legacy)
end

-- The writes of the recipient at ARGV[pos]: its messages in order, then one wake-up
-- on its channel with `publish` (PUBLISH, or SPUBLISH on a Redis Cluster).
local function write_recipient(inbox, list, pos, messages, maxlen, publish)
  if ARGV[pos + 1] == '0' then
    for number = 1, #messages do
      write_message(inbox, list, maxlen, messages[number])
    end
  else
    for i = pos + 2, next_recipient(pos) - 1 do
      write_message(inbox, list, maxlen, messages[tonumber(ARGV[i])])
    end
  end
  redis.call(publish, ARGV[pos], '')
end

