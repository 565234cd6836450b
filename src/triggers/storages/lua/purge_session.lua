-- Delete one session if it was not modified for ARGV[1] seconds (server clock).
--
-- KEYS: the session's keys (KEYS[1] is its meta hash).
-- Returns 1 when the session was deleted, 0 otherwise.

local modified = tonumber(redis.call('HGET', KEYS[1], 'modified') or '0')
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
if modified > now - tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', unpack(KEYS))
return 1
