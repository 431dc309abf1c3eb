"""Every Lua script that changes or reads the job queue, the frontend's and the scheduler's.

Each runs atomically in Redis, so a job is never seen half-moved between two states
(states.py). Keys are named as in keys.py; a script that walks the queue builds the
per-job names from the prefix the same way.
"""
from __future__ import annotations

from playground.queue.states import CANCELLED, FAILED, QUEUED, RUNNING

# The statuses as Lua locals at the head of each script, so their strings live only in states.py.
_STATUSES = f"local QUEUED, RUNNING, FAILED, CANCELLED = '{QUEUED}', '{RUNNING}', '{FAILED}', '{CANCELLED}'\n"

# -- the frontend's side -------------------------------------------------------------------

# Queue a new job unless the queue is full. Returns 1, or 0 when full.
# KEYS: queue, job hash. ARGV: max_queued, job id, then field, value, ...
SUBMIT = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('RPUSH', KEYS[1], ARGV[2])
return 1
"""

# Everything /queue_status needs in one round trip: the workers (alive or not, their
# running job, their speed) and the queued jobs, each with its hash. Encoded as one JSON
# string, which Python decodes far faster than thousands of nested RESP replies.
# KEYS: queue, workers, speed. ARGV: prefix.
UNFINISHED = """
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
                         speed = redis.call('HGET', KEYS[3], wid) or '', running = running})
end
local queued = {}
for _, jid in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local h = job(jid)
  if h then table.insert(queued, h) end
end
return cjson.encode({workers = workers, queued = queued})
"""

# Queued jobs are cancelled at once; running ones are flagged for their worker; finished
# ones are left alone. Returns the new status, '' when the job does not exist.
# KEYS: queue, job hash. ARGV: job id, now, finished ttl.
CANCEL = _STATUSES + """
local status = redis.call('HGET', KEYS[2], 'status')
if not status then return '' end
if status == QUEUED then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  redis.call('HSET', KEYS[2], 'status', CANCELLED, 'finished_at', ARGV[2])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
  return CANCELLED
end
if status == RUNNING then
  redis.call('HSET', KEYS[2], 'cancel_requested', '1')
end
return status
"""

# -- the scheduler's side ------------------------------------------------------------------

# Mark a job the worker has just moved into its processing list as running. Returns the
# job's hash. The job may have been cancelled while it sat in the queue; then it is dropped
# here and 0 returned.
# KEYS: processing list, job hash, worker hash. ARGV: job id, now, worker id, backend url.
START = _STATUSES + """
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= QUEUED then
  redis.call('LREM', KEYS[1], 0, ARGV[1])
  return 0
end
redis.call('HSET', KEYS[2], 'status', RUNNING, 'started_at', ARGV[2], 'worker', ARGV[3],
           'backend', ARGV[4], 'tokens_done', '0', 'cancel_requested', '0')
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('HSET', KEYS[3], 'job_id', ARGV[1])
return redis.call('HGETALL', KEYS[2])
"""

# Record how a running job ended (the fields include its finished status). Returns 1, or 0
# when the job's hash is gone.
# KEYS: processing list, job hash, worker hash. ARGV: job id, now, ttl, field, value, ...
FINISH = """
redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('HSET', KEYS[3], 'job_id', '')
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'finished_at', ARGV[2], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""

# Put a job back at the front of the queue, or fail it when it has had its attempts, or
# cancel it when that was asked. Returns the new status, '' when nothing was done.
# KEYS: processing list, job hash, queue, worker hash, the worker's alive key.
# ARGV: job id, reason, count_attempt (1/0), max attempts, now, ttl,
#       only_if_dead (1/0: leave it alone if that worker has come back).
PUT_BACK = _STATUSES + """
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[5]) == 1 then return '' end
if redis.call('LREM', KEYS[1], 0, ARGV[1]) == 0 then return '' end
redis.call('HSET', KEYS[4], 'job_id', '')
if redis.call('EXISTS', KEYS[2]) == 0 then return '' end
local finish = function(status, err)
  redis.call('HSET', KEYS[2], 'status', status, 'finished_at', ARGV[5], 'error', err)
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
redis.call('LPUSH', KEYS[3], ARGV[1])
return QUEUED
"""

# Take a worker's identity if it is free, ours, or its holder is known to be dead.
# Returns 1, or 0 when another live process holds it.
# KEYS: alive key. ARGV: owner, ttl, predecessor to replace ('' = none).
TAKE_IDENTITY = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and holder ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return 1
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

# Fold one measurement into a worker's moving average of seconds per image; returns it.
# KEYS: speed hash. ARGV: worker id, seconds per image, smoothing.
RECORD_SPEED = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local new = tonumber(ARGV[2])
if old then new = tonumber(ARGV[3]) * new + (1 - tonumber(ARGV[3])) * tonumber(old) end
redis.call('HSET', KEYS[1], ARGV[1], tostring(new))
return tostring(new)
"""
