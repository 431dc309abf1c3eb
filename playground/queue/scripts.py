"""Every Lua script that changes or reads the job queue, the frontend's and the scheduler's.

Each runs atomically in Redis, so a job is never seen half-moved between two states
(states.py). Keys are named as in keys.py; a script that walks the queue builds the
per-job names from the prefix the same way.
"""
from __future__ import annotations

from playground.queue.states import CANCELLED, DONE, FAILED, QUEUED, RUNNING

# The statuses as Lua locals at the head of each script, so their strings live only in states.py.
_STATUSES = (f"local QUEUED, RUNNING, DONE, FAILED, CANCELLED = "
             f"'{QUEUED}', '{RUNNING}', '{DONE}', '{FAILED}', '{CANCELLED}'\n")

# Every time that orders events is Redis's own clock, never a worker's or a frontend's:
# machines' clocks differ, Redis's is the one they share. (Scripts replicate their effects,
# so reading TIME before writing is allowed.)
_NOW = """
local function now()
  local t = redis.call('TIME')
  return t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
"""

# A worker's change to a job it claimed counts only while the job is still running under
# that claim: a worker paused or cut off longer than its heartbeat may have lost the job to
# another, and its late changes must be refused (fencing). KEYS[2] is the job hash.
_STILL_MINE = """
local function still_mine(claim)
  return redis.call('HGET', KEYS[2], 'status') == RUNNING and redis.call('HGET', KEYS[2], 'claim') == claim
end
"""

# Each model has its own FIFO; jobs that name no model (queued before any backend said which
# it serves) wait in the plain queue, which every worker takes from first. `prefix` is a
# script's ARGV value; keys.py names them the same way.
_QUEUES = """
local function queue_of(prefix, model)
  if not model or model == '' then return prefix .. ':queue' end
  return prefix .. ':queue:' .. model
end
local function all_queues(prefix)
  local queues = {prefix .. ':queue'}
  for _, model in ipairs(redis.call('SORT', prefix .. ':models', 'ALPHA')) do
    table.insert(queues, queue_of(prefix, model))
  end
  return queues
end
"""

# -- the frontend's side -------------------------------------------------------------------

# Queue a new job (its hash's fields, flat) in its model's queue. A job naming no model goes to
# the one model all live workers serve, where their blocking claim wakes at once; only with
# several models (or none reported) does it wait in the plain queue, which workers look at
# between claims. Returns "<creation time> <model>". Shared by a submit and by the commit of a
# job that queues upscales of its pictures (FINISH), so both queue a job the same way.
_QUEUE_JOB = _NOW + _QUEUES + """
local function queue_job(prefix, job_id, model, fields)
  if model == '' then
    local served = nil
    for _, wid in ipairs(redis.call('SMEMBERS', prefix .. ':workers')) do
      local served_by = redis.call('HGET', prefix .. ':worker:' .. wid, 'model')
      if served_by and served_by ~= '' and redis.call('EXISTS', prefix .. ':worker:' .. wid .. ':alive') == 1 then
        if served == nil then served = served_by elseif served ~= served_by then served = false end
      end
    end
    if served then model = served end
  end
  local created = now()
  redis.call('HSET', prefix .. ':job:' .. job_id, 'created_at', created, 'model', model, unpack(fields))
  if model ~= '' then redis.call('SADD', prefix .. ':models', model) end
  redis.call('RPUSH', queue_of(prefix, model), job_id)
  return created .. ' ' .. model
end
"""

# Queue a new job unless max_queued jobs wait in all queues together. Returns "<creation time>
# <model>", or 0 when full.
# KEYS: models set, job hash. ARGV: max_queued, job id, prefix, model, then field, value, ...
SUBMIT = _QUEUE_JOB + """
local prefix = ARGV[3]
local waiting = 0
for _, queue in ipairs(all_queues(prefix)) do waiting = waiting + redis.call('LLEN', queue) end
if waiting >= tonumber(ARGV[1]) then return 0 end
return queue_job(prefix, ARGV[2], ARGV[4], {unpack(ARGV, 5)})
"""

