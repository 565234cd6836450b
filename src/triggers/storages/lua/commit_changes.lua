-- Commit the changes of one atomic step, only if what the step read is unchanged
-- (compare-and-set on versions).
--
-- KEYS: the session's keys, in this order:
--   1 meta  2 tasks  3 tasktriggers  4 index  5 instances  6 unstarted  7 kwargs  8 counters
--   9 versions
-- ARGV[1]: a JSON array:
--   check, ttl seconds ('' = keys never expire), commit token,
--   n, (task name, config JSON, JSON list of the task's triggers)*n,
--   m, (instance name, task name, status, instance JSON)*m,
--   k, (trigger, latest kwargs JSON)*k,
--   c, (task name, counter)*c
-- where check is either
--   ["session", version, bump epoch, [task...]]: the whole session must still be
--     at that version. With bump epoch (acquire_lock()/save(): the caller may
--     have looked at, and changed, anything) the epoch becomes the new version,
--     so steps in flight elsewhere start over; the tasks listed are those the
--     step read (a step rebuilt from the previous one), or
--   ["tasks", epoch, [task, version, task, version, ...]]: the epoch (bumped by
--     whole-session commits) and the version of every task the step read must be
--     unchanged. A step reads only tasks that use its triggers or own its named
--     instances (with their unstarted instances, and the latest kwargs of the
--     triggers those tasks use), and every commit gives a new version to every
--     task it read or changed; so two steps conflict exactly when they share a
--     task, and steps on disjoint tasks of one session never conflict.
-- Returns "<new session version> <session version before this commit>", or
-- false on a conflict (nothing is written then).
--
-- Versions are max(previous + 1, server time in microseconds): a session deleted
-- and created again never reuses a version a slow step may still hold. Every
-- task a commit touches gets the new session version as its task version.

local args = cjson.decode(ARGV[1])
local check = args[1]
local meta = redis.call('HMGET', KEYS[1], 'version', 'epoch')
local current = meta[1]
if check[1] == 'session' then
  if (current or '0') ~= check[2] then return false end
else
  if (meta[2] or '0') ~= check[2] then return false end
  local expected = check[3]
  local n = #expected
  for i = 1, n, 2000 do
    local j = math.min(i + 1999, n)
    local fields = {}
    for k = i, j, 2 do fields[#fields + 1] = expected[k] end
    local found = redis.call('HMGET', KEYS[9], unpack(fields))
    for k = 1, #fields do
      if (found[k] or '0') ~= expected[i + 2 * k - 1] then return false end
    end
  end
end
local ttl = tonumber(args[2])
-- Whether the session's keys currently expire (checked before writing anything).
local had_ttl = (not ttl) and current and redis.call('PTTL', KEYS[1]) >= 0

local pos = 4
local function take()
  local value = args[pos]
  pos = pos + 1
  return value
end

-- HSET of many field/value pairs, in chunks (Lua's unpack is limited by the C stack).
local function hset_many(key, pairs_list)
  local n = #pairs_list
  for i = 1, n, 1000 do
    redis.call('HSET', key, unpack(pairs_list, i, math.min(i + 999, n)))
  end
end

-- HMGET / HDEL of many fields, in chunks.
local function hmget_many(key, fields)
  local out = {}
  local n = #fields
  for i = 1, n, 1000 do
    local j = math.min(i + 999, n)
    local part = redis.call('HMGET', key, unpack(fields, i, j))
    for k = 1, j - i + 1 do out[#out + 1] = part[k] end
  end
  return out
end

local function hdel_many(key, fields)
  local n = #fields
  for i = 1, n, 1000 do
    redis.call('HDEL', key, unpack(fields, i, math.min(i + 999, n)))
  end
end

-- Hash fields holding JSON lists of names, edited as sets:
-- edits[field][name] = true (add) or false (remove). Two calls for any number of fields.
local function edit_lists(key, edits)
  local fields = {}
  for field in pairs(edits) do fields[#fields + 1] = field end
  if #fields == 0 then return end
  local texts = hmget_many(key, fields)
  local sets, deletes = {}, {}
  for i, field in ipairs(fields) do
    local members, present = {}, {}
    if texts[i] then
      for _, name in ipairs(cjson.decode(texts[i])) do
        present[name] = true
        members[#members + 1] = name
      end
    end
    local changed = false
    for name, keep in pairs(edits[field]) do
      if keep and not present[name] then
        present[name] = true
        members[#members + 1] = name
        changed = true
      elseif not keep and present[name] then
        present[name] = nil
        changed = true
      end
    end
    if changed then
      local out = {}
      for _, name in ipairs(members) do
        if present[name] then out[#out + 1] = name end
      end
      if #out == 0 then
        deletes[#deletes + 1] = field
      else
        sets[#sets + 1] = field
        sets[#sets + 1] = cjson.encode(out)
      end
    end
  end
  if #sets > 0 then hset_many(key, sets) end
  if #deletes > 0 then hdel_many(key, deletes) end
end

local function add_edit(edits, field, name, keep)
  local edit = edits[field]
  if not edit then
    edit = {}
    edits[field] = edit
  end
  edit[name] = keep
end

-- Tasks whose version this commit bumps: every task the step read, and every
-- task it changed. Bumping the tasks it only read matters: a fire records its
-- trigger's latest kwargs, which steps reading any task using that trigger may
-- have used (a new instance takes the latest kwargs of its other triggers).
local touched = {}
if check[1] == 'tasks' then
  local expected = check[3]
  for i = 1, #expected, 2 do touched[expected[i]] = true end
else
  for _, task in ipairs(check[4]) do touched[task] = true end
end

-- Task configurations, and the trigger index (trigger -> tasks using it).
local n_tasks = tonumber(take())
if n_tasks > 0 then
  local configs, names, new_triggers = {}, {}, {}
  for i = 1, n_tasks do
    local name, config, triggers = take(), take(), take()
    configs[#configs + 1] = name
    configs[#configs + 1] = config
    names[i] = name
    new_triggers[i] = triggers
  end
  hset_many(KEYS[2], configs)
  for i = 1, n_tasks do touched[names[i]] = true end
  local old_triggers = hmget_many(KEYS[3], names)
  local index_edits, changed = {}, {}
  for i, name in ipairs(names) do
    if old_triggers[i] ~= new_triggers[i] then
      if old_triggers[i] then
        for _, trigger in ipairs(cjson.decode(old_triggers[i])) do
          add_edit(index_edits, trigger, name, false)
        end
      end
      for _, trigger in ipairs(cjson.decode(new_triggers[i])) do
        add_edit(index_edits, trigger, name, true)
      end
      changed[#changed + 1] = name
      changed[#changed + 1] = new_triggers[i]
    end
  end
  if #changed > 0 then hset_many(KEYS[3], changed) end
  edit_lists(KEYS[4], index_edits)
end

-- Instances, and the per-task lists of unstarted instances.
local n_instances = tonumber(take())
if n_instances > 0 then
  local records, unstarted_edits = {}, {}
  for _ = 1, n_instances do
    local name, task, status, data = take(), take(), take(), take()
    records[#records + 1] = name
    records[#records + 1] = data
    add_edit(unstarted_edits, task, name, status == 'unstarted')
    touched[task] = true
  end
  hset_many(KEYS[5], records)
  edit_lists(KEYS[6], unstarted_edits)
end

-- Latest kwargs, then counters: (field, value) pairs.
for key = 7, 8 do
  local n = tonumber(take())
  if n > 0 then
    local records = {}
    for i = 1, 2 * n do records[i] = take() end
    hset_many(KEYS[key], records)
    if key == 8 then
      for i = 1, 2 * n, 2 do touched[records[i]] = true end
    end
  end
end

local time = redis.call('TIME')
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
local version = tonumber(current or '0') + 1
if now_us > version then version = now_us end
version = string.format('%.0f', version)
local now = string.format('%d.%06d', tonumber(time[1]), tonumber(time[2]))
local fields = { 'version', version, 'modified', now, 'commit', args[3] }
if not current then
  fields[#fields + 1] = 'created'
  fields[#fields + 1] = now
end
if check[1] == 'session' and check[3] then
  fields[#fields + 1] = 'epoch'
  fields[#fields + 1] = version
end
redis.call('HSET', KEYS[1], unpack(fields))
local task_versions = {}
for task in pairs(touched) do
  task_versions[#task_versions + 1] = task
  task_versions[#task_versions + 1] = version
end
if #task_versions > 0 then hset_many(KEYS[9], task_versions) end

if ttl then
  for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ttl) end
elseif had_ttl then
  for i = 1, #KEYS do redis.call('PERSIST', KEYS[i]) end
end
return version .. ' ' .. (current or '0')
