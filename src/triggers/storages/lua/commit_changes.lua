-- Commit the changes of one atomic step, only if the session is unchanged since
-- the step read it (compare-and-set on the session version).
--
-- KEYS: the session's keys, in this order:
--   1 meta  2 tasks  3 tasktriggers  4 index  5 instances  6 unstarted  7 kwargs  8 counters
-- ARGV[1]: a JSON array of strings:
--   expected version, ttl seconds ('' = keys never expire), commit token,
--   n, (task name, config JSON, JSON list of the task's triggers)*n,
--   m, (instance name, task name, status, instance JSON)*m,
--   k, (trigger, latest kwargs JSON)*k,
--   c, (task name, counter)*c
-- Returns the new version (a string), or false when the version changed
-- (nothing is written then).
--
-- The version is max(previous + 1, server time in microseconds), so a session
-- deleted and created again never reuses a version a slow step may still hold.

local args = cjson.decode(ARGV[1])
local current = redis.call('HGET', KEYS[1], 'version') or '0'
if current ~= args[1] then
  return false
end

local pos = 4
local function take()
  local value = args[pos]
  pos = pos + 1
  return value
end

-- A JSON list of names kept in a hash field, edited as a set.
local function edit_list(key, field, edits)
  local text = redis.call('HGET', key, field)
  local members, present = {}, {}
  if text then
    for _, name in ipairs(cjson.decode(text)) do
      present[name] = true
      members[#members + 1] = name
    end
  end
  local changed = false
  for name, keep in pairs(edits) do
    if keep and not present[name] then
      present[name] = true
      members[#members + 1] = name
      changed = true
    elseif not keep and present[name] then
      present[name] = nil
      changed = true
    end
  end
  if not changed then return end
  local out = {}
  for _, name in ipairs(members) do
    if present[name] then out[#out + 1] = name end
  end
  if #out == 0 then
    redis.call('HDEL', key, field)
  else
    redis.call('HSET', key, field, cjson.encode(out))
  end
end

-- Task configurations, and the trigger index (trigger -> tasks using it).
local index_edits = {}
local function index_edit(trigger, task, keep)
  local edits = index_edits[trigger]
  if not edits then
    edits = {}
    index_edits[trigger] = edits
  end
  edits[task] = keep
end
for _ = 1, tonumber(take()) do
  local name, config, triggers = take(), take(), take()
  redis.call('HSET', KEYS[2], name, config)
  local old = redis.call('HGET', KEYS[3], name)
  if old ~= triggers then
    if old then
      for _, trigger in ipairs(cjson.decode(old)) do index_edit(trigger, name, false) end
    end
    for _, trigger in ipairs(cjson.decode(triggers)) do index_edit(trigger, name, true) end
    redis.call('HSET', KEYS[3], name, triggers)
  end
end
for trigger, edits in pairs(index_edits) do edit_list(KEYS[4], trigger, edits) end

-- Instances, and the per-task lists of unstarted instances.
local unstarted_edits = {}
for _ = 1, tonumber(take()) do
  local name, task, status, data = take(), take(), take(), take()
  redis.call('HSET', KEYS[5], name, data)
  local edits = unstarted_edits[task]
  if not edits then
    edits = {}
    unstarted_edits[task] = edits
  end
  edits[name] = (status == 'unstarted')
end
for task, edits in pairs(unstarted_edits) do edit_list(KEYS[6], task, edits) end

for _ = 1, tonumber(take()) do
  local trigger, kwargs = take(), take()
  redis.call('HSET', KEYS[7], trigger, kwargs)
end

for _ = 1, tonumber(take()) do
  local task, counter = take(), take()
  redis.call('HSET', KEYS[8], task, counter)
end

local time = redis.call('TIME')
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
local version = tonumber(current) + 1
if now_us > version then version = now_us end
version = string.format('%.0f', version)
local now = string.format('%d.%06d', tonumber(time[1]), tonumber(time[2]))
redis.call('HSET', KEYS[1], 'version', version, 'modified', now, 'commit', args[3])
redis.call('HSETNX', KEYS[1], 'created', now)

local ttl = tonumber(args[2])
for i = 1, #KEYS do
  if ttl then
    redis.call('EXPIRE', KEYS[i], ttl)
  else
    redis.call('PERSIST', KEYS[i])
  end
end
return version