# Everything /queue_status needs in one round trip: the workers (alive or not, their model,
# slots, running job and speed) and every queue's jobs in order, each with its hash. Encoded as one
# JSON string, which Python decodes far faster than thousands of nested RESP replies.
# KEYS: unused, workers, speed, upscale speed. ARGV: prefix.
UNFINISHED = _QUEUES + """
local prefix = ARGV[1]
-- A continuation's start picture and the codes are left out: /queue_status never shows them.
local HEAVY = {init_picture = true, init_codes = true, codes = true}
local function job(jid)
  local flat = redis.call('HGETALL', prefix .. ':job:' .. jid)
  if #flat == 0 then return nil end
  local h = {}
  for i = 1, #flat, 2 do
    if not HEAVY[flat[i]] then h[flat[i]] = flat[i + 1] end
  end
  return h
end
local workers = {}
for _, wid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local running = {}
  for _, jid in ipairs(redis.call('LRANGE', prefix .. ':processing:' .. wid, 0, -1)) do
    local h = job(jid)
    if h then table.insert(running, h) end
  end
  table.insert(workers, {id = wid, alive = redis.call('EXISTS', prefix .. ':worker:' .. wid .. ':alive'),
                         model = redis.call('HGET', prefix .. ':worker:' .. wid, 'model') or '',
                         slots = redis.call('HGET', prefix .. ':worker:' .. wid, 'slots') or '',
                         speed = redis.call('HGET', KEYS[3], wid) or '',
                         upscale_speed = redis.call('HGET', KEYS[4], wid) or '', running = running})
end
local queued = {}
for _, queue in ipairs(all_queues(prefix)) do
  for _, jid in ipairs(redis.call('LRANGE', queue, 0, -1)) do
    local h = job(jid)
    if h then table.insert(queued, h) end
  end
end
local t = redis.call('TIME')
return cjson.encode({workers = workers, queued = queued, now = tonumber(t[1]) + tonumber(t[2]) / 1e6})
"""

# Queued jobs are cancelled at once; running ones are flagged for their worker; finished
# ones are left alone. Returns the new status, '' when the job does not exist.
# KEYS: unused, job hash. ARGV: job id, finished ttl, prefix.
CANCEL = _STATUSES + _NOW + _QUEUES + """
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return '' end
if status == QUEUED then
  redis.call('LREM', queue_of(ARGV[3], redis.call('HGET', KEYS[2], 'model')), 0, ARGV[1])
  redis.call('HSET', KEYS[2], 'status', CANCELLED, 'finished_at', now())
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
  return CANCELLED
end
if status == RUNNING then
  redis.call('HSET', KEYS[2], 'cancel_requested', '1')
end
return status
"""

# -- the scheduler's side ------------------------------------------------------------------

# Claim the oldest queued job of the first non-empty queue: move it into the worker's
# processing list and mark it running under a new claim number (the fencing token of this
# attempt: it only ever grows), stamped with Redis's time. Move and stamp are one step, so
# two workers claiming at once stamp `started_at` in the order they took their jobs, and no
# job is ever moved but not started. A job that is no longer queued (cancelled while it sat
# there) is dropped on the way. Returns the job's hash, or 0 when every queue is empty.
# KEYS: processing list, worker hash. ARGV: worker id, backend url, prefix, then the queues
# to take from, in order.
CLAIM = _STATUSES + _NOW + """
for i = 4, #ARGV do
  local jid = redis.call('LMOVE', ARGV[i], KEYS[1], 'LEFT', 'LEFT')
  while jid do
    local job = ARGV[3] .. ':job:' .. jid
    if redis.call('HGET', job, 'status') == QUEUED then
      local started = now()
      redis.call('HSET', job, 'status', RUNNING, 'started_at', started, 'progress_at', started,
                 'worker', ARGV[1], 'backend', ARGV[2], 'tokens_done', '0', 'cancel_requested', '0')
      redis.call('HDEL', job, 'preview_tokens')
      redis.call('HINCRBY', job, 'attempts', 1)
      redis.call('HINCRBY', job, 'claim', 1)
      redis.call('HSET', KEYS[2], 'job_id', jid)
      return redis.call('HGETALL', job)
    end
    redis.call('LREM', KEYS[1], 0, jid)
    jid = redis.call('LMOVE', ARGV[i], KEYS[1], 'LEFT', 'LEFT')
  end
end
return 0
"""

