-- courier send, the part shared by send.lua (single node) and send_slot.lua (one slot
-- of a Redis Cluster): reading the batch's messages and the limits from ARGV, and one
-- recipient's writes, including the trimming of its inbox and legacy list. Lua scripts
-- cannot include files: Rust puts this text in front of each of the two scripts
-- (src/store/send.rs), which call these functions.
--
-- ARGV, from the position each script says:
--   limits (4):    the inbox cap (COURIER_STREAM_MAXLEN), the legacy list cap (0: no
--                  list is written), the history retention (ms), the device idle
--                  time (ms) — src/store/settings.rs, Retention::script_limits
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

-- Every this many entries added to an inbox, the send looks at the age of its first
-- entry (one XRANGE … COUNT 1); a smaller inbox is looked at on every send.
local AGE_CHECK_EVERY = 16
-- Arguments per RPUSH/XACK call, below Lua's unpack limit.
local CHUNK = 1000

-- Reads the limits at ARGV[pos]. Returns them and the position after them.
local function read_limits(pos)
  local limits = {
    maxlen = tonumber(ARGV[pos]),
    list_maxlen = tonumber(ARGV[pos + 1]),
    retention = tonumber(ARGV[pos + 2]),
    idle = tonumber(ARGV[pos + 3]),
  }
  -- Like XADD MAXLEN ~ (which waits for a whole node of entries), the cap is applied
  -- once an inbox is this far over it, so one trim's cost is shared by that many adds.
  limits.slack = math.max(1, math.min(100, math.floor(limits.maxlen / 10)))
  return limits, pos + 4
end

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

-- Stream ids as {ms, seq}, compared numerically.
local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {tonumber(ms), tonumber(seq)}
end

