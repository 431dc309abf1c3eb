"""Fixtures shared by the whole suite: a real Redis server per test session, flushed per test."""
from __future__ import annotations

import os

import pytest
import redis

from playground.redis_server import RedisServer

# The browser fixtures, registered here so that each session-scoped one starts once.
from browser import browser, page, ui_stack  # noqa: F401

# Tests marked slow (minutes each) run only when asked: the suite, as CI runs it, keeps to its
# time budget, and each has a shorter neighbour that runs every time.
RUN_SLOW = "RUN_SLOW"


def pytest_collection_modifyitems(config, items):
    if os.environ.get(RUN_SLOW) == "1" or "slow" in config.getoption("markexpr", ""):
        return
    skip = pytest.mark.skip(reason=f"slow: {RUN_SLOW}=1 ./run-tests.sh runs it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory):
    """One model cache for the whole run, so the tiny model is written once."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def fake_hub(model_cache_dir):
    """A real HTTP server speaking the hub's file API, serving the tiny model's files as mini's,
    mega's and the VQGAN's repositories (pass `fake_hub.url` as the endpoint)."""
    from backend.engine import models
    from testkit.fake_hub import FakeHub

    tiny = models.ensure_tiny_model(model_cache_dir)
    repos = {"dalle-mini/dalle-mini": tiny, "dalle-mini/dalle-mega": tiny, models.VQGAN_REPO: tiny / "vqgan"}
    with FakeHub(repos) as hub:
        yield hub
