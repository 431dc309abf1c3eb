"""What a route handler returns: a status, body bytes, their type and any extra headers."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

JSON_TYPE = "application/json"


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json_bytes(value), JSON_TYPE, headers or {})


def error_response(http_status: int, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> Response:
    """The API's error shape: `{"error": "<what is wrong>"}`, plus optional details."""
    return json_response({"error": message, **extra}, http_status, headers)
