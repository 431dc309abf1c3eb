"""Fixtures shared by the whole suite: a real Redis server per test session, flushed per test."""
from __future__ import annotations

import pytest
import redis

from playground.redis_server import RedisServer

# The browser fixtures, registered here so that each session-scoped one starts once.
from browser import browser, page, ui_stack  # noqa: F401


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