# Store a running job's progress, and when its worker last heard from the backend
# (`progress_at`: a job whose backend goes quiet shows as stalled). Returns 1 when a cancel was
# asked for, 0 when not, and -1 when the claim is no longer the job's (nothing is written).
# KEYS: processing list (unused), job hash. ARGV: claim, then field, value, ...
PROGRESS = _STATUSES + _NOW + _STILL_MINE + """
if not still_mine(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[2], 'progress_at', now(), unpack(ARGV, 2))
if redis.call('HGET', KEYS[2], 'cancel_requested') == '1' then return 1 end
return 0
"""

# Replace a running job's preview with a newer one: the tokens it shows and one picture per
# image, in the preview hash (with a TTL, should the job's end never delete it) and the
# tokens in the job's hash too (/queue_status shows them). Returns as PROGRESS does.
# KEYS: processing list (unused), job hash, preview hash. ARGV: claim, ttl, tokens_done,
# then each image's picture.
PREVIEW = _STATUSES + _STILL_MINE + """
if not still_mine(ARGV[1]) then return -1 end
local fields = {'tokens_done', ARGV[3]}
for i = 4, #ARGV do
  table.insert(fields, tostring(i - 4))
  table.insert(fields, ARGV[i])
end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], unpack(fields))
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]))
redis.call('HSET', KEYS[2], 'preview_tokens', ARGV[3])
if redis.call('HGET', KEYS[2], 'cancel_requested') == '1' then return 1 end
return 0
"""

# Record how a running job ended (the fields include its finished status). A job finishing
# as done whose cancel was asked for meanwhile ends cancelled instead; one ending done has
# all its tokens, and queues the jobs it asked for (the upscales of its pictures: a JSON list of
# {id, model, fields}) in the same step, so they are queued exactly when it commits, once. Over
# max_queued, as a job accepted before. Returns the status recorded with the finish time
# ("done 1732612345.123456"), or '' when the claim is no longer the job's: nothing is changed
# then (the caller's result is late and is dropped). Its preview goes with it. For a done job
# this is the commit point of its result: the library publishes it only after this
# (LibraryStore.add_job).
# KEYS: processing list, job hash, worker hash, preview hash.
# ARGV: job id, claim, ttl, status, prefix, the jobs to queue when done, field, value, ...
FINISH = _STATUSES + _STILL_MINE + _QUEUE_JOB + """
if not still_mine(ARGV[2]) then return '' end
redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('DEL', KEYS[4])
redis.call('HDEL', KEYS[2], 'preview_tokens')
redis.call('HSET', KEYS[3], 'job_id', '')
local status = ARGV[4]
local finished = now()
if status ~= CANCELLED and redis.call('HGET', KEYS[2], 'cancel_requested') == '1' then
  status = CANCELLED
  redis.call('HSET', KEYS[2], 'status', status, 'finished_at', finished, 'error', '')
else
  redis.call('HSET', KEYS[2], 'status', status, 'finished_at', finished, unpack(ARGV, 7))
  if status == DONE then
    redis.call('HSET', KEYS[2], 'tokens_done', redis.call('HGET', KEYS[2], 'total_tokens'))
    for _, queued in ipairs(cjson.decode(ARGV[6])) do
      queue_job(ARGV[5], queued.id, queued.model, queued.fields)
    end
  end
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return status .. ' ' .. finished
"""

