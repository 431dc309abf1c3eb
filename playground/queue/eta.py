"""Where each unfinished job stands: its position in line and the seconds until it is done."""
from __future__ import annotations

from playground.queue.job import Job


def estimate(running: list[tuple[Job, str]], queued: list[Job], alive_workers: list[str],
             speeds: dict[str, float], now: float) -> None:
    """Set position and ETA: each queued job goes, in order, to the worker free soonest.

    `running` pairs each running job with its worker's id. A worker's speed is its measured
    seconds per image; one not yet measured borrows the average of the others. With no
    measurement at all, ETAs stay None.
    """
    average = sum(speeds.values()) / len(speeds) if speeds else None
    free_at: dict[str, float] = {wid: now for wid in alive_workers}
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
    for position, job in enumerate(queued, start=1):
        job.position = position
        if not free_at or average is None:
            continue
        # The worker free soonest takes it, as the real workers do; a tie goes to the faster.
        wid = min(free_at, key=lambda w: (free_at[w], speeds.get(w, average)))
        free_at[wid] += speeds.get(wid, average) * job.num_images
        job.eta_secs = free_at[wid] - now
