"""Several jobs in one decoding batch (batching.py) on the tiny and demo models: every image of
a job has the codes and pixels it has alone (`Engine.generate`), at any rows, joined at the
start or mid-way, beside a cancelled job; no compiles after warm-up."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from backend.engine import GenerationCancelled, GenerationRequest, load_engine
from backend.engine.batching import BatchRunner
from backend.engine.models import DEMO
from jax_compiles import recorded_compiles

PROMPT = "a red cube on a blue sphere"


@pytest.fixture(scope="module")
def engine(model_cache_dir):
    return load_engine("tiny", model_cache_dir)


@pytest.fixture(scope="module")
def runner(engine):
    runner = BatchRunner(engine, slots=4, sizes=(2, 4, 8))
    runner.warm_up()
    yield runner
    runner.close()


def mix(engine):
    """Different prompts, values and image counts, a continuation and a Best-of-sized job."""
    start = engine.generate_codes(GenerationRequest(PROMPT, 1, seed=3))[0][0]
    return [GenerationRequest(PROMPT, 2, seed=11, top_p=0.9),
            GenerationRequest("a green cone", 3, seed=12, top_k=5, temperature=0.7),
            GenerationRequest("two yellow balls", 1, seed=13, condition_scale=2.5, top_k=300),
            GenerationRequest(PROMPT, 2, seed=14, init_codes=tuple(int(c) for c in start), keep_rows=5)]


def alone(engine, requests):
    return [engine.generate(request) for request in requests]


def assert_same(batched, single):
    np.testing.assert_array_equal(batched.codes, single.codes)
    assert batched.seed == single.seed and batched.params == single.params
    for mine, theirs in zip(batched.images, single.images):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_jobs_batched_together_draw_what_they_draw_alone(engine, runner):
    requests = mix(engine)
    expected = alone(engine, requests)
    with recorded_compiles() as compiles:
        jobs = [runner.submit(request) for request in requests]
        results = [job.result(timeout=600) for job in jobs]
        # The same jobs in another order: other rows, other neighbours.
        again = [runner.submit(request) for request in reversed(requests)]
        again = [job.result(timeout=600) for job in reversed(again)]
    assert compiles == []
    for batched, second, single in zip(results, again, expected):
        assert_same(batched, single)
        assert_same(second, single)


def test_a_job_joins_mid_flight_and_a_cancelled_one_leaves(engine, runner):
    requests = mix(engine)
    expected = alone(engine, requests[:2])
    cancel = threading.Event()
    joined: list = []
    progress: list[int] = []

    def on_first_progress(done, total):
        progress.append(done)
        if done == 64:  # the second job joins some chunks later, the first one half-way
            joined.append(runner.submit(requests[1]))
            joined.append(runner.submit(requests[2], cancel=cancel,
                                        on_progress=lambda done, total: done >= 128 and cancel.set()))

    with recorded_compiles() as compiles:
        first = runner.submit(requests[0], on_progress=on_first_progress)
        assert_same(first.result(timeout=600), expected[0])
        assert_same(joined[0].result(timeout=600), expected[1])
        with pytest.raises(GenerationCancelled):
            joined[1].result(timeout=600)
    assert compiles == []
    assert progress == list(range(8, 257, 8))


def test_previews_are_each_jobs_first_codes(engine, runner):
    seen: dict[int, list] = {0: [], 1: []}
    requests = mix(engine)[:2]
    jobs = [runner.submit(request, on_preview=lambda done, codes, i=i: seen[i].append((done, codes.copy())))
            for i, request in enumerate(requests)]
    for index, job in enumerate(jobs):
        codes = job.result(timeout=600).codes
        assert seen[index]
        for done, preview in seen[index]:
            assert preview.shape == (requests[index].num_images, done)
            np.testing.assert_array_equal(preview, codes[:, :done])


def test_on_the_demo_model(tmp_path_factory):
    engine = load_engine(DEMO, tmp_path_factory.mktemp("cache"))
    runner = BatchRunner(engine, slots=3, sizes=(4, 8))
    # Its 1161 codes: a k of 2000 takes the full sort, beside rows that take the partial one.
    requests = [GenerationRequest("a red circle", 2, seed=21, top_k=2000),
                GenerationRequest("a blue square", 3, seed=22, top_k=8, temperature=0.8),
                GenerationRequest("a green triangle", 4, seed=23, top_p=0.8)]
    expected = alone(engine, requests)
    joined: list = []

    def on_progress(done, total):
        if done == 96:
            joined.append(runner.submit(requests[2]))

    try:
        jobs = [runner.submit(requests[0], on_progress=on_progress), runner.submit(requests[1])]
        for job, single in zip(jobs + joined, expected):
            assert_same(job.result(timeout=900), single)
    finally:
        runner.close()


def test_a_grid_s_cells_join_together_and_draw_what_lone_jobs_draw(engine, runner):
    """A grid's cells (playground/grid.py) as one group: one boundary, one slot, beside a job
    already running; each cell's codes are a lone job's of its values."""
    from playground.grid import parse_grid

    grid = parse_grid({"x": {"field": "temperature", "values": [0.5, 1.5]},
                       "y": {"field": "seed", "values": [21, 22]}})
    cells = [GenerationRequest(PROMPT, 1, **{"seed": 5, **values}) for values in grid.cells()]
    expected = alone(engine, cells)
    other = mix(engine)[1]
    other_alone = alone(engine, [other])[0]
    reports: list = []  # every progress report in order: "other", or a cell's index
    with recorded_compiles() as compiles:
        running = runner.submit(other, on_progress=lambda done, total: reports.append("other"))
        group = runner.submit_group(cells, on_progress=[
            lambda done, total, cell=cell: reports.append(cell) for cell in range(len(cells))])
        results = [job.result(timeout=600) for job in group]
        assert_same(running.result(timeout=600), other_alone)
    assert compiles == []
    for batched, single in zip(results, expected):
        assert_same(batched, single)
    # Together, in one slot beside the running job (4 slots: as 4 jobs the last cell would wait
    # for it): each cell first reports after as many of the other job's reports.
    before = {reports.count("other") if cell not in reports else reports[:reports.index(cell)].count("other")
              for cell in range(len(cells))}
    assert len(before) == 1, reports
    assert len({id(job.group) for job in group}) == 1


def test_a_cancelled_grid_stops_every_cell(engine, runner):
    cells = [GenerationRequest(PROMPT, 1, seed=seed) for seed in (1, 2, 3)]
    cancel = threading.Event()
    group = runner.submit_group(cells, on_progress=[lambda done, total: done >= 64 and cancel.set()] * 3,
                                cancel=cancel)
    for job in group:
        with pytest.raises(GenerationCancelled):
            job.result(timeout=600)
