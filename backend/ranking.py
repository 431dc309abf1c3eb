"""Best of N: which candidates a job generates, and which of them it keeps.

A job asks for `num_images` pictures out of `candidates` (default: as many). With ranking (the
default when the backend has CLIP; `rank: false` turns it off) every candidate is generated in
one batched pass, scored by CLIP against the prompt, and the best `num_images` are kept, best
first. A job without extra candidates keeps its pictures in their order, each with its score:
picture i stays candidate i, which continuations and variations of "image i" rely on. Without
ranking the first `num_images` are kept, so only those are generated: candidate i depends
only on (prompt, values, seed, i), never on how many are made alongside it. Either way each
kept picture is known by its candidate index, which with the seed makes it again.

A job that asks for ranking on a backend without CLIP is made unranked (`ranked: false` in
its result), not refused: which backend takes a job is decided after it is queued.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Plan:
    generate: int  # candidates to generate
    keep: int  # of which the job keeps this many
    ranked: bool


def plan(engine: Any, num_images: int, candidates: int | None, rank: bool | None) -> Plan:
    clip = getattr(engine, "clip", None)
    ranked = clip is not None and rank is not False
    return Plan(max(num_images, candidates or num_images) if ranked else num_images, num_images, ranked)


@dataclasses.dataclass(frozen=True)
class Choice:
    indices: list[int]  # the kept candidates' indices, best first when ranked
    scores: list[float] | None  # CLIP's logit of each kept picture; None when unranked
    secs: float = 0.0


def choose(engine: Any, the_plan: Plan, text: str, images: list) -> Choice:
    """The candidates kept: the best `keep` by CLIP score (ties: the lower index first); all
    of them in order when there are no more candidates than that."""
    if not the_plan.ranked:
        return Choice(list(range(the_plan.keep)), None)
    started = time.perf_counter()
    scores = np.asarray(engine.clip.score(text, images), np.float64)
    order = list(range(len(scores)))
    if the_plan.generate > the_plan.keep:
        order = sorted(order, key=lambda i: (-scores[i], i))[:the_plan.keep]
    return Choice(order, [round(float(scores[i]), 4) for i in order], time.perf_counter() - started)