# Put a job back in the queue where its submission puts it, or fail it when it has had its attempts, or
# cancel it when that was asked. Returns the new status, '' when nothing was done.
# The worker putting back its own job names its claim (refused, '', when no longer the
# job's); recovery of a dead worker's job names none: the job is in that worker's
# processing list, which nobody else can have claimed it into. The attempt's preview goes.
# KEYS: processing list, job hash, preview hash, worker hash, the worker's alive key.
# ARGV: job id, reason, count_attempt (1/0), max attempts, claim ('' = recovery), ttl,
#       only_if_dead (1/0: leave it alone if that worker has come back), prefix.
PUT_BACK = _STATUSES + _NOW + _STILL_MINE + _QUEUES + """
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[5]) == 1 then return '' end
if ARGV[5] ~= '' and not still_mine(ARGV[5]) then return '' end
if redis.call('LREM', KEYS[1], 0, ARGV[1]) == 0 then return '' end
redis.call('HSET', KEYS[4], 'job_id', '')
redis.call('DEL', KEYS[3])
if redis.call('EXISTS', KEYS[2]) == 0 then return '' end
-- Already finished: cancelled between a claim's move and its start. It stays so.
local current = redis.call('HGET', KEYS[2], 'status')
if current ~= QUEUED and current ~= RUNNING then return '' end
redis.call('HDEL', KEYS[2], 'preview_tokens')
local finish = function(status, err)
  redis.call('HSET', KEYS[2], 'status', status, 'finished_at', now(), 'error', err)
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
  return status
end
if redis.call('HGET', KEYS[2], 'cancel_requested') == '1' then return finish(CANCELLED, '') end
local attempts = tonumber(redis.call('HGET', KEYS[2], 'attempts') or '0')
if ARGV[3] == '1' and attempts >= tonumber(ARGV[4]) then
  return finish(FAILED, 'gave up after ' .. attempts .. ' attempts; last: ' .. ARGV[2])
end
if ARGV[3] ~= '1' and attempts > 0 then attempts = attempts - 1 end
redis.call('HSET', KEYS[2], 'status', QUEUED, 'attempts', attempts, 'last_error', ARGV[2],
           'tokens_done', '0', 'started_at', '', 'worker', '', 'backend', '')
-- Back in submission order, not simply at the front, so jobs put back together (a batch's
-- slots, several backends) keep theirs. Only jobs put back before it can be older than it, so
-- the walk from the head is short.
local queue = queue_of(ARGV[8], redis.call('HGET', KEYS[2], 'model'))
local created = tonumber(redis.call('HGET', KEYS[2], 'created_at') or '0')
for i = 0, redis.call('LLEN', queue) - 1 do
  local other = redis.call('LINDEX', queue, i)
  if tonumber(redis.call('HGET', ARGV[8] .. ':job:' .. other, 'created_at') or '0') > created then
    redis.call('LINSERT', queue, 'BEFORE', other, ARGV[1])
    return QUEUED
  end
end
redis.call('RPUSH', queue, ARGV[1])
return QUEUED
"""

# Take a worker's identity if it is free, ours, or its holder is known to be dead.
# Returns Redis's time (the heartbeat's), or 0 when another live process holds it.
# KEYS: alive key. ARGV: owner, ttl, predecessor to replace ('' = none).
TAKE_IDENTITY = _NOW + """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and holder ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return now()
"""

# Remove a worker that stops cleanly, unless another process has taken over its identity.
# KEYS: alive key, workers set, worker hash. ARGV: owner, worker id.
UNREGISTER = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"""

# Add a finished job's (pictures, seconds) to a worker's recent ones, keeping the newest
# ARGV[4]; returns them as JSON, oldest first (the ETA's cost is fitted to them: eta.py).
# KEYS: speed hash. ARGV: worker id, pictures, seconds, how many to keep.
RECORD_JOB_TIME = """
local samples = {}
local ok, old = pcall(cjson.decode, redis.call('HGET', KEYS[1], ARGV[1]) or '[]')
if ok and type(old) == 'table' then samples = old end  -- an older version's number: start again
table.insert(samples, {tonumber(ARGV[2]), tonumber(ARGV[3])})
while #samples > tonumber(ARGV[4]) do table.remove(samples, 1) end
local encoded = cjson.encode(samples)
redis.call('HSET', KEYS[1], ARGV[1], encoded)
return encoded
"""
