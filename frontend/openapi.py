"""The OpenAPI document (frontend/openapi.yaml), served as YAML and as JSON."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from frontend.responses import json_bytes

OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.yaml"


@dataclass(frozen=True)
class OpenApiDocument:
    document: dict
    yaml_bytes: bytes
    json_bytes: bytes

    @classmethod
    def load(cls, path: Path = OPENAPI_PATH) -> "OpenApiDocument":
        raw = path.read_bytes()
        document = yaml.safe_load(raw)
        return cls(document, raw, json_bytes(document))
