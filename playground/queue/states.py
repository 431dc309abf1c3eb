"""The statuses of a job and the moves between them.

    queued ──claim──▶ running ──▶ done | failed | cancelled
      ▲                  │
      └──── put back ────┘

- A worker claims the oldest queued job and marks it running; each claim counts one attempt.
- A running job ends done (images in the library), failed (the backend's error) or
  cancelled (the worker saw `cancel_requested`).
- A running job whose worker stopped (crash, restart, lost backend) is put back at the
  front of the queue (behind only jobs put back that were submitted before it). After its last attempt it fails instead, with the reason; a put-back
  that was not the job's fault (backend busy, scheduler shutting down) gives the attempt back.
- Cancel: a queued job is cancelled at once; a running one only gets `cancel_requested`,
  which its worker obeys (or the put-back does, should the worker die first); a finished
  job is left as it was.
- Finished jobs never move again; their hash expires after the finished TTL.
"""
from __future__ import annotations

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"

FINISHED = (DONE, FAILED, CANCELLED)