local function id_less(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

local function id_text(id)
  return string.format('%.0f-%.0f', id[1], id[2])
end

-- The smallest id after `id`.
local function id_after(id)
  return {id[1], id[2] + 1}
end

-- XINFO GROUPS / CONSUMERS replies: a flat field/value list per item, as a table.
local function info_items(reply)
  local items = {}
  for _, flat in ipairs(reply) do
    local item = {}
    for i = 1, #flat, 2 do
      item[flat[i]] = flat[i + 1]
    end
    items[#items + 1] = item
  end
  return items
end

-- Whether one of the group's consumers read within the last `idle` ms.
local function read_lately(inbox, group, idle)
  for _, consumer in ipairs(info_items(redis.call('XINFO', 'CONSUMERS', inbox, group))) do
    if consumer['idle'] < idle then
      return true
    end
  end
  return false
end

-- Whether `inbox` (of `len` entries after `added` were just added) is due a trim at
-- `now` (ms): over the cap, or (looked at every AGE_CHECK_EVERY adds) holding an entry
-- older than the retention window.
local function trim_due(inbox, len, added, now, limits)
  if len >= limits.maxlen + limits.slack then
    return true
  end
  if len > AGE_CHECK_EVERY
    and math.floor(len / AGE_CHECK_EVERY) == math.floor((len - added) / AGE_CHECK_EVERY) then
    return false
  end
  local first = redis.call('XRANGE', inbox, '-', '+', 'COUNT', 1)[1]
  return first ~= nil and parse_id(first[1])[1] < now - limits.retention
end

-- Trims `inbox` (`len` entries, the newest added at `now` ms) with XTRIM MINID:
--   * down to `limits.maxlen` entries when it is over the cap, whatever is unacked;
--   * of the entries older than the retention window that every device group has
--     acked: a group holds the trim back from its oldest unacked entry (its oldest
--     pending one, else the first after its last-delivered id), unless it is idle —
--     none of its consumers read within the idle time and that entry is older than it.
-- What a group had not acked and the trim removes is appended to `lost` as
-- {group, reason ('maxlen' or 'idle_device'), count}, and its pending ones are acked
-- (they are gone): counted, never silently dropped.
local function trim(inbox, len, now, limits, lost)
  local first = parse_id(redis.call('XRANGE', inbox, '-', '+', 'COUNT', 1)[1][1])
  local cut = {now - limits.retention, 0}
  local hard = nil
  if len >= limits.maxlen + limits.slack then
    local over = redis.call('XRANGE', inbox, '-', '+', 'COUNT', len - limits.maxlen)
    hard = id_after(parse_id(over[#over][1]))
  end

  local groups = info_items(redis.call('XINFO', 'GROUPS', inbox))
  for _, group in ipairs(groups) do
    group.last = parse_id(group['last-delivered-id'])
    local oldest = nil
    if group['pending'] > 0 then
      oldest = parse_id(redis.call('XPENDING', inbox, group['name'], '-', '+', 1)[1][1])
    elseif id_less(id_after(group.last), cut) then
      local next = redis.call('XRANGE', inbox, '(' .. group['last-delivered-id'], '+', 'COUNT', 1)[1]
      if next then
        oldest = parse_id(next[1])
      end
    end
    if oldest and id_less(oldest, cut) then
      group.idle = oldest[1] < now - limits.idle
        and not read_lately(inbox, group['name'], limits.idle)
      if not group.idle then
        cut = oldest
      end
    end
  end
  if hard and id_less(cut, hard) then
    cut = hard
  end
  if not id_less(first, cut) then
    return
  end

  local cut_text = id_text(cut)
  local behind = {}
  for _, group in ipairs(groups) do
    local name, count = group['name'], 0
    if group['pending'] > 0 then
      local below = redis.call('XPENDING', inbox, name, '-', '(' .. cut_text, group['pending'])
      for i = 1, #below, CHUNK do
        local ids = {}
        for j = i, math.min(i + CHUNK - 1, #below) do
          ids[#ids + 1] = below[j][1]
        end
        redis.call('XACK', inbox, name, unpack(ids))
      end
      count = #below
    end
    if id_less(group.last, first) then
      behind[#behind + 1] = {group, count}
    else
      if id_less(id_after(group.last), cut) then
        count = count + #redis.call('XRANGE', inbox, '(' .. group['last-delivered-id'], '(' .. cut_text)
      end
      if count > 0 then
        lost[#lost + 1] = {name, group.idle and 'idle_device' or 'maxlen', count}
      end
    end
  end
  local removed = redis.call('XTRIM', inbox, 'MINID', cut_text)
  -- A group that had not read even the first entry misses every removed one.
  for _, entry in ipairs(behind) do
    local group, count = entry[1], entry[2] + removed
    if count > 0 then
      lost[#lost + 1] = {group['name'], group.idle and 'idle_device' or 'maxlen', count}
    end
  end
end

-- The writes of the recipient at ARGV[pos] (its inbox and legacy list): its messages
-- in order, one wake-up on its channel with `publish` (PUBLISH, or SPUBLISH on a Redis
-- Cluster), then the trims. Returns what the inbox trim removed unacked (see `trim`).
local function write_recipient(inbox, list, pos, messages, limits, publish)
  local numbers = {}
  if ARGV[pos + 1] == '0' then
    for number = 1, #messages do
      numbers[number] = number
    end
  else
    for i = pos + 2, next_recipient(pos) - 1 do
      numbers[#numbers + 1] = tonumber(ARGV[i])
    end
  end
  local last
  for _, number in ipairs(numbers) do
    last = redis.call('XADD', inbox, '*', unpack(messages[number].fields))
  end
  if limits.list_maxlen > 0 then
    local length = 0
    for i = 1, #numbers, CHUNK do
      local items = {}
      for j = i, math.min(i + CHUNK - 1, #numbers) do
        items[#items + 1] = messages[numbers[j]].legacy
      end
      length = redis.call('RPUSH', list, unpack(items))
    end
    if length > limits.list_maxlen then
      redis.call('LTRIM', list, -limits.list_maxlen, -1)
    end
  end
  redis.call(publish, ARGV[pos], '')

  local lost = {}
  local now = parse_id(last)[1]
  local len = redis.call('XLEN', inbox)
  if trim_due(inbox, len, #numbers, now, limits) then
    trim(inbox, len, now, limits, lost)
  end
  return lost
end
