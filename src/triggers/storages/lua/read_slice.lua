-- Read the part of one session that an atomic step concerns, in one round trip.
--
-- KEYS: the session's keys, in this order:
--   1 meta  2 tasks  3 tasktriggers  4 index  5 instances  6 unstarted  7 kwargs  8 counters
--   9 versions
-- ARGV[1]: JSON [triggers, tasks, instance names]
--   triggers: the step's triggers; tasks: the tasks of the named instances;
--   instance names: instances the step names explicitly.
-- Returns one JSON string holding a flat array (one reply to parse, not many):
--   session version, epoch,
--   #firing, firing task names...,
--   #tasks, (task name, config JSON, counter)...,
--   #versions, (task name, task version)...   (every task read, '0' if none),
--   #instances, (instance name, instance JSON)...,
--   #kwargs, (trigger, latest kwargs JSON)...
-- "firing" tasks are the ones using one of the triggers; the instances are the
-- unstarted instances of the firing tasks plus the named instances that exist.

-- HMGET in chunks (Lua's unpack is limited by the C stack).
local function hmget(key, fields)
  local out = {}
  local n = #fields
  for i = 1, n, 1000 do
    local j = math.min(i + 999, n)
    local part = redis.call('HMGET', key, unpack(fields, i, j))
    for k = 1, j - i + 1 do
      out[#out + 1] = part[k]
    end
  end
  return out
end

local request = cjson.decode(ARGV[1])
local triggers, wanted, names = request[1], request[2], request[3]

local meta = redis.call('HMGET', KEYS[1], 'version', 'epoch')
local version, epoch = meta[1] or '0', meta[2] or '0'

-- Tasks using the triggers, through the trigger index.
local firing, is_firing = {}, {}
if #triggers > 0 then
  for _, text in ipairs(hmget(KEYS[4], triggers)) do
    if text then
      for _, task in ipairs(cjson.decode(text)) do
        if not is_firing[task] then
          is_firing[task] = true
          firing[#firing + 1] = task
        end
      end
    end
  end
end

-- Their configurations and counters, plus those of the named instances' tasks.
local task_names = {}
for i = 1, #firing do task_names[i] = firing[i] end
for _, task in ipairs(wanted) do
  if not is_firing[task] then task_names[#task_names + 1] = task end
end
local configs, counters, versions = {}, {}, {}
if #task_names > 0 then
  configs = hmget(KEYS[2], task_names)
  counters = hmget(KEYS[8], task_names)
  versions = hmget(KEYS[9], task_names)
end

-- Unstarted instances of the firing tasks, plus the named instances.
local instance_names, seen = {}, {}
for _, name in ipairs(names) do
  if not seen[name] then
    seen[name] = true
    instance_names[#instance_names + 1] = name
  end
end
if #firing > 0 then
  for _, text in ipairs(hmget(KEYS[6], firing)) do
    if text then
      for _, name in ipairs(cjson.decode(text)) do
        if not seen[name] then
          seen[name] = true
          instance_names[#instance_names + 1] = name
        end
      end
    end
  end
end
local instances = {}  -- name, JSON, name, JSON, ...
if #instance_names > 0 then
  local texts = hmget(KEYS[5], instance_names)
  for i = 1, #instance_names do
    if texts[i] then
      instances[#instances + 1] = instance_names[i]
      instances[#instances + 1] = texts[i]
    end
  end
end

-- Latest kwargs of every trigger the firing tasks use.
local used, is_used = {}, {}
if #firing > 0 then
  for _, text in ipairs(hmget(KEYS[3], firing)) do
    if text then
      for _, trigger in ipairs(cjson.decode(text)) do
        if not is_used[trigger] then
          is_used[trigger] = true
          used[#used + 1] = trigger
        end
      end
    end
  end
end
local kwargs = {}
if #used > 0 then
  local values = hmget(KEYS[7], used)
  for i = 1, #used do
    if values[i] then
      kwargs[#kwargs + 1] = used[i]
      kwargs[#kwargs + 1] = values[i]
    end
  end
end

local out = { version, epoch, #firing }
for i = 1, #firing do out[#out + 1] = firing[i] end
local present = {}
for i = 1, #task_names do
  if configs[i] then
    present[#present + 1] = task_names[i]
    present[#present + 1] = configs[i]
    present[#present + 1] = counters[i] or '0'
  end
end
out[#out + 1] = #present / 3
for i = 1, #present do out[#out + 1] = present[i] end
out[#out + 1] = #task_names
for i = 1, #task_names do
  out[#out + 1] = task_names[i]
  out[#out + 1] = versions[i] or '0'
end
out[#out + 1] = #instances / 2
for i = 1, #instances do out[#out + 1] = instances[i] end
out[#out + 1] = #kwargs / 2
for i = 1, #kwargs do out[#out + 1] = kwargs[i] end
return cjson.encode(out)
