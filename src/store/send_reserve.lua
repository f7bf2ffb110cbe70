-- courier send on a Redis Cluster, step 1 of 3 (the sender's slot): dedup check and
-- id reservation. Called first with no ids (ARGV[1] empty): a duplicate or a retry
-- ends here without allocating ids; a fresh batch gets {2, ''}, and the caller
-- allocates ARGV[2] ids with INCRBY message:last_id (a key of its own slot, so not in
-- this script) and calls again with the first of them.
--
-- KEYS[1] dedup:{user:<sender>}:<time_key>       the batch's dedup record
-- KEYS[2] dedup:{user:<sender>}:<time_key>:ids   its id reservation
-- ARGV[1] first id just allocated, or ''   ARGV[2] message count N
-- ARGV[3] dedup window (s)
--
-- Returns {0, record} (the dedup record) when the batch was already written (nothing more
-- to do), else {1, first_id} with the ids to write: those reserved by an earlier,
-- unfinished attempt with the same time_key and count — so a retry after a partial
-- failure gives every recipient the same ids — or else ARGV[1], now reserved (when a
-- concurrent attempt reserved first, its ids win and this allocation is a gap in the
-- ids, which nothing relies on); or {2, ''} for a fresh batch asked without ids.

local seen = redis.call('GET', KEYS[1])
if seen then
  return {0, seen}
end
local reserved = redis.call('GET', KEYS[2])
if reserved then
  local first, count = string.match(reserved, '^(%d+):(%d+)$')
  if first and count == ARGV[2] then
    return {1, first}
  end
end
if ARGV[1] == '' then
  return {2, ''}
end
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. ARGV[2], 'EX', ARGV[3])
return {1, ARGV[1]}
