"""Where each unfinished job stands: its position in its model's line and the seconds until it is done."""
from __future__ import annotations

from playground.queue.job import Job


def estimate(running: list[tuple[Job, str]], queued: dict[str, list[Job]], workers: dict[str, str],
             speeds: dict[str, float], now: float) -> None:
    """Set position and ETA: each queued job goes, in order, to the worker free soonest among
    those that can run it.

    `running` pairs each running job with its worker's id; `queued` maps each model to its
    queue in order ("": the jobs naming no model, which any worker takes first); `workers` maps
    each live worker to its backend's model. A worker's speed is its measured seconds per image;
    one not yet measured borrows the average of the others. With no measurement at all, ETAs
    stay None. Positions count within a model's queue.
    """
    average = sum(speeds.values()) / len(speeds) if speeds else None
    free_at: dict[str, float] = {wid: now for wid in workers}
    for job, wid in running:
        job.position = 0
        speed = speeds.get(wid, average)
        if speed is None:
            continue
        elapsed = now - (job.started_at or now)
        remaining = max(0.0, speed * job.num_images - elapsed)
        job.eta_secs = remaining
        if wid in free_at:
            free_at[wid] = now + remaining
    for model in sorted(queued):  # "" first, as the workers take those first
        pool = [wid for wid in free_at if not model or workers[wid] == model]
        for position, job in enumerate(queued[model], start=1):
            job.position = position
            if not pool or average is None:
                continue
            # The worker free soonest takes it, as the real workers do; a tie goes to the faster.
            wid = min(pool, key=lambda w: (free_at[w], speeds.get(w, average)))
            free_at[wid] += speeds.get(wid, average) * job.num_images
            job.eta_secs = free_at[wid] - now
