"""Where each unfinished job stands: its position in its model's line, the seconds until it is
done, and whether any live backend can run it at all.

The model of the estimate. A backend's job takes `fixed_secs + secs_per_picture × pictures`
(`JobCost`): each decoding step costs a part whatever the batch (reading the weights, the
text's cross-attention) and a part for each picture in it, and a Best-of job draws its
candidates. On a 2-core CPU mini takes 11.6 s for 1 image and 27 s for 8, about 9.4 s + 2.2 s
a picture; on a GPU the fixed part weighs even more. So seconds per picture alone, measured on
one size, is wrong by half or more for another. Each worker keeps the time of its last jobs
(`SPEED_SAMPLES`, with their pictures), and the cost is fitted to them by least squares, the
newer weighing more (`RECENCY`), so a backend that gets slower or faster is followed within a
few jobs. While only one picture count has been measured, the split between the two parts is
not known: half its time is taken as fixed (`FIXED_SHARE_GUESS`), the middle between a step
that costs the same for any batch and one that costs in proportion to it.

A grid sweep's cells are pictures of one batch on a backend with several slots, like an image
count; on a backend with one slot they run one after another, so there a grid of n cells costs
n one-picture jobs, and its time is kept as one such job's (`speed_sample`), not as a batch of n.

An upscale job has its own cost: a worker's recent upscales are kept apart from its generations
(an upscale takes about 1.5 s on a 2-core CPU, where one picture of mini takes 11.6 s), and until
any worker has upscaled a picture, an upscale is taken to cost one generated picture.

A queued job waits for the jobs ahead of it on the worker that will take it, then its own
cost. A running job has its cost less its elapsed time left, but never less than its own pace
up to its last progress report says for its tokens left: a job slower than the fit does not
run out of ETA half-way.
"""
from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from playground.queue.job import UPSCALE_KIND, Job

# A running job whose worker has heard nothing from its backend for this long is shown as
# stalled. The backend sends a line at least every second (docs/architecture.md), so this is
# well past a hiccup, and well before the scheduler gives up on it (SCHEDULER_STALL_TIMEOUT).
STALLED_AFTER_SECS = 5.0
# The jobs a worker's cost is fitted to, the newest last.
SPEED_SAMPLES = 12
# The weight of a job in the fit, relative to the one after it.
RECENCY = 0.7
# With one picture count measured, the share of its time taken as the fixed part.
FIXED_SHARE_GUESS = 0.5


@dataclass(frozen=True)
class JobCost:
    """Seconds a worker's backend takes for a job: `fixed_secs + secs_per_picture × pictures`."""
    fixed_secs: float
    secs_per_picture: float

    def secs(self, pictures: int) -> float:
        return self.fixed_secs + self.secs_per_picture * pictures

    @staticmethod
    def fit(samples: Sequence[tuple[int, float]]) -> JobCost | None:
        """Weighted least squares of (pictures, seconds) samples, oldest first; None when there
        are none. Neither part is ever negative."""
        if not samples:
            return None
        weights = [RECENCY ** age for age in range(len(samples) - 1, -1, -1)]
        total = sum(weights)
        pictures = sum(w * n for w, (n, _) in zip(weights, samples))
        secs = sum(w * t for w, (_, t) in zip(weights, samples))
        squares = sum(w * n * n for w, (n, _) in zip(weights, samples))
        products = sum(w * n * t for w, (n, t) in zip(weights, samples))
        spread = total * squares - pictures * pictures
        if spread <= 1e-9 * total * squares:  # one picture count: the split is a guess
            fixed = FIXED_SHARE_GUESS * secs / total
            return JobCost(fixed, (secs - fixed * total) / pictures)
        per_picture = (total * products - pictures * secs) / spread
        fixed = (secs - per_picture * pictures) / total
        if fixed < 0:
            return JobCost(0.0, products / squares)
        if per_picture < 0:
            return JobCost(secs / total, 0.0)
        return JobCost(fixed, per_picture)


