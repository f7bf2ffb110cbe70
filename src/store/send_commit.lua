-- courier send on a Redis Cluster, step 3 of 3 (the sender's slot): every recipient
-- is written, so the batch's dedup record is written and its id reservation dropped.
-- (A script rather than MULTI/EXEC: the cluster client follows an ASK redirect for a
-- script, not for a transaction, and the slot may be migrating.)
--
-- KEYS[1] dedup:{user:<sender>}:<time_key>   KEYS[2] dedup:{user:<sender>}:<time_key>:ids
-- ARGV[1] the dedup record (the first id, as send.lua writes it)
-- ARGV[2] dedup window (s)

redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1
