"""Where each unfinished job stands: its position in its model's line, the seconds until it is
done, and whether any live backend can run it at all."""
from __future__ import annotations

from collections.abc import Collection

from playground.queue.job import Job

# A running job whose worker has heard nothing from its backend for this long is shown as
# stalled. The backend sends a line at least every second (docs/architecture.md), so this is
# well past a hiccup, and well before the scheduler gives up on it (SCHEDULER_STALL_TIMEOUT).
STALLED_AFTER_SECS = 5.0


def estimate(running: list[tuple[Job, str]], queued: dict[str, list[Job]], workers: dict[str, str],
             speeds: dict[str, float], now: float) -> None:
    """Set position and ETA: each queued job goes, in order, to the worker free soonest among
    those that can run it.

    `running` pairs each running job with its worker's id; `queued` maps each model to its
    queue in order ("": the jobs naming no model, which any worker takes first); `workers` maps
    each live worker to its backend's model ("" while not known). A worker's speed is its
    measured seconds per picture generated (a Best-of job generates its candidates); one not yet
    measured borrows the average of the others. A running job's own progress, once it has some,
    is the better guide: the rest of it cannot go faster than it has gone so far. With no
    measurement at all, ETAs stay None. Positions count within a model's queue. A queued job
    that no live worker can run gets `unserved`, the reason; a running one whose backend has
    gone quiet, `stalled_secs`.
    """
    average = sum(speeds.values()) / len(speeds) if speeds else None
    free_at: dict[str, float] = {wid: now for wid in workers}
    for job, wid in running:
        job.position = 0
        quiet = now - (job.progress_at or job.started_at or now)
        job.stalled_secs = quiet if quiet >= STALLED_AFTER_SECS else None
        speed = speeds.get(wid, average)
        if speed is None:
            continue
        elapsed = now - (job.started_at or now)
        remaining = max(0.0, speed * pictures(job) - elapsed)
        done = job.tokens_done / job.total_tokens if job.total_tokens else 0.0
        if 0 < done < 1:  # at its own pace so far, the tokens left (the pictures' decoding aside)
            remaining = max(remaining, elapsed * (1 - done) / done)
        job.eta_secs = remaining
        if wid in free_at:
            free_at[wid] = now + remaining
    for model in sorted(queued):  # "" first, as the workers take those first
        pool = [wid for wid in free_at if not model or workers[wid] == model]
        for position, job in enumerate(queued[model], start=1):
            job.position = position
            job.unserved = unserved_reason(job.id, model, workers.values())
            if not pool or average is None:
                continue
            # The worker free soonest takes it, as the real workers do; a tie goes to the faster.
            wid = min(pool, key=lambda w: (free_at[w], speeds.get(w, average)))
            free_at[wid] += speeds.get(wid, average) * pictures(job)
            job.eta_secs = free_at[wid] - now


def pictures(job: Job) -> int:
    """How many pictures a job generates: its Best-of candidates, else its images."""
    return job.candidates or job.num_images


def unserved_reason(job_id: str, model: str, live_models: Collection[str]) -> str | None:
    """Why a queued job has no live backend to run it, or None when it has one. A job naming no
    model ("") is served by any live backend; one naming a model, by a live backend of that
    model, or by one whose model is not known yet (it has not answered since its scheduler
    started). Such a job waits rather than fails: its backend may be restarting."""
    if (not model and live_models) or model in live_models or "" in live_models:
        return None
    cancel = f"or cancel it: POST /jobs/{job_id}/cancel"
    if not live_models:
        return f"no backend is live: the job waits until one joins ({cancel})"
    served = ", ".join(sorted(set(live_models)))
    return f"no live backend serves model {model} (they serve {served}): the job waits until one does ({cancel})"
