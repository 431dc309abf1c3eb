"""Reading configuration from the environment (and an optional `.env` file).

Every service builds a frozen `Config` from a mapping, so tests pass their own values
instead of touching `os.environ`.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from dotenv import dotenv_values

# A service exits with this code when a setting is wrong: starting it again would fail again,
# so the local launcher stops rather than restarting it.
BAD_CONFIGURATION_EXIT = 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ConfigT = TypeVar("ConfigT")


def environment(env_file: str | os.PathLike | None = ".env") -> dict[str, str]:
    """The process environment over the values of `env_file` (the environment wins)."""
    values: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ)
    return values


def get_str(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def get_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def get_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def get_list(env: Mapping[str, str], name: str, default: list[str]) -> list[str]:
    raw = env.get(name, "").strip()
    if not raw:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def get_log_level(env: Mapping[str, str]) -> str:
    """LOG_LEVEL, one of LOG_LEVELS in any case; INFO when unset."""
    level = get_str(env, "LOG_LEVEL", "INFO").upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {env['LOG_LEVEL']!r}")
    return level


def start_service(service: str, from_env: Callable[[Mapping[str, str]], ConfigT],
                  env: Mapping[str, str]) -> tuple[ConfigT, str]:
    """A service's `python -m` start: its config and log level, logging set up. A bad setting
    ends the process with one line naming it and BAD_CONFIGURATION_EXIT, not a traceback."""
    try:
        log_level = get_log_level(env)
        config = from_env(env)
    except ValueError as exc:
        print(f"{service}: bad configuration: {exc}", file=sys.stderr)
        raise SystemExit(BAD_CONFIGURATION_EXIT) from None
    logging.basicConfig(level=log_level, format=LOG_FORMAT)
    return config, log_level