def job_times(recorded: str | bytes | None) -> list[tuple[int, float]]:
    """A worker's recent (pictures, seconds), oldest first, from its field in the speed hash
    (JSON, written by scripts.RECORD_JOB_TIME); [] when none, or an older version's number."""
    try:
        samples = json.loads(recorded or "[]")
    except ValueError:
        return []
    if not isinstance(samples, list):
        return []
    return [(int(pictures), float(secs)) for pictures, secs in samples]


def estimate(running: list[tuple[Job, str]], queued: dict[str, list[Job]], workers: dict[str, str],
             costs: dict[str, JobCost], now: float, cells_together: Collection[str] = (),
             upscale_costs: dict[str, JobCost] | None = None) -> None:
    """Set position and ETA: each queued job goes, in order, to the worker free soonest among
    those that can run it.

    `running` pairs each running job with its worker's id; `queued` maps each model to its
    queue in order ("": the jobs naming no model, which any worker takes first); `workers` maps
    each live worker to its backend's model ("" while not known); `costs`, each measured
    worker's `JobCost`. One not yet measured borrows the average of the others; with no
    measurement at all, ETAs stay None. `cells_together`: the workers whose backends decode a
    grid's cells as one batch (`grid.cells_together`); `upscale_costs`, each worker's cost of an
    upscale job, measured apart (see the module's doc). Positions count within a model's queue.
    A queued job that no live worker can run gets `unserved`, the reason; a running one whose
    backend has gone quiet, `stalled_secs`.
    """
    upscale_costs = upscale_costs or {}
    average, upscale_average = _average(costs), _average(upscale_costs)

    def secs_of(job: Job, wid: str) -> float | None:
        """Its seconds on that worker's backend; None with nothing measured."""
        if job.kind == UPSCALE_KIND:
            upscale = upscale_costs.get(wid, upscale_average)
            if upscale is not None:
                return upscale.secs(1)
        cost = costs.get(wid, average)
        return None if cost is None else job_secs(job, cost, wid in cells_together)

    free_at: dict[str, float] = {wid: now for wid in workers}
    for job, wid in running:
        job.position = 0
        quiet = now - (job.progress_at or job.started_at or now)
        job.stalled_secs = quiet if quiet >= STALLED_AFTER_SECS else None
        secs = secs_of(job, wid)
        if secs is None:
            continue
        started = job.started_at or now
        remaining = max(0.0, secs - (now - started))
        done = job.tokens_done / job.total_tokens if job.total_tokens else 0.0
        if 0 < done < 1 and job.progress_at:
            # At its own pace up to its last report, the tokens left (the pictures' decoding
            # aside), less the time since that report: the backend reports every second or so.
            took = job.progress_at - started
            remaining = max(remaining, took * (1 - done) / done - (now - job.progress_at))
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
            secs = {wid: secs_of(job, wid) for wid in pool}
            wid = min(pool, key=lambda w: (free_at[w], secs[w]))
            free_at[wid] += secs[wid]
            job.eta_secs = free_at[wid] - now


def _average(costs: dict[str, JobCost]) -> JobCost | None:
    """The cost a worker not yet measured borrows: the others' mean; None when none is measured."""
    if not costs:
        return None
    return JobCost(sum(c.fixed_secs for c in costs.values()) / len(costs),
                   sum(c.secs_per_picture for c in costs.values()) / len(costs))


def pictures(job: Job) -> int:
    """How many pictures a job generates: its Best-of candidates, else its images (a grid's: its cells)."""
    return job.candidates or job.num_images


def job_secs(job: Job, cost: JobCost, cells_together: bool) -> float:
    """A job's seconds on a backend of this cost: a grid's cells one after another unless together."""
    if job.grid is not None and not cells_together:
        return job.num_images * cost.secs(1)
    return cost.secs(pictures(job))


def speed_sample(job: Job, pictures_made: int, secs: float, cells_together: bool) -> tuple[int, float]:
    """What a finished job adds to its worker's recent (pictures, seconds): a grid whose cells ran
    one after another as one of its one-picture jobs (the mean), anything else as it ran."""
    if job.grid is not None and not cells_together:
        return 1, secs / max(1, pictures_made)
    return pictures_made, secs


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
