-- Apply one job update atomically: check the transition, merge, bump seq, write,
-- set the TTL, publish the full state. Mirrors immortus_async.state.apply_update
-- and immortus_async.status.is_forward; tests hold the two to one table.
--
-- KEYS[1] the job's hash, KEYS[2] its tombstone
-- ARGV[1] channel, ARGV[2] job id, ARGV[3] the update (JSON; meta values and result
-- pre-encoded; `since` starts a new run of an id whose record ended before it),
-- ARGV[4] TTL ms while active, ARGV[5] TTL ms once terminal, ARGV[6] tombstone's extra ms,
-- ARGV[7] a heartbeat to record with a `started` update ('' for none)
-- ARGV[8] the job's owner, given at enqueue ('' for none), ARGV[9] what every owner
-- channel starts with (the owner and '}' follow), ARGV[10] the record's seq that the
-- update was decided on ('' for any): a record that moved since drops it
-- Returns the new state's JSON, or false when the update was dropped.

local RANK = {unknown = -1, queued = 0, started = 1, retrying = 2,
              finished = 3, failed = 3, aborted = 3, expired = 4}
local FINAL = {finished = true, aborted = true, expired = true}
local TERMINAL = {finished = true, failed = true, aborted = true, expired = true}

local function given(v) return v ~= nil and v ~= cjson.null end

local function forward(cs, ca, ns, na)
  if cs == 'unknown' then return ns ~= 'unknown' end
  if FINAL[cs] or ns == 'unknown' or ns == 'expired' then return false end
  if na < ca then return false end
  if na > ca then return ns ~= 'queued' end
  if cs == 'started' and ns == 'started' then return true end
  return RANK[ns] > RANK[cs]
end

local u = cjson.decode(ARGV[3])
local stored = redis.call('HMGET', KEYS[1], 'state', 'meta', 'result', 'owner')
local function fresh(seq)
  local new = {job_id = ARGV[2], status = 'unknown', progress = cjson.null, error = cjson.null,
               attempt = 0, seq = seq, enqueued_at = cjson.null, started_at = cjson.null,
               finished_at = cjson.null}
  new['function'] = cjson.null
  return new
end
-- A queued update with `since` (an enqueue that began after the record ended)
-- starts the id's new run: a fresh record whose seq goes on growing.
local renew = u.status == 'queued' and u.attempt == 0 and type(u.since) == 'string'
local cur, meta
local result = stored[3]
local owner = stored[4]
if stored[1] then
  cur = cjson.decode(stored[1])
  meta = cjson.decode(stored[2] or '{}')
  if renew and TERMINAL[cur.status] and type(cur.finished_at) == 'string'
      and cur.finished_at < u.since then
    cur, meta, result, owner = fresh(cur.seq), {}, false, false
    redis.call('HDEL', KEYS[1], 'result', 'hb', 'owner')
  end
else
  local tombstone = redis.call('GET', KEYS[2])
  if tombstone and not renew then return false end
  -- An expired record read seq tombstone + 1: the new run goes on from there.
  cur = fresh(tombstone and tonumber(tombstone) + 1 or 0)
  meta = {}
end

-- A catch-up from the queue's own records was true of the record at that seq: over
-- what the job side wrote since, it would tell every waiter that again.
if ARGV[10] and ARGV[10] ~= '' and (cur.seq or 0) ~= tonumber(ARGV[10]) then return false end

-- The job's first owner keeps it (a new run takes its enqueue's); the job side's
-- writes find it here, and publish on its channel too.
local claims = ARGV[8] ~= '' and not owner
if claims then owner = ARGV[8] end

if not forward(cur.status, cur.attempt, u.status, u.attempt) then
  if claims and stored[1] then
    -- The worker wrote ahead of the queued state (it started, or ended, the job
    -- first): the job still joins its owner, whose readers re-read it.
    redis.call('HSET', KEYS[1], 'owner', owner)
    redis.call('PUBLISH', ARGV[9] .. owner .. '}', cjson.encode({reread = ARGV[2]}))
  end
  return false
end

local new_attempt = u.attempt > cur.attempt and u.status == 'started'
if new_attempt then
  cur.progress = cjson.null
  cur.error = cjson.null
end
cur.status = u.status
if u.attempt > cur.attempt then cur.attempt = u.attempt end
cur.seq = cur.seq + 1
if given(u.progress) then cur.progress = u.progress end
if given(u.error) then cur.error = u.error end
if given(u['function']) and u['function'] ~= '' then cur['function'] = u['function'] end
if type(u.meta) == 'table' then
  for k, v in pairs(u.meta) do meta[k] = v end
end
if u.status == 'finished' then
  cur.progress = 1
  if type(u.result) == 'string' then
    result = u.result
    redis.call('HSET', KEYS[1], 'result', result)
  end
end
if u.status == 'queued' then
  if not given(cur.enqueued_at) then cur.enqueued_at = u.at end
elseif u.status == 'started' then
  if new_attempt or not given(cur.started_at) then cur.started_at = u.at end
elseif TERMINAL[u.status] then
  cur.finished_at = u.at
end

local state_json = cjson.encode(cur)
local meta_json = cjson.encode(meta)
redis.call('HSET', KEYS[1], 'state', state_json, 'meta', meta_json)
if claims then redis.call('HSET', KEYS[1], 'owner', owner) end
if u.status == 'started' and ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'hb', ARGV[7]) end
if TERMINAL[u.status] then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('SET', KEYS[2], cur.seq, 'PX', tonumber(ARGV[5]) + tonumber(ARGV[6]))
else
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end

-- The wire form: scalar fields, "completed", and meta and the result with their
-- values spliced in verbatim (cjson would turn an empty JSON array into an object).
local keys = {}
for k in pairs(meta) do keys[#keys + 1] = k end
table.sort(keys)
local parts = {}
for i, k in ipairs(keys) do parts[i] = cjson.encode(k) .. ':' .. meta[k] end
cur.completed = TERMINAL[cur.status] == true
cur.stalled = false
-- A started job's heartbeat travels with it: its watchers know when to look.
if u.status == 'started' and ARGV[7] ~= '' then cur.hb = ARGV[7] end
local wire = string.sub(cjson.encode(cur), 1, -2) .. ',"meta":{' .. table.concat(parts, ',')
  .. '},"result":' .. (result or 'null') .. '}'
redis.call('PUBLISH', ARGV[1], wire)
-- Not sharded: the owner's channel is in another slot than the job's keys.
if owner then redis.call('PUBLISH', ARGV[9] .. owner .. '}', wire) end
return wire
