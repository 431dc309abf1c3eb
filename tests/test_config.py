"""Every service reads its configuration from a mapping; the shared settings agree."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.config import Config as BackendConfig
from frontend.config import Config as FrontendConfig
from playground.settings import environment
from scheduler.config import Config as SchedulerConfig


def test_the_services_share_redis_and_library_settings():
    env = {"REDIS_URL": "redis://10.0.0.1:6380/2", "REDIS_PREFIX": "studio", "LIBRARY_DIR": "pictures"}
    frontend, scheduler = FrontendConfig.from_env(env), SchedulerConfig.from_env(env)
    assert frontend.redis_url == scheduler.redis_url == env["REDIS_URL"]
    assert frontend.redis_prefix == scheduler.redis_prefix == "studio"
    assert frontend.library_dir == scheduler.library_dir == Path("pictures")


def test_backend_config_from_env():
    config = BackendConfig.from_env({"DALLE_MODEL": "mini", "MODEL_CACHE_DIR": "c", "BACKEND_PORT": "9090",
                                     "BACKEND_WARMUP_BATCH_SIZES": "2, 8"})
    assert (config.model, config.cache_dir, config.port, config.warm_up_batch_sizes) == ("mini", Path("c"), 9090, (2, 8))
    assert config.hub_endpoint is None  # huggingface_hub's default
    assert BackendConfig.from_env({"HF_ENDPOINT": "http://mirror:8000"}).hub_endpoint == "http://mirror:8000"


def test_one_slot_unless_told():
    assert BackendConfig.from_env({}).slots == 1
    assert BackendConfig.from_env({"BACKEND_SLOTS": "4"}).slots == 4


def test_the_demo_model_is_the_default():
    # It ships in the repository: with nothing configured, the playground draws without a download.
    assert BackendConfig.from_env({}).model == "demo"


def test_the_device_setting_defaults_to_auto_and_takes_any_case():
    assert BackendConfig.from_env({}).device == "auto"
    assert BackendConfig.from_env({"DALLE_DEVICE": " GPU "}).device == "gpu"


def test_previews_are_spaced_by_their_cost_unless_told():
    assert BackendConfig.from_env({}).preview_every_tokens is None
    assert BackendConfig.from_env({"PREVIEW_EVERY_TOKENS": "0"}).preview_every_tokens == 0
    assert BackendConfig.from_env({"PREVIEW_EVERY_TOKENS": " 32 "}).preview_every_tokens == 32


@pytest.mark.parametrize("env", [{"BACKEND_PORT": "eighty"}, {"BACKEND_WARMUP_BATCH_SIZES": "2,x"},
                                 {"DALLE_DEVICE": "cuda"}, {"PREVIEW_EVERY_TOKENS": "-1"},
                                 {"PREVIEW_EVERY_TOKENS": "often"}, {"BACKEND_SLOTS": "0"},
                                 {"BACKEND_SLOTS": "17"}, {"BACKEND_SLOTS": "many"}])
def test_bad_backend_settings_are_named(env):
    name = next(iter(env))
    with pytest.raises(ValueError, match=name):
        BackendConfig.from_env(env)


def test_environment_reads_dotenv_under_the_process_environment(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("DALLE_MODEL=mega\nFRONTEND_PORT=9000\n")
    monkeypatch.setenv("FRONTEND_PORT", "8001")
    env = environment(tmp_path / ".env")
    assert env["DALLE_MODEL"] == "mega" and env["FRONTEND_PORT"] == "8001"
